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
