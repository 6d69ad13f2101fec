"""Event plane: publish/subscribe of encoded messages by dotted subject. See README.md in
runtime/.

    pub = await open_event_publisher("zmq", discovery=d, namespace="dynamo", name="worker-1a")
    await pub.publish("namespace.dynamo.component.backend.kv_events", payload)
    sub = await open_event_subscriber("nats://127.0.0.1:4222", name="frontend")
    async for subject, payload in sub.subscribe("namespace.dynamo.component.backend."): ...
"""

from __future__ import annotations

import os

from mixroute.errors import ConfigError, EventPlaneError
from mixroute.runtime.discovery.base import Discovery
from mixroute.runtime.events.base import EventPublisher, EventSubscriber

__all__ = [
    "DEFAULT_EVENTS_URL",
    "EventPublisher",
    "EventSubscriber",
    "open_event_publisher",
    "open_event_subscriber",
]

DEFAULT_EVENTS_URL = "zmq"


def _scheme(url: str | None) -> str:
    url = url or DEFAULT_EVENTS_URL
    scheme = url.partition("://")[0]
    if scheme not in ("zmq", "nats"):
        raise EventPlaneError(f"unknown events URL {url!r}; use zmq or nats://HOST:PORT")
    return scheme


def _default_name(role: str) -> str:
    return f"mixroute-{role}-{os.getpid()}"


async def open_event_publisher(
    url: str | None = None,
    *,
    discovery: Discovery | None = None,
    namespace: str = "dynamo",
    host: str = "127.0.0.1",
    advertise_host: str | None = None,
    name: str | None = None,
) -> EventPublisher:
    """A started publisher. `zmq` binds on `host` and advertises itself in `discovery`
    (required); `nats://...` connects to the server with connection name `name`."""
    name = name or _default_name("publisher")
    if _scheme(url) == "zmq":
        from mixroute.runtime.events.zmq import ZmqEventPublisher

        if discovery is None:
            raise ConfigError("the zmq event plane needs discovery to advertise publishers")
        zmq_pub = ZmqEventPublisher(
            discovery, namespace, host=host, advertise_host=advertise_host, name=name
        )
        await zmq_pub.start()
        return zmq_pub
    from mixroute.runtime.events.nats import NatsEventPublisher

    assert url is not None
    nats_pub = NatsEventPublisher(url, name)
    await nats_pub.start()
    return nats_pub


async def open_event_subscriber(
    url: str | None = None,
    *,
    discovery: Discovery | None = None,
    namespace: str = "dynamo",
    name: str | None = None,
) -> EventSubscriber:
    """A started subscriber. `zmq` finds publishers of `namespace` through `discovery`."""
    name = name or _default_name("subscriber")
    if _scheme(url) == "zmq":
        from mixroute.runtime.events.zmq import ZmqEventSubscriber

        if discovery is None:
            raise ConfigError("the zmq event plane needs discovery to find publishers")
        return ZmqEventSubscriber(discovery, namespace)
    from mixroute.runtime.events.nats import NatsEventSubscriber

    assert url is not None
    nats_sub = NatsEventSubscriber(url, name)
    await nats_sub.start()
    return nats_sub
