from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from mixroute.planner.connectors.base import ScaleError
from mixroute.planner.connectors.local import LocalConnector

# Stands in for `python -m mixroute worker ...`: records its argv, then waits for a signal.
FAKE_WORKER = """#!{python}
import os, signal, sys, time
out = os.environ["FAKE_WORKER_DIR"]
if os.environ.get("FAKE_WORKER_MODE") == "stubborn":  # before the file says we are up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
# Written then renamed, so a reader never sees a created but still empty file.
tmp = os.path.join(out, "." + str(os.getpid()))
with open(tmp, "w") as f:
    f.write(" ".join(sys.argv[1:]))
os.replace(tmp, os.path.join(out, str(os.getpid())))
if os.environ.get("FAKE_WORKER_MODE") == "crash":
    sys.exit(3)
time.sleep(60)
"""


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(FAKE_WORKER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "argv"
    out.mkdir()
    monkeypatch.setenv("FAKE_WORKER_DIR", str(out))
    return script


def argv_files(fake_python: Path) -> list[str]:
    return [p.read_text() for p in (fake_python.parent / "argv").iterdir() if not p.name.startswith(".")]


async def wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_starts_and_stops_worker_processes(fake_python: Path, tmp_path: Path) -> None:
    conn = LocalConnector(
        {"decode": ["--model", "/m", "--engine", "mocker"], "prefill": ["--model", "/m"]},
        ["--namespace", "ns1", "--events", "zmq"],
        log_dir=tmp_path / "logs",
        python=str(fake_python),
    )
    try:
        assert conn.pools() == ("decode", "prefill")
        await conn.set_replicas("decode", 2)
        await conn.set_replicas("prefill", 1)
        assert await conn.current_replicas("decode") == 2
        await wait_for(lambda: len(argv_files(fake_python)) == 3)
        argv = sorted(argv_files(fake_python))
        assert (
            argv.count(
                "-m mixroute worker --worker-type decode --model /m --engine mocker --namespace ns1 --events zmq"
            )
            == 2
        )
        assert (
            "-m mixroute worker --worker-type prefill --model /m --namespace ns1 --events zmq"
            in argv
        )
        pids = [p.proc.pid for p in conn._procs["decode"]]
        await conn.set_replicas("decode", 1)
        assert await conn.current_replicas("decode") == 1
        assert conn._procs["decode"][0].proc.pid == pids[0]  # the newest one went
        assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
            "decode-worker-1.log", "decode-worker-2.log", "prefill-worker-3.log",
        ]  # fmt: skip
    finally:
        await conn.close()
    assert await conn.current_replicas("decode") == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_stubborn_worker_is_killed(
    fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_WORKER_MODE", "stubborn")
    conn = LocalConnector({"decode": []}, python=str(fake_python), stop_timeout_s=0.5)
    await conn.set_replicas("decode", 1)
    await wait_for(lambda: len(argv_files(fake_python)) == 1)  # SIGTERM handler installed
    await conn.set_replicas("decode", 0)
    assert await conn.current_replicas("decode") == 0
    await conn.close()


async def test_exited_worker_no_longer_counts(
    fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_WORKER_MODE", "crash")
    conn = LocalConnector({"decode": []}, python=str(fake_python))
    try:
        await conn.set_replicas("decode", 2)
        proc = conn._procs["decode"][0].proc
        await asyncio.wait_for(proc.wait(), 10)
        await asyncio.wait_for(conn._procs["decode"][1].proc.wait(), 10)
        assert await conn.current_replicas("decode") == 0
    finally:
        await conn.close()


async def test_unknown_pool_and_bad_command(tmp_path: Path) -> None:
    conn = LocalConnector({"decode": []}, python=str(tmp_path / "no-such-python"))
    with pytest.raises(ScaleError, match="no worker command for the prefill pool"):
        await conn.set_replicas("prefill", 1)
    with pytest.raises(ScaleError, match="cannot start"):
        await conn.set_replicas("decode", 1)
    await conn.close()
