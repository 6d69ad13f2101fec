"""ZeroMQ event plane: PUB/SUB with no broker, publishers found through discovery.

A publisher binds a PUB socket on a random port of `host` and advertises it under
`v1/event_publishers/{namespace}/{publisher_id:x}` (leased: it disappears with the
process). A subscriber watches that prefix and connects its SUB sockets to every
publisher, including ones that appear later. Messages are two-part `[subject, payload]`;
ZeroMQ filters by subject prefix on the subscriber's behalf. Order is kept per publisher.

Like any PUB/SUB, messages sent before a subscriber has connected are not delivered to
it; consumers that need the full state (the KV indexer) detect the gap by event id and
ask for a dump.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets

import msgspec
import zmq
import zmq.asyncio

from mixroute.errors import EventPlaneError
from mixroute.logs import kv
from mixroute.protocol.names import EVENT_PUBLISHERS_ROOT
from mixroute.runtime.address import advertised_host, url_host
from mixroute.runtime.discovery.base import Discovery

log = logging.getLogger(__name__)

_HWM = 1_000_000
"""Messages queued per peer before ZeroMQ drops; high, so bursts of KV events survive."""
_POLL_MS = 100
"""Longest wait on a subscription's poll before its receive is tried again."""
_LINGER_MS = 2000


class PublisherRecord(msgspec.Struct, kw_only=True):
    """The JSON value under a publisher's discovery key."""

    address: str
    pid: int
    name: str = ""


def publishers_prefix(namespace: str) -> str:
    return f"{EVENT_PUBLISHERS_ROOT}/{namespace}/"


class ZmqEventPublisher:
    def __init__(
        self,
        discovery: Discovery,
        namespace: str,
        *,
        host: str = "127.0.0.1",
        advertise_host: str | None = None,
        name: str = "",
    ) -> None:
        self.discovery = discovery
        self.namespace = namespace
        self.publisher_id = secrets.randbits(63)
        self.name = name
        self._host = host
        self._advertise_host = advertise_host
        # A plain (blocking-API) socket: PUB sends never block, they queue or drop, so we
        # skip the future per message that zmq.asyncio would cost.
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, _HWM)
        self._socket.setsockopt(zmq.LINGER, _LINGER_MS)
        if ":" in host:
            self._socket.setsockopt(zmq.IPV6, 1)
        self.address = ""
        self.key = f"{publishers_prefix(namespace)}{self.publisher_id:x}"
        self._closed = False

    async def start(self) -> None:
        try:
            self._socket.bind(f"tcp://{url_host(self._host or '0.0.0.0')}:*")
        except zmq.ZMQError as exc:
            self._socket.close(0)
            raise EventPlaneError(f"cannot bind event publisher on {self._host}: {exc}") from exc
        endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        port = endpoint.rsplit(":", 1)[1]
        host = advertised_host(self._host, self._advertise_host)
        self.address = f"tcp://{url_host(host)}:{port}"
        record = PublisherRecord(address=self.address, pid=os.getpid(), name=self.name)
        await self.discovery.put(self.key, msgspec.json.encode(record), leased=True)
        log.info("zmq event publisher up %s", kv(address=self.address, key=self.key))

    async def publish(self, subject: str, payload: bytes) -> None:
        if self._closed:
            raise EventPlaneError("event publisher is closed")
        try:
            self._socket.send_multipart((subject.encode(), payload), copy=len(payload) < 65536)
        except zmq.ZMQError as exc:
            raise EventPlaneError(f"zmq publish on {subject!r} failed: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.discovery.delete(self.key)
        finally:
            # Linger lets queued messages reach connected subscribers before the socket goes.
            self._socket.close(_LINGER_MS)


class ZmqEventSubscriber:
    """Connects to every advertised publisher of `namespace`; one SUB socket per `subscribe`."""

    def __init__(self, discovery: Discovery, namespace: str) -> None:
        self.discovery = discovery
        self.namespace = namespace
        self._context = zmq.asyncio.Context.instance()
        self.publishers: dict[str, str] = {}
        """Discovery key -> address of the publishers we are connected to."""
        self._sockets: set[zmq.asyncio.Socket] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_ready = asyncio.Event()
        self._closed = False

    async def _watch(self) -> None:
        try:
            async for event in self.discovery.watch_prefix(publishers_prefix(self.namespace)):
                if event.kind == "put" and event.value is not None:
                    self._add_publisher(event.key, event.value)
                elif event.kind == "delete":
                    self._remove_publisher(event.key)
                if not self._watch_ready.is_set():
                    self._watch_ready.set()
        except Exception as exc:
            # Without this watch no new publisher is ever found: say so loudly.
            log.error(
                "zmq publishers watch failed; no new publishers will be seen %s",
                kv(error=repr(exc)),
            )
            raise
        finally:
            self._watch_ready.set()

    def _add_publisher(self, key: str, value: bytes) -> None:
        try:
            record = msgspec.json.decode(value, type=PublisherRecord)
        except msgspec.DecodeError as exc:
            log.warning("bad event publisher record %s", kv(key=key, error=exc))
            return
        old = self.publishers.get(key)
        if old == record.address:
            return
        if old is not None:
            self._remove_publisher(key)
        self.publishers[key] = record.address
        for sock in self._sockets:
            sock.connect(record.address)
        log.debug("zmq subscriber connected %s", kv(address=record.address, key=key))

    def _remove_publisher(self, key: str) -> None:
        address = self.publishers.pop(key, None)
        if address is None:
            return
        for sock in self._sockets:
            try:
                sock.disconnect(address)
            except zmq.ZMQError:
                pass

    def subscribe(self, subject_prefix: str) -> ZmqSubscription:
        if self._closed:
            raise EventPlaneError("event subscriber is closed")
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(), name="zmq-publishers-watch"
            )
        return ZmqSubscription(self, subject_prefix)

    async def wait_for_publishers(self, count: int = 1, timeout_s: float = 10.0) -> None:
        """Waits until at least `count` publishers are connected (handy in tests and tools)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.publishers) < count:
            if loop.time() > deadline:
                raise EventPlaneError(
                    f"only {len(self.publishers)} of {count} event publishers appeared"
                )
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # noqa: BLE001 - shutting down anyway; say why it ended
                log.debug("zmq publishers watch ended %s", kv(error=repr(exc)))
        for sock in list(self._sockets):
            sock.close(0)
        self._sockets.clear()


class ZmqSubscription:
    """Async iterator of (subject, payload) on its own SUB socket, connected to every known
    publisher. A cancelled or timed-out `__anext__` leaves it usable; `aclose()` ends it."""

    def __init__(self, owner: ZmqEventSubscriber, subject_prefix: str) -> None:
        self._owner = owner
        self._done = False
        self._sock = owner._context.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, _HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, subject_prefix.encode())
        owner._sockets.add(self._sock)
        for address in owner.publishers.values():
            self._sock.connect(address)
        # Messages are drained with non-blocking receives on a blocking-API shadow of the
        # socket, awaiting a poll only when it is empty: a future per message is the cost
        # that dominates otherwise.
        self._reader: zmq.Socket[bytes] = zmq.Socket.shadow(self._sock.underlying)

    def __aiter__(self) -> ZmqSubscription:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        while not self._done:
            try:
                subject, payload = self._reader.recv_multipart(zmq.NOBLOCK)
                return subject.decode(), payload
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                self._fail(exc)
            try:
                # Bounded: the socket's FD signals edges, and receives made on the shadow
                # socket can consume an edge the poll never sees (a rare stall with messages
                # queued, seen once in CI); a timed-out poll just tries the receive again.
                await self._sock.poll(_POLL_MS)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._owner._closed and task is not None and not task.cancelling():
                    break  # close() closed the socket under us: a normal end
                raise
            except zmq.ZMQError as exc:
                self._fail(exc)
        self._end()
        raise StopAsyncIteration

    def _fail(self, exc: zmq.ZMQError) -> None:
        if self._owner._closed or self._done:
            self._done = True
            return
        self._end()
        raise EventPlaneError(f"zmq receive failed: {exc}") from exc

    def _end(self) -> None:
        self._done = True
        self._owner._sockets.discard(self._sock)
        if not self._sock.closed:
            self._sock.close(0)

    async def aclose(self) -> None:
        self._end()
