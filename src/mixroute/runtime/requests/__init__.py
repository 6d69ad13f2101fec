"""Request plane: named streaming endpoints over asyncio TCP. See README.md in runtime/.

server = await start_request_server("127.0.0.1", 0, endpoints={"generate": handler})
client = open_request_client()
async for payload in client.stream(server.address, "generate", request_bytes): ...
"""

from __future__ import annotations

from collections.abc import Mapping

from mixroute.runtime.requests.base import Handler, RequestClient, RequestServer, StartServer
from mixroute.runtime.requests.client import ResponseStream, TcpRequestClient, parse_address
from mixroute.runtime.requests.connection import DEFAULT_DEAD_AFTER_S, DEFAULT_PING_INTERVAL_S
from mixroute.runtime.requests.server import TcpRequestServer

__all__ = [
    "DEFAULT_DEAD_AFTER_S",
    "DEFAULT_PING_INTERVAL_S",
    "Handler",
    "RequestClient",
    "RequestServer",
    "ResponseStream",
    "StartServer",
    "TcpRequestClient",
    "TcpRequestServer",
    "open_request_client",
    "parse_address",
    "start_request_server",
]


async def start_request_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    advertise_host: str | None = None,
    endpoints: Mapping[str, Handler] | None = None,
) -> TcpRequestServer:
    """Creates, fills and starts a server; `server.address` is then where clients connect."""
    server = TcpRequestServer(host, port, advertise_host=advertise_host)
    for name, handler in (endpoints or {}).items():
        server.add_endpoint(name, handler)
    await server.start()
    return server


def open_request_client() -> TcpRequestClient:
    return TcpRequestClient()
