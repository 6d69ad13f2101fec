"""Request plane interface: a server hosting named endpoints, a client streaming frames.

Many concurrent streams share one connection per peer. Each request is one payload;
each response is a stream of payloads ending when the handler's iterator ends.
Cancelling the client's iteration (or closing it) cancels the server handler. A dead
peer fails its in-flight streams with `PeerGoneError` promptly, never a hang.
Payloads are bytes; callers encode typed messages from `mixroute.protocol.messages`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

Handler = Callable[[bytes], AsyncIterator[bytes]]
"""An endpoint: given the request payload, yields response payloads."""


class RequestServer(Protocol):
    address: str
    """Where clients connect, e.g. tcp://127.0.0.1:40123 (known after `start`)."""

    def add_endpoint(self, name: str, handler: Handler) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RequestClient(Protocol):
    def stream(self, address: str, endpoint: str, payload: bytes) -> AsyncIterator[bytes]:
        """Send one request and iterate its response frames.

        Raises UnknownEndpointError, RemoteHandlerError, PeerGoneError."""

    async def close(self) -> None: ...


StartServer = Callable[[str], Awaitable[RequestServer]]
