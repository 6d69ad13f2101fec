"""Runtime benchmark: request plane and event plane between two processes on loopback.

    python3 bench/runtime_bench.py                       # prints a markdown report
    python3 bench/runtime_bench.py --write bench/results/runtime.md   # appends
    python3 bench/runtime_bench.py --loop uvloop         # both processes on uvloop

Measures (the parent is the client / subscriber, a child process the server / publisher):
  - request plane: p50/p99 round trip of a 1-frame request (sequential), frames/s of a
    256-frame stream (sequential streams, and 8 concurrent streams on the one connection);
  - event plane: messages/s from one publisher to one subscriber, zmq and NATS (a real
    nats-server started on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from mixroute.runtime.discovery import open_discovery
from mixroute.runtime.events import open_event_publisher, open_event_subscriber
from mixroute.runtime.infra import NatsProcess
from mixroute.runtime.requests import TcpRequestClient, start_request_server

EVENT_PAYLOAD = b"x" * 96
"""About the size of one encoded KvEvent with a couple of blocks."""


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]], loop_name: str) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


# ---- child roles ----


async def child_server() -> None:
    async def one(payload: bytes) -> AsyncIterator[bytes]:
        yield payload

    async def stream256(payload: bytes) -> AsyncIterator[bytes]:
        frame = b"t" * 16
        for _ in range(256):
            yield frame

    server = await start_request_server(endpoints={"one": one, "stream256": stream256})
    print(server.address, flush=True)
    await asyncio.sleep(3600)


async def child_publisher(events_url: str, discovery_url: str, count: int) -> None:
    discovery = await open_discovery(discovery_url)
    pub = await open_event_publisher(
        events_url, discovery=discovery, namespace="bench", name="mixroute-bench-pub"
    )
    loop = asyncio.get_running_loop()
    go = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: go.done() or go.set_result(None))
    print("ready", flush=True)
    while not go.done():
        await pub.publish("bench.ping", b"")
        await asyncio.sleep(0.02)
    for i in range(count):
        await pub.publish("bench.data", EVENT_PAYLOAD)
        if i % 4096 == 4095:
            await asyncio.sleep(0)  # let the NATS flusher / zmq I/O thread keep up
    await pub.publish("bench.end", b"")
    await pub.close()
    await discovery.close()


async def child_echo() -> None:
    """The floor: a bare asyncio Protocol echoing bytes back, no framing, no streams."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)


async def bench_echo_floor(port: int, num_round_trips: int) -> float:
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None]] = []

    class Client(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            waiter[0].set_result(None)

    transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
    latencies = []
    for _ in range(num_round_trips):
        start = time.perf_counter()
        waiter[:] = [loop.create_future()]
        transport.write(b"x" * 16)
        await waiter[0]
        latencies.append(time.perf_counter() - start)
    transport.close()
    return statistics.median(latencies) * 1e6


def spawn(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        proc.kill()
        raise SystemExit(f"child {args} did not start")
    return proc, line


# ---- measurements ----


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_requests(
    address: str, num_round_trips: int, num_streams: int, server_pid: int
) -> dict[str, float]:
    client = TcpRequestClient()
    for _ in range(500):  # warm up: connection, caches
        async for _ in client.stream(address, "one", b"w"):
            pass
    latencies = []
    cpu_client, cpu_server = time.process_time(), process_cpu_s(server_pid)
    for _ in range(num_round_trips):
        start = time.perf_counter()
        async for _ in client.stream(address, "one", b"ping"):
            pass
        latencies.append(time.perf_counter() - start)
    cpu_client = time.process_time() - cpu_client
    cpu_server = process_cpu_s(server_pid) - cpu_server
    latencies.sort()
    result = {
        "rt_cpu_client_us": cpu_client / num_round_trips * 1e6,
        "rt_cpu_server_us": cpu_server / num_round_trips * 1e6,
        "rt_p50_us": statistics.median(latencies) * 1e6,
        "rt_p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
        "rt_mean_us": statistics.fmean(latencies) * 1e6,
    }

    async def one_stream() -> int:
        n = 0
        async for _ in client.stream(address, "stream256", b""):
            n += 1
        assert n == 256
        return n

    start = time.perf_counter()
    frames = 0
    for _ in range(num_streams):
        frames += await one_stream()
    result["stream_frames_per_s"] = frames / (time.perf_counter() - start)

    start = time.perf_counter()
    frames = 0
    for _ in range(num_streams // 8):
        frames += sum(await asyncio.gather(*(one_stream() for _ in range(8))))
    result["stream8_frames_per_s"] = frames / (time.perf_counter() - start)
    await client.close()
    return result


async def bench_events(events_url: str, count: int) -> float:
    with tempfile.TemporaryDirectory(prefix="mixroute-bench-") as run_dir:
        discovery_url = f"file://{run_dir}"
        discovery = await open_discovery(discovery_url)
        subscriber = await open_event_subscriber(
            events_url, discovery=discovery, namespace="bench", name="mixroute-bench-sub"
        )
        stream = subscriber.subscribe("bench.")
        proc, _ = await asyncio.to_thread(spawn, ["--role", "publisher", "--events-url", events_url,
                                                  "--discovery", discovery_url, "--count", str(count)])  # fmt: skip
        try:
            while (await asyncio.wait_for(stream.__anext__(), 15))[0] != "bench.ping":
                pass
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            received, start = 0, 0.0
            async for subject, _ in stream:
                if subject == "bench.data":
                    if received == 0:
                        start = time.perf_counter()
                    received += 1
                elif subject == "bench.end":
                    break
            elapsed = time.perf_counter() - start
            if received != count:
                print(f"warning: {events_url}: received {received} of {count}", file=sys.stderr)
            return received / elapsed
        finally:
            proc.kill()
            proc.wait()
            await stream.aclose()
            await subscriber.close()
            await discovery.close()


async def parent(args: argparse.Namespace) -> dict[str, float]:
    proc, port = await asyncio.to_thread(spawn, ["--role", "echo", "--loop", args.loop])
    try:
        floor_us = await bench_echo_floor(int(port), args.round_trips)
    finally:
        proc.kill()
        proc.wait()
    proc, address = await asyncio.to_thread(spawn, ["--role", "server", "--loop", args.loop])
    try:
        results = await bench_requests(address, args.round_trips, args.streams, proc.pid)
        results["floor_p50_us"] = floor_us
    finally:
        proc.kill()
        proc.wait()
    results["zmq_msgs_per_s"] = await bench_events("zmq", args.events)
    nats = NatsProcess.start()
    try:
        results["nats_msgs_per_s"] = await bench_events(nats.url, args.events)
    finally:
        nats.stop()
    return results


def report(args: argparse.Namespace, r: dict[str, float]) -> str:
    command = "python3 bench/runtime_bench.py " + " ".join(sys.argv[1:])
    verdict_rt = "met" if r["rt_p50_us"] <= 150 else "MISSED"
    verdict_fps = "met" if r["stream_frames_per_s"] >= 50_000 else "MISSED"
    return f"""| metric | value | goal |
| --- | --- | --- |
| request plane 1-frame round trip p50 | {r["rt_p50_us"]:.0f} us | <= 150 us ({verdict_rt}) |
| request plane 1-frame round trip p99 | {r["rt_p99_us"]:.0f} us | |
| request plane 1-frame round trip mean | {r["rt_mean_us"]:.0f} us | |
| floor: bare asyncio Protocol echo, p50 (no framing, no streams) | {r["floor_p50_us"]:.0f} us | |
| CPU per round trip, client + server | {r["rt_cpu_client_us"]:.0f} + {r["rt_cpu_server_us"]:.0f} us | |
| 256-frame stream, one at a time | {r["stream_frames_per_s"]:,.0f} frames/s | >= 50,000 ({verdict_fps}) |
| 256-frame streams, 8 concurrent on one connection | {r["stream8_frames_per_s"]:,.0f} frames/s | |
| event plane zmq, 1 publisher -> 1 subscriber | {r["zmq_msgs_per_s"]:,.0f} msgs/s | |
| event plane NATS, 1 publisher -> 1 subscriber | {r["nats_msgs_per_s"]:,.0f} msgs/s | |

Command: `{command}` (event loop: {args.loop}; {args.round_trips} round trips,
{args.streams} streams, {args.events} events of {len(EVENT_PAYLOAD)} bytes).
Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()};
1-minute load average {r["load_before"]:.1f} before and {os.getloadavg()[0]:.1f} after the run
(the machine is shared: a load above the CPU count inflates every figure above).
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--role", choices=["parent", "server", "publisher", "echo"], default="parent"
    )
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument(
        "--events", type=int, default=100_000, help="events per event-plane backend"
    )
    parser.add_argument("--events-url", default="zmq", help=argparse.SUPPRESS)
    parser.add_argument("--discovery", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument(
        "--write", type=Path, default=None, help="also append the report table to this file"
    )
    args = parser.parse_args()
    if args.role == "server":
        run_loop(child_server, args.loop)
        return
    if args.role == "echo":
        run_loop(child_echo, args.loop)
        return
    if args.role == "publisher":
        run_loop(lambda: child_publisher(args.events_url, args.discovery, args.count), args.loop)
        return
    load_before = os.getloadavg()[0]
    results = run_loop(lambda: parent(args), args.loop)
    results["load_before"] = load_before
    text = report(args, results)
    print(text)
    if args.write is not None:
        with open(args.write, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
