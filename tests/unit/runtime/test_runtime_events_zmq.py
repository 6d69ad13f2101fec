"""ZeroMQ event plane in one process: publishers come and go, the subscriber follows."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mixroute.runtime.discovery import open_discovery
from mixroute.runtime.events import open_event_publisher, open_event_subscriber
from mixroute.runtime.events.zmq import ZmqEventSubscriber


async def _publish_until_heard(pub, stream, subject: str, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    """PUB/SUB drops what is sent before the subscriber connects: repeat until it arrives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        await pub.publish(subject, payload)
        try:
            got = await asyncio.wait_for(stream.__anext__(), 0.1)
        except TimeoutError:
            assert loop.time() < deadline, f"{subject} never arrived"
            continue
        if got == (subject, payload):
            return


async def test_subscriber_follows_publishers_joining_and_leaving(tmp_path: Path) -> None:
    discovery = await open_discovery(f"file://{tmp_path}")
    subscriber = await open_event_subscriber("zmq", discovery=discovery, namespace="t")
    assert isinstance(subscriber, ZmqEventSubscriber)
    stream = subscriber.subscribe("namespace.t.")
    first = await open_event_publisher("zmq", discovery=discovery, namespace="t")
    await _publish_until_heard(first, stream, "namespace.t.a", b"from-first")
    await subscriber.wait_for_publishers(1)

    second = await open_event_publisher("zmq", discovery=discovery, namespace="t")
    await _publish_until_heard(second, stream, "namespace.t.b", b"from-second")
    assert len(subscriber.publishers) == 2

    await first.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while len(subscriber.publishers) != 1:
        assert loop.time() < deadline, "the closed publisher was not dropped"
        await asyncio.sleep(0.05)
    # Other namespaces and non-matching subjects are not delivered.
    await second.publish("namespace.other.x", b"no")
    await _publish_until_heard(second, stream, "namespace.t.c", b"still-here")

    await stream.aclose()
    await second.close()
    await subscriber.close()
    await discovery.close()
