"""Request-plane client: one TCP connection per server address, many streams on it.

    client = TcpRequestClient()
    async for payload in client.stream("tcp://127.0.0.1:5555", "generate", request):
        ...

`stream` returns a `ResponseStream` (an async iterator). Stopping early — `aclose()`,
`async with` exit, the consuming task being cancelled, or the stream being dropped —
sends Cancel so the server cancels its handler. A lost connection fails every stream on
it at once with PeerGoneError; the next `stream` to that address reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Self

from mixroute.errors import (
    PeerGoneError,
    RemoteHandlerError,
    RequestPlaneError,
    UnknownEndpointError,
)
from mixroute.logs import kv
from mixroute.runtime.requests.connection import (
    DEFAULT_DEAD_AFTER_S,
    DEFAULT_PING_INTERVAL_S,
    Connection,
)
from mixroute.runtime.requests.frames import (
    PROTOCOL_VERSION,
    Cancel,
    Data,
    End,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Request,
)

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0


def parse_address(address: str) -> tuple[str, int]:
    """`tcp://host:port` (or `tcp://[v6]:port`) -> (host, port)."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme != "tcp":
        raise RequestPlaneError(f"bad request-plane address {address!r}; expected tcp://HOST:PORT")
    host, _, port_text = rest.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise RequestPlaneError(f"bad port in request-plane address {address!r}") from None
    return host.strip("[]"), port


def _remote_error(address: str, frame: Error) -> RequestPlaneError:
    if frame.code == ErrorCode.UNKNOWN_ENDPOINT:
        return UnknownEndpointError(f"{address}: {frame.message}")
    if frame.code == ErrorCode.HANDLER:
        return RemoteHandlerError(f"{address}: {frame.message}")
    if frame.code == ErrorCode.SHUTDOWN:
        return PeerGoneError(f"{address}: {frame.message}")
    return RequestPlaneError(f"{address}: {frame.code}: {frame.message}")


class ClientConnection(Connection):
    def __init__(self, address: str, *, ping_interval_s: float, dead_after_s: float) -> None:
        super().__init__(ping_interval_s=ping_interval_s, dead_after_s=dead_after_s)
        self.address = address
        self.streams: dict[int, StreamState] = {}
        self._next_sid = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(Hello(PROTOCOL_VERSION))  # no need to wait: a server that disagrees hangs up

    def open_stream(self, state: StreamState, endpoint: str, payload: bytes) -> int:
        sid = self._next_sid
        self._next_sid += 1
        self.streams[sid] = state
        self.write(Request(sid, endpoint, payload))
        return sid

    def cancel_stream(self, sid: int) -> None:
        if self.streams.pop(sid, None) is not None:
            self.write(Cancel(sid))

    def frame_received(self, frame: Frame) -> None:
        kind = type(frame)
        if kind is Data:
            state = self.streams.get(frame.stream_id)  # type: ignore[union-attr]
            if state is not None:
                state.push(frame.payload)  # type: ignore[union-attr]
        elif kind is End:
            state = self.streams.pop(frame.stream_id, None)  # type: ignore[union-attr]
            if state is not None:
                state.finish(None)
        elif kind is Error:
            assert isinstance(frame, Error)
            if frame.stream_id == 0:
                self.abort(_remote_error(self.address, frame))
                return
            state = self.streams.pop(frame.stream_id, None)
            if state is not None:
                state.finish(_remote_error(self.address, frame))
        else:
            self.protocol_error(f"unexpected {kind.__name__} frame from a server")

    def closed(self, error: Exception) -> None:
        streams, self.streams = self.streams, {}
        if streams:
            log.warning(
                "request plane connection lost %s",
                kv(address=self.address, streams=len(streams), error=error),
            )
        for state in streams.values():
            state.finish(error)


class StreamState:
    """What the connection delivers to one stream. Kept apart from `ResponseStream` so the
    connection does not keep a dropped stream alive: dropping it runs `__del__`, which
    cancels the remote handler."""

    __slots__ = ("done", "error", "items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.done = False
        self.error: Exception | None = None

    def push(self, item: bytes) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def finish(self, error: Exception | None) -> None:
        self.done = True
        self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class ResponseStream:
    """Async iterator over one request's response payloads."""

    __slots__ = ("_client", "_conn", "_payload", "_sid", "_state", "address", "endpoint")

    def __init__(
        self, client: TcpRequestClient, address: str, endpoint: str, payload: bytes
    ) -> None:
        self._client = client
        self.address = address
        self.endpoint = endpoint
        self._payload: bytes | None = payload
        self._conn: ClientConnection | None = None
        self._sid = 0
        self._state = StreamState()

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        state = self._state
        if self._conn is None and not state.done:
            conn = self._client._connections.get(self.address)
            if conn is not None and not conn.is_closed:
                self._open_on(conn)  # the common case: no await before the request goes out
            else:
                await self._open()
        while True:
            if state.items:
                return state.items.popleft()
            if state.done:
                if state.error is not None:
                    raise state.error
                raise StopAsyncIteration
            state.waiter = asyncio.get_running_loop().create_future()
            try:
                await state.waiter
            except asyncio.CancelledError:
                self._cancel_remote()
                raise
            finally:
                state.waiter = None

    async def _open(self) -> None:
        try:
            conn = await self._client._connection(self.address)
        except asyncio.CancelledError:
            self._state.done = True
            raise
        except RequestPlaneError as exc:
            self._state.finish(exc)
            raise
        self._open_on(conn)

    def _open_on(self, conn: ClientConnection) -> None:
        payload, self._payload = self._payload, None
        assert payload is not None
        self._conn = conn
        self._sid = conn.open_stream(self._state, self.endpoint, payload)

    def _cancel_remote(self) -> None:
        state = self._state
        if not state.done:
            state.done = True
            state.error = None
            if self._conn is not None:
                self._conn.cancel_stream(self._sid)

    async def aclose(self) -> None:
        """Stops the stream; the server's handler is cancelled if it is still running."""
        self._cancel_remote()
        self._state.items.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._state.done and self._conn is not None and not self._conn.is_closed:
            try:
                self._cancel_remote()
            except RuntimeError:  # loop already closed at interpreter exit
                pass


class TcpRequestClient:
    """`RequestClient` over asyncio TCP."""

    def __init__(
        self,
        *,
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
        dead_after_s: float = DEFAULT_DEAD_AFTER_S,
        connect_timeout_s: float = _CONNECT_TIMEOUT_S,
    ) -> None:
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.connect_timeout_s = connect_timeout_s
        self._connections: dict[str, ClientConnection] = {}
        self._connecting: dict[str, asyncio.Future[ClientConnection]] = {}
        self._closed = False

    def stream(self, address: str, endpoint: str, payload: bytes) -> ResponseStream:
        return ResponseStream(self, address, endpoint, payload)

    async def _connection(self, address: str) -> ClientConnection:
        conn = self._connections.get(address)
        if conn is not None and not conn.is_closed:
            return conn
        if self._closed:
            raise RequestPlaneError("request client is closed")
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(address))
            self._connecting[address] = pending
            pending.add_done_callback(lambda _: self._connecting.pop(address, None))
        return await asyncio.shield(pending)

    async def _connect(self, address: str) -> ClientConnection:
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()

        def factory() -> ClientConnection:
            return ClientConnection(
                address, ping_interval_s=self.ping_interval_s, dead_after_s=self.dead_after_s
            )

        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(factory, host, port), self.connect_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            raise PeerGoneError(
                f"cannot connect to {address}: {exc or type(exc).__name__}"
            ) from exc
        self._connections[address] = conn
        log.debug("request plane connected %s", kv(address=address))
        return conn

    def num_connections(self) -> int:
        return sum(1 for conn in self._connections.values() if not conn.is_closed)

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._connections.values()):
            conn.close()
        self._connections.clear()

    def __repr__(self) -> str:
        return f"TcpRequestClient(connections={self.num_connections()})"
