"""`mixroute up`'s lifecycle against fake components (real processes, real file discovery)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixroute.up.ports import free_port

RUNNER = str(Path(__file__).with_name("run_up_with_fakes.py"))
ROUTER_CONFIG = """
default_model: fake-model
models:
  fake-model: {}
"""


def _start(
    tmp_path: Path, *flags: str, behaviour: str = ""
) -> tuple[subprocess.Popen[str], list[str]]:
    config = tmp_path / "router.yaml"
    config.write_text(ROUTER_CONFIG)
    argv = [
        sys.executable, RUNNER,
        "--run-dir", str(tmp_path / "run"),
        "--config", str(config),
        "--router-port", str(free_port()),
        "--frontend-port", str(free_port()),
        "--stop-timeout", "5",
        *flags,
    ]  # fmt: skip
    env = {**os.environ, "FAKE_BEHAVIOUR": behaviour, "MIXROUTE_LEASE_TTL_S": "3"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    return proc, argv


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout_s: float = 30.0) -> str:
    """Output up to the first line matching `pattern` (or the end of output)."""
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_s
    os.set_blocking(proc.stdout.fileno(), True)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def _child_pids(output: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"started (\S+)\s+pid (\d+)", output)}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _put_unleased(run_dir: Path, key: str) -> None:
    from mixroute.runtime.discovery import open_discovery

    async def put() -> None:
        discovery = await open_discovery(f"file://{run_dir / 'discovery'}")
        try:
            await discovery.put(key, b"{}", leased=False)
        finally:
            await discovery.close()

    asyncio.run(put())


def _registered(run_dir: Path) -> dict[str, bytes]:
    from mixroute.runtime.discovery import open_discovery

    async def read() -> dict[str, bytes]:
        discovery = await open_discovery(f"file://{run_dir / 'discovery'}")
        try:
            return await discovery.get_prefix("v1/instances/")
        finally:
            await discovery.close()

    return asyncio.run(read())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_up_reports_ready_then_stops_everything_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc, argv = _start(tmp_path, "--namespace", "ns-test")
    try:
        output = _read_until(proc, r"Press Ctrl-C to stop")
        pids = _child_pids(output)
        assert sorted(pids) == ["frontend", "router", "worker-decode-0", "worker-prefill-0"]
        assert all(_alive(pid) for pid in pids.values())
        assert "1 prefill worker(s) registered" in output
        assert "router /ready" in output
        router_port = argv[argv.index("--router-port") + 1]
        assert f"http://127.0.0.1:{router_port}/v1/chat/completions" in output
        assert '"model": "MoM"' in output
        keys = _registered(tmp_path / "run")
        assert sorted(k.split("/")[3] for k in keys) == ["backend", "prefill"]
        assert all(k.startswith("v1/instances/ns-test/") for k in keys)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output + rest
    assert "stopped." in rest
    assert not any(_alive(pid) for pid in pids.values())
    # Workers revoked their leases on SIGTERM: nothing is left registered.
    assert _registered(tmp_path / "run") == {}
    assert (
        "fake worker revoked its lease"
        in (tmp_path / "run" / "logs" / "worker-decode-0.log").read_text()
    )


def test_agg_mode_starts_one_aggregated_worker(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path, "--agg", "--workers", "2", "--no-router")
    try:
        output = _read_until(proc, r"Press Ctrl-C to stop")
        assert sorted(_child_pids(output)) == ["frontend", "worker-both-0", "worker-both-1"]
        assert len(_registered(tmp_path / "run")) == 2
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_child_crashing_at_startup_prints_its_log_and_exits_nonzero(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path, behaviour="frontend:crash")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "error: frontend exited (status 3)" in output
    assert "cannot start (simulated)" in output  # the tail of its log
    pids = _child_pids(output)
    assert not any(_alive(pid) for pid in pids.values())
    assert "Press Ctrl-C" not in output


def test_child_crashing_after_ready_stops_the_stack(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path, behaviour="router:crash-later")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "error: router exited (status 4)" in output
    assert "crashing after startup" in output
    assert not any(_alive(pid) for pid in _child_pids(output).values())


def test_a_worker_that_dies_is_started_again_and_the_stack_keeps_running(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path)
    try:
        output = _read_until(proc, r"Press Ctrl-C to stop")
        first = _child_pids(output)
        os.kill(first["worker-decode-0"], signal.SIGKILL)
        output = _read_until(proc, r"started worker-decode-0")
        assert "warning: worker-decode-0 exited (signal 9); starting it again" in output
        again = _child_pids(output)["worker-decode-0"]
        assert again != first["worker-decode-0"] and _alive(again)
        assert all(_alive(first[name]) for name in ("frontend", "router", "worker-prefill-0"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # registered again (the dead one's lease expires)
            if any(k.endswith(f"/{again:x}") for k in _registered(tmp_path / "run")):
                break
            time.sleep(0.2)
        assert any(k.endswith(f"/{again:x}") for k in _registered(tmp_path / "run"))
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output + rest
    assert not _alive(again)


def test_a_worker_that_keeps_dying_stops_the_stack(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path, behaviour="worker:crash-later")
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, output
    assert "exited 4 times within 60s; not starting it again" in output
    assert not any(_alive(pid) for pid in _child_pids(output).values())


def test_not_ready_within_timeout_fails_and_names_what_is_missing(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path, "--ready-timeout", "3", behaviour="frontend:hang")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "not ready after 3s" in output
    assert not any(_alive(pid) for pid in _child_pids(output).values())


def test_port_in_use_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _ = _start(tmp_path, "--no-router", "--frontend-port", str(port))
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert f"port {port} is already in use" in output
    assert "started" not in output


def test_a_second_stack_on_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    first, _ = _start(tmp_path, "--no-router")
    try:
        _read_until(first, r"Press Ctrl-C to stop")
        second, _ = _start(tmp_path, "--no-router")  # same run dir, other ports
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 2, output
        assert f"another mixroute up (pid {first.pid}) runs from {tmp_path / 'run'}" in output
        assert "started" not in output
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode == 0


def test_unreachable_etcd_fails_before_any_child_starts(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path, "--no-router", "--etcd", f"127.0.0.1:{free_port()}")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output
    assert "cannot reach etcd" in output
    assert "started" not in output


def test_workers_registered_before_the_stack_started_do_not_count(tmp_path: Path) -> None:
    """Joining a namespace that already has workers: ready means *our* workers registered."""
    _put_unleased(tmp_path / "run", "v1/instances/shared/backend/generate/abc")
    proc, _ = _start(
        tmp_path, "--agg", "--no-router", "--namespace", "shared", "--ready-timeout", "4",
        behaviour="worker:hang",
    )  # fmt: skip
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "not ready after 4s" in output
    assert "ok  1 both worker(s) registered" not in output
