"""Event plane interface: publish/subscribe of encoded messages by subject.

Subjects are dotted (`namespace.{ns}.component.{component}.kv_events`); a subscription
is by subject prefix. Order is preserved per publisher. Backends: `zmq` (embedded
default, no broker; publishers advertise their address through discovery) and
`nats://HOST:PORT`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class EventPublisher(Protocol):
    async def publish(self, subject: str, payload: bytes) -> None: ...

    async def close(self) -> None: ...


class EventSubscriber(Protocol):
    def subscribe(self, subject_prefix: str) -> AsyncIterator[tuple[str, bytes]]:
        """Yields (subject, payload) for every message whose subject starts with the prefix.

        The returned iterator also has `aclose()`; a cancelled or timed-out `__anext__`
        (e.g. under `asyncio.wait_for`) leaves it usable."""

    async def close(self) -> None: ...
