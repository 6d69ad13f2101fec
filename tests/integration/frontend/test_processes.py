"""`mixroute frontend --processes N`: several real frontend processes on one port, each
fed by the same workers' KV events (mocker workers, file discovery, ZeroMQ events)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mixroute.runtime.infra import free_port
from tests.integration.frontend.procs import Proc, http_post, models_listed, start, wait_until

pytestmark = pytest.mark.timeout(300)

MODEL = "tiny-mock"
_ROUTED = re.compile(r"\[frontend-(\d+)\] mixroute\.frontend\.routing\.selector: routed pool=backend request_id=\S+ worker_id=([0-9a-f]+) cached blocks: (\d+)")
_STARTED = re.compile(r"frontend process started index=(\d+) pid=(\d+)")


@dataclass
class Stack:
    url: str
    frontend: Proc
    procs: list[Proc]

    def routed(self) -> list[tuple[int, str, int]]:
        """(process index, worker id, cached blocks) per routed request, in log order."""
        return [(int(m[1]), m[2], int(m[3])) for m in _ROUTED.finditer(self.frontend.log())]

    def other_pids(self) -> dict[int, int]:
        return {int(m[1]): int(m[2]) for m in _STARTED.finditer(self.frontend.log())}


def _start(tiny_model_dir: Path, tmp: Path, num_processes: int) -> Stack:
    run_dir, logs = tmp / "run", tmp / "logs"
    run_dir.mkdir()
    logs.mkdir()
    runtime = ["--discovery", f"file://{run_dir}", "--events", "zmq", "--namespace", "itest-procs"]
    port = free_port()
    worker = start(
        "worker-mock",
        ["worker", "--engine", "mocker", "--model", str(tiny_model_dir), "--served-model-name", MODEL,
         "--num-workers", "2", "--speedup-ratio", "50", "--num-blocks", "512", *runtime],
        logs,
    )  # fmt: skip
    wait_until(lambda: worker.log().count("worker ready") >= 2, "both mockers registered", [worker])
    frontend = start("frontend", ["frontend", "--http-port", str(port), "--processes", str(num_processes), *runtime], logs)
    stack = Stack(f"http://127.0.0.1:{port}", frontend, [frontend, worker])
    wait_until(models_listed(stack.url, MODEL), "the model is listed", stack.procs)
    wait_until(lambda: frontend.log().count("frontend listening") >= num_processes, "every process listens", stack.procs)
    return stack


def _stop(stack: Stack) -> None:
    for p in stack.procs:
        p.stop()


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = _start(tiny_model_dir, tmp_path_factory.mktemp("procs"), 2)
    try:
        yield s
    finally:
        _stop(s)


def _complete(url: str, prompt: list[int]) -> dict[str, object]:
    # urllib opens a new connection per request: the kernel picks a process for each.
    status, body = http_post(f"{url}/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 3, "temperature": 0})
    assert status == 200, body
    return body


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_every_process_serves_on_the_one_port(stack: Stack) -> None:
    before = len(stack.routed())
    for i in range(24):
        body = _complete(stack.url, [(7 * i + k) % 200 + 1 for k in range(20)])
        assert body["usage"]["completion_tokens"] == 3  # type: ignore[index]
    served_by = {index for index, _, _ in stack.routed()[before:]}
    # 24 connections spread by the kernel over 2 sockets: both get some (all on one: 2^-23).
    assert served_by == {0, 1}


def test_each_process_indexes_the_workers_kv_events(stack: Stack) -> None:
    prompt = [(13 * k) % 250 + 3 for k in range(96)]  # 6 full blocks of 16
    _complete(stack.url, prompt)
    first_worker = stack.routed()[-1][1]
    time.sleep(1.0)  # the worker's KV events reach every process
    before = len(stack.routed())
    for _ in range(16):
        _complete(stack.url, prompt)
    later = stack.routed()[before:]
    assert {index for index, _, _ in later} == {0, 1}
    # Whichever process took it, it knew where the prompt was cached: KV events feed both.
    assert {worker for _, worker, _ in later} == {first_worker}
    assert all(cached >= 5 for _, _, cached in later), later


def test_sigterm_stops_every_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    s = _start(tiny_model_dir, tmp_path, 2)
    try:
        others = s.other_pids()
        assert set(others) == {1} and _alive(others[1])
        s.frontend.popen.send_signal(signal.SIGTERM)
        assert s.frontend.popen.wait(20) == 0
        wait_until(lambda: not _alive(others[1]), "process 1 exits", [], timeout_s=15)
    finally:
        _stop(s)


def test_a_process_dying_stops_the_frontend(tiny_model_dir: Path, tmp_path: Path) -> None:
    s = _start(tiny_model_dir, tmp_path, 3)
    try:
        others = s.other_pids()
        assert set(others) == {1, 2}
        os.kill(others[2], signal.SIGKILL)
        # A partial set of processes would serve a part of the connections only: all stop.
        assert s.frontend.popen.wait(20) == 1
        wait_until(lambda: not _alive(others[1]), "process 1 exits", [], timeout_s=15)
        assert "frontend process exited index=2" in s.frontend.log()
    finally:
        _stop(s)
