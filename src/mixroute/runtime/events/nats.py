"""NATS event plane via nats-py.

Subjects are already dotted, so a subject prefix maps onto a NATS wildcard: `a.b.`
subscribes `a.b.>`; a prefix that ends inside a token (`a.b` also matching `a.bc`)
subscribes the enclosing `a.>` and filters here. Connections carry a name
(`mixroute-<role>-<id>`) so the server's `/connz` shows who is connected. Order is kept
per publisher (one connection, one TCP stream).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mixroute.errors import EventPlaneError
from mixroute.logs import kv

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5
_FLUSH_TIMEOUT_S = 5
_PENDING_MSGS = 1_000_000


def nats_subject_for_prefix(prefix: str) -> tuple[str, bool]:
    """(NATS subject to subscribe, whether received subjects must still be filtered)."""
    if prefix == "":
        return ">", False
    if prefix.endswith("."):
        return prefix + ">", False
    head, dot, _ = prefix.rpartition(".")
    return (head + ".>" if dot else ">"), True


async def connect_nats(url: str, name: str) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        log.warning("nats connection error %s", kv(name=name, error=repr(exc)))

    # nats-py retries an unreachable server forever when reconnects are unlimited (which we
    # want later on); probe once first so a wrong URL fails now, with a clear message.
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host or "127.0.0.1", int(port)), _CONNECT_TIMEOUT_S
        )
        writer.close()
    except (TimeoutError, OSError, ValueError) as exc:
        raise EventPlaneError(
            f"cannot connect to NATS at {url} ({type(exc).__name__}: {exc}); is nats-server running?"
        ) from exc
    try:
        return await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                connect_timeout=_CONNECT_TIMEOUT_S,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                allow_reconnect=True,
            ),
            _CONNECT_TIMEOUT_S * 2,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise EventPlaneError(
            f"cannot connect to NATS at {url} ({type(exc).__name__}: {exc}); is nats-server running?"
        ) from exc


class NatsEventPublisher:
    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._nc: NatsClient | None = None

    async def start(self) -> None:
        self._nc = await connect_nats(self.url, self.name)
        log.info("nats event publisher up %s", kv(url=self.url, name=self.name))

    async def publish(self, subject: str, payload: bytes) -> None:
        if self._nc is None or self._nc.is_closed:
            raise EventPlaneError("event publisher is closed")
        try:
            await self._nc.publish(subject, payload)
        except nats.errors.Error as exc:
            raise EventPlaneError(f"nats publish on {subject!r} failed: {exc}") from exc

    async def flush(self) -> None:
        """Waits until the server has everything published so far."""
        if self._nc is not None:
            try:
                await self._nc.flush(_FLUSH_TIMEOUT_S)
            except nats.errors.Error as exc:
                raise EventPlaneError(f"nats flush failed: {exc}") from exc

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is None or nc.is_closed:
            return
        try:
            await nc.flush(_FLUSH_TIMEOUT_S)
        except nats.errors.Error as exc:
            log.warning("nats flush on close failed %s", kv(error=exc))
        await nc.close()


class NatsEventSubscriber:
    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._nc: NatsClient | None = None
        self._subscriptions: weakref.WeakSet[NatsSubscription] = weakref.WeakSet()

    async def start(self) -> None:
        self._nc = await connect_nats(self.url, self.name)

    def subscribe(self, subject_prefix: str) -> NatsSubscription:
        if self._nc is None or self._nc.is_closed:
            raise EventPlaneError("event subscriber is closed")
        subscription = NatsSubscription(self, subject_prefix)
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()
        for subscription in list(self._subscriptions):  # wake iterators so they end
            subscription.wake()


class NatsSubscription:
    """Async iterator of (subject, payload); subscribes on the first `__anext__`. Messages
    arrive through a callback into a deque (nats-py's `messages` iterator starts tasks per
    message, which caps it at a few thousand per second). A cancelled or timed-out
    `__anext__` leaves it usable; `aclose()` unsubscribes."""

    def __init__(self, owner: NatsEventSubscriber, subject_prefix: str) -> None:
        self._owner = owner
        self._prefix = subject_prefix
        self._subject, self._must_filter = nats_subject_for_prefix(subject_prefix)
        self._inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._sub: Subscription | None = None
        self._done = False

    def __aiter__(self) -> NatsSubscription:
        return self

    async def _on_message(self, msg: Msg) -> None:
        if self._must_filter and not msg.subject.startswith(self._prefix):
            return
        self._inbox.append((msg.subject, msg.data))
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _start(self) -> None:
        nc = self._owner._nc
        if nc is None or nc.is_closed:
            raise StopAsyncIteration
        try:
            self._sub = await nc.subscribe(
                self._subject, cb=self._on_message, pending_msgs_limit=_PENDING_MSGS
            )
            await nc.flush(_FLUSH_TIMEOUT_S)  # the server knows the interest on return
        except nats.errors.Error as exc:
            raise EventPlaneError(f"nats subscribe {self._subject!r} failed: {exc}") from exc

    async def __anext__(self) -> tuple[str, bytes]:
        if self._sub is None and not self._done:
            await self._start()
        while True:
            if self._inbox:
                return self._inbox.popleft()
            nc = self._owner._nc
            if self._done or nc is None or nc.is_closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def aclose(self) -> None:
        self._done = True
        self._inbox.clear()
        self.wake()
        sub, self._sub = self._sub, None
        nc = self._owner._nc
        if sub is not None and nc is not None and not nc.is_closed:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass
