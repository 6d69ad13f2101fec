"""A child process for the runtime integration tests (run as a script, not collected).

runtime_child.py register DISCOVERY_URL KEY TTL_S       put KEY, print "ready", wait
runtime_child.py publish EVENTS_URL DISCOVERY_URL N     ping until stdin says go, then
                                                        publish N ordered events, exit
runtime_child.py serve                                  request server; prints address
"""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from mixroute.runtime.discovery import open_discovery
from mixroute.runtime.events import open_event_publisher
from mixroute.runtime.requests import start_request_server


async def register(url: str, key: str, ttl_s: str) -> None:
    discovery = await open_discovery(url, lease_ttl_s=float(ttl_s))
    await discovery.put(key, b"alive")
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def publish(events_url: str, discovery_url: str, n: str) -> None:
    discovery = await open_discovery(discovery_url, lease_ttl_s=2)
    pub = await open_event_publisher(
        events_url, discovery=discovery, namespace="test", name="mixroute-test-child"
    )
    loop = asyncio.get_running_loop()
    go = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: go.done() or go.set_result(None))
    print("ready", flush=True)
    while not go.done():
        await pub.publish("test.ping", b"")
        await asyncio.sleep(0.05)
    loop.remove_reader(sys.stdin.fileno())
    for i in range(int(n)):
        await pub.publish("test.data.seq", i.to_bytes(4, "little"))
    await pub.close()
    await discovery.close()
    print("done", flush=True)


async def ticks(payload: bytes) -> AsyncIterator[bytes]:
    """Yields payload-tagged ticks forever, slowly (a long generation)."""
    i = 0
    while True:
        yield payload + b":%d" % i
        i += 1
        await asyncio.sleep(0.02)


async def echo_n(payload: bytes) -> AsyncIterator[bytes]:
    tag, n = payload.split(b":")
    for i in range(int(n)):
        yield tag + b":%d" % i


async def serve() -> None:
    server = await start_request_server(endpoints={"ticks": ticks, "echo_n": echo_n})
    print(server.address, flush=True)
    await asyncio.sleep(3600)


def spawn_child(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Starts this script with `args`; returns the process and its first stdout line."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__)), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"child {args} did not start (exit code {proc.returncode})")
    return proc, line


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    coro = {"register": register, "publish": publish, "serve": serve}[mode](*args)
    asyncio.run(coro)


if __name__ == "__main__":
    main()
