"""Request-plane server: hosts named endpoints over asyncio TCP.

Each Request frame runs its endpoint's handler in its own task; every payload the handler
yields becomes a Data frame, its end an End frame, an exception an Error frame with the
exception's message. A Cancel frame, or the client's connection ending, cancels the
handler task (the handler sees CancelledError at its current await). A malformed frame
closes only that client's connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Self

from mixroute.errors import ConfigError, RequestPlaneError
from mixroute.logs import kv
from mixroute.runtime.address import advertised_host, url_host
from mixroute.runtime.requests.base import Handler
from mixroute.runtime.requests.connection import (
    DEFAULT_PING_INTERVAL_S,
    DEFAULT_SERVER_DEAD_AFTER_S,
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


class ServerConnection(Connection):
    def __init__(self, server: TcpRequestServer) -> None:
        super().__init__(ping_interval_s=server.ping_interval_s, dead_after_s=server.dead_after_s)
        self.server = server
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)

    def frame_received(self, frame: Frame) -> None:
        kind = type(frame)
        if kind is Request:
            self._start(frame)  # type: ignore[arg-type]
        elif kind is Hello:
            version = frame.version  # type: ignore[union-attr]
            if version != PROTOCOL_VERSION:
                self.protocol_error(
                    f"request-plane version {version} not supported (this server speaks {PROTOCOL_VERSION})"
                )
        elif kind is Cancel:
            task = self.tasks.get(frame.stream_id)  # type: ignore[union-attr]
            if task is not None:
                task.cancel()
        else:
            self.protocol_error(f"unexpected {kind.__name__} frame from a client")

    def _start(self, request: Request) -> None:
        sid = request.stream_id
        if sid == 0 or sid in self.tasks:
            self.protocol_error(f"stream id {sid} is 0 or already in use")
            return
        handler = self.server.endpoints.get(request.endpoint)
        if handler is None:
            known = ", ".join(sorted(self.server.endpoints)) or "none"
            message = f"unknown endpoint {request.endpoint!r} (this server has: {known})"
            self.write(Error(sid, ErrorCode.UNKNOWN_ENDPOINT, message))
            return
        self.tasks[sid] = self.loop.create_task(self._run(sid, handler, request.payload))

    async def _run(self, sid: int, handler: Handler, payload: bytes) -> None:
        try:
            async for item in handler(payload):
                if type(item) is not bytes:
                    if not isinstance(item, (bytearray, memoryview)):
                        raise TypeError(f"handler yielded {type(item).__name__}, expected bytes")
                    item = bytes(item)
                if not self.can_write.is_set():
                    await self.can_write.wait()
                if self.is_closed:
                    return
                self.write(Data(sid, item))
            self.write(End(sid))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any handler failure goes back to the caller
            log.warning(
                "request handler failed %s", kv(stream_id=sid, peer=self.peer, error=repr(exc))
            )
            self.write(Error(sid, ErrorCode.HANDLER, f"{type(exc).__name__}: {exc}"))
        finally:
            self.tasks.pop(sid, None)

    def closed(self, error: Exception) -> None:
        self.server.connections.discard(self)
        for task in list(self.tasks.values()):
            task.cancel()

    def shut_down(self) -> None:
        """Server stopping: tell clients their streams end (so they fail fast), then close."""
        for sid in list(self.tasks):
            self.write(Error(sid, ErrorCode.SHUTDOWN, "server is shutting down"))
        self.close()


class TcpRequestServer:
    """`RequestServer` over asyncio TCP. `address` is known after `start()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        advertise_host: str | None = None,
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
        dead_after_s: float = DEFAULT_SERVER_DEAD_AFTER_S,
    ) -> None:
        self.host = host
        self.port = port
        self.advertise_host = advertise_host
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.endpoints: dict[str, Handler] = {}
        self.connections: set[ServerConnection] = set()
        self.address = ""
        self._server: asyncio.base_events.Server | None = None

    def add_endpoint(self, name: str, handler: Handler) -> None:
        if not name:
            raise ConfigError("endpoint name must not be empty")
        self.endpoints[name] = handler

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: ServerConnection(self), self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            raise RequestPlaneError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        self.address = (
            f"tcp://{url_host(advertised_host(self.host, self.advertise_host))}:{self.port}"
        )
        log.info(
            "request plane listening %s",
            kv(address=self.address, endpoints=",".join(self.endpoints)),
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        tasks = [task for conn in self.connections for task in conn.tasks.values()]
        for conn in list(self.connections):
            conn.shut_down()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
