"""Planner shutdown: local workers are stopped whatever failed, and a dead input ends the
planner with a non-zero status."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixroute.errors import EventPlaneError
from mixroute.planner.main import supervise

from .test_local_connector import fake_python  # noqa: F401 - fixture


class Closer:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def _forever() -> None:
    await asyncio.Event().wait()


async def _fails() -> None:
    await asyncio.sleep(0.01)
    raise EventPlaneError("subscription broke")


async def test_a_failed_input_task_still_closes_the_connector_and_exits_1() -> None:
    closer = Closer()
    consumers = [asyncio.create_task(_fails(), name="load-events"), asyncio.create_task(_forever())]
    status = await asyncio.wait_for(supervise(_forever(), consumers, closer.close()), 10.0)
    assert status == 1 and closer.closed
    assert all(t.done() for t in consumers)


async def test_a_failed_planner_loop_still_closes_the_connector() -> None:
    closer = Closer()
    consumers = [asyncio.create_task(_forever())]
    with pytest.raises(EventPlaneError):
        await asyncio.wait_for(supervise(_fails(), consumers, closer.close()), 10.0)
    assert closer.closed and consumers[0].cancelled()


async def test_a_normal_stop_exits_0_and_closes() -> None:
    closer = Closer()
    consumers = [asyncio.create_task(_forever())]
    stop = asyncio.Event()

    async def loop() -> None:
        await stop.wait()

    stop.set()
    assert await asyncio.wait_for(supervise(loop(), consumers, closer.close()), 10.0) == 0
    assert closer.closed


PLANNER = """
import asyncio, sys
from mixroute.planner.connectors.local import LocalConnector
async def main():
    conn = LocalConnector({"decode": ["--model", "/m"]}, [], python=sys.argv[1])
    await conn.set_replicas("decode", 1)
    print("started", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_workers_die_with_a_killed_planner(fake_python: Path) -> None:  # noqa: F811
    argv_dir = fake_python.parent / "argv"
    planner = subprocess.Popen([sys.executable, "-c", PLANNER, str(fake_python)], stdout=subprocess.PIPE)
    try:
        assert planner.stdout is not None and planner.stdout.readline().strip() == b"started"
        deadline = time.monotonic() + 10
        while not (pids := [p.name for p in argv_dir.iterdir() if not p.name.startswith(".")]):
            assert time.monotonic() < deadline, "the fake worker never started"
            time.sleep(0.05)
        worker_pid = int(pids[0])
    finally:
        planner.kill()
        planner.wait()
    deadline = time.monotonic() + 10
    while _alive(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived its killed planner"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by init yet) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
