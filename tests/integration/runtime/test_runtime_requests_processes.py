"""Request plane against a server in another process: 1,000 concurrent streams over one
connection; killing the server mid-stream fails every client stream within 2 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from mixroute.errors import PeerGoneError
from mixroute.runtime.requests import TcpRequestClient

from .runtime_child import spawn_child


@pytest.fixture
def server_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, address = spawn_child("serve")
    assert address.startswith("tcp://127.0.0.1:")
    yield proc, address
    proc.kill()
    proc.wait()


async def test_thousand_concurrent_streams_over_one_connection(
    server_process: tuple[subprocess.Popen[str], str],
) -> None:
    _, address = server_process
    client = TcpRequestClient()

    async def one(i: int) -> None:
        n = i % 17 + 1
        got = [p async for p in client.stream(address, "echo_n", b"r%d:%d" % (i, n))]
        assert got == [b"r%d:%d" % (i, k) for k in range(n)]

    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 30)
        assert client.num_connections() == 1
    finally:
        await client.close()


async def test_killing_the_server_fails_streams_within_2s(
    server_process: tuple[subprocess.Popen[str], str],
) -> None:
    proc, address = server_process
    client = TcpRequestClient()
    streams = [client.stream(address, "ticks", b"s%d" % i) for i in range(50)]
    try:
        for i, stream in enumerate(streams):
            assert await asyncio.wait_for(stream.__anext__(), 10) == b"s%d:0" % i

        async def drain(stream) -> BaseException | None:  # type: ignore[no-untyped-def]
            try:
                async for _ in stream:
                    pass
            except PeerGoneError as exc:
                return exc
            return None

        tasks = [asyncio.create_task(drain(s)) for s in streams]
        await asyncio.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        done, pending = await asyncio.wait(tasks, timeout=2.0)
        elapsed = time.monotonic() - killed_at
        assert not pending, f"{len(pending)} of 50 streams still open {elapsed:.2f}s after kill -9"
        errors = [t.result() for t in done]
        assert all(isinstance(e, PeerGoneError) for e in errors), errors
        assert elapsed < 2.0
    finally:
        await client.close()
