"""Event plane across processes, ZeroMQ and real NATS: a child publishes, the parent
receives every event in order; NATS `/connz` counts (and names) the connections."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mixroute.runtime.discovery import open_discovery
from mixroute.runtime.events import open_event_subscriber
from mixroute.runtime.infra import NatsProcess

from .runtime_child import spawn_child

NUM_EVENTS = 5000


@pytest.fixture(params=["zmq", "nats"])
def events_url(request: pytest.FixtureRequest) -> str:
    if request.param == "zmq":
        return "zmq"
    return str(request.getfixturevalue("nats_server").url)


async def test_child_events_arrive_in_order(events_url: str, tmp_path: Path) -> None:
    discovery_url = f"file://{tmp_path}"
    discovery = await open_discovery(discovery_url, lease_ttl_s=2)
    subscriber = await open_event_subscriber(
        events_url, discovery=discovery, namespace="test", name="mixroute-test-parent"
    )
    stream = subscriber.subscribe("test.")
    proc, line = await asyncio.to_thread(
        spawn_child, "publish", events_url, discovery_url, str(NUM_EVENTS)
    )
    try:
        assert line == "ready"
        # The child pings until we hear it: from then on nothing it sends is lost.
        subject, _ = await asyncio.wait_for(stream.__anext__(), 10)
        assert subject == "test.ping"
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        received: list[int] = []

        async def collect() -> None:
            async for subject, payload in stream:
                if subject == "test.data.seq":
                    received.append(int.from_bytes(payload, "little"))
                    if len(received) == NUM_EVENTS:
                        return

        await asyncio.wait_for(collect(), 20)
        assert received == list(range(NUM_EVENTS))
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        await stream.aclose()
        await subscriber.close()
        await discovery.close()


def _connection_names(nats: NatsProcess) -> list[str]:
    connz = nats.connz()
    conns = connz.get("connections") or []
    assert isinstance(conns, list)
    assert connz["num_connections"] == len(conns)
    return sorted(str(c.get("name", "")) for c in conns)


async def test_nats_connz_counts_named_connections(
    nats_server: NatsProcess, tmp_path: Path
) -> None:
    before = _connection_names(nats_server)
    subscriber = await open_event_subscriber(nats_server.url, name="mixroute-frontend-test")
    proc, line = await asyncio.to_thread(
        spawn_child, "publish", nats_server.url, f"file://{tmp_path}", "1"
    )
    try:
        assert line == "ready"
        deadline = time.monotonic() + 5
        while True:
            names = _connection_names(nats_server)
            if len(names) == len(before) + 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert sorted(set(names) - set(before)) == ["mixroute-frontend-test", "mixroute-test-child"]
        assert len(names) == len(before) + 2
    finally:
        proc.kill()
        proc.wait()
    await subscriber.close()
    deadline = time.monotonic() + 5
    while len(_connection_names(nats_server)) != len(before) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _connection_names(nats_server) == before


async def test_a_timed_out_wait_leaves_the_subscription_usable(
    events_url: str, tmp_path: Path
) -> None:
    from mixroute.runtime.events import open_event_publisher

    discovery = await open_discovery(f"file://{tmp_path}", lease_ttl_s=2)
    subscriber = await open_event_subscriber(events_url, discovery=discovery, namespace="test")
    stream = subscriber.subscribe("test.")
    publisher = await open_event_publisher(events_url, discovery=discovery, namespace="test")
    try:
        for _ in range(3):  # nothing published yet: each wait times out, the stream lives on
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(stream.__anext__(), 0.05)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # zmq connects asynchronously: publish until heard
            await publisher.publish("test.hello", b"1")
            try:
                assert await asyncio.wait_for(stream.__anext__(), 0.2) == ("test.hello", b"1")
                break
            except TimeoutError:
                assert loop.time() < deadline
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await publisher.close()
        await subscriber.close()
        await discovery.close()
