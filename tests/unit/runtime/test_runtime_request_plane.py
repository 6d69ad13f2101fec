"""Request plane over real loopback TCP, client and server in this process."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from mixroute.errors import (
    PeerGoneError,
    RemoteHandlerError,
    RequestPlaneError,
    UnknownEndpointError,
)
from mixroute.runtime.requests import (
    TcpRequestClient,
    TcpRequestServer,
    parse_address,
    start_request_server,
)
from mixroute.runtime.requests.frames import (
    HEADER,
    Data,
    End,
    Error,
    Frame,
    Hello,
    Request,
    decode_frames,
    encode_frame,
)


async def count(payload: bytes) -> AsyncIterator[bytes]:
    """Yields `n` frames `<tag>:<i>` for payload `<tag>:<n>`."""
    tag, n = payload.decode().split(":")
    for i in range(int(n)):
        if i % 7 == 3:
            await asyncio.sleep(0)
        yield f"{tag}:{i}".encode()


async def fail_after_one(payload: bytes) -> AsyncIterator[bytes]:
    yield b"first"
    raise ValueError("disk on fire")


async def yields_str(payload: bytes) -> AsyncIterator[bytes]:
    yield "not bytes"  # type: ignore[misc]


@pytest.fixture
async def server() -> AsyncIterator[TcpRequestServer]:
    srv = await start_request_server(
        endpoints={"count": count, "fail": fail_after_one, "str": yields_str}
    )
    yield srv
    await srv.stop()


@pytest.fixture
async def client() -> AsyncIterator[TcpRequestClient]:
    c = TcpRequestClient()
    yield c
    await c.close()


async def collect(
    client: TcpRequestClient, address: str, endpoint: str, payload: bytes
) -> list[bytes]:
    return [item async for item in client.stream(address, endpoint, payload)]


async def test_thousand_concurrent_streams_share_one_connection(
    server: TcpRequestServer, client: TcpRequestClient
) -> None:
    async def one(i: int) -> None:
        n = i % 13 + 1
        assert await collect(client, server.address, "count", f"r{i}:{n}".encode()) == [
            f"r{i}:{k}".encode() for k in range(n)
        ]

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 30)
    assert client.num_connections() == 1
    assert len(server.connections) == 1


async def test_handler_error_and_unknown_endpoint_are_clear(
    server: TcpRequestServer, client: TcpRequestClient
) -> None:
    stream = client.stream(server.address, "fail", b"")
    assert await stream.__anext__() == b"first"
    with pytest.raises(RemoteHandlerError, match="ValueError: disk on fire"):
        await stream.__anext__()
    with pytest.raises(UnknownEndpointError, match="unknown endpoint 'nope'.*count"):
        await collect(client, server.address, "nope", b"")
    with pytest.raises(RemoteHandlerError, match="yielded str"):
        await collect(client, server.address, "str", b"")
    # The connection survived all of that.
    assert await collect(client, server.address, "count", b"a:2") == [b"a:0", b"a:1"]
    assert client.num_connections() == 1


async def test_cancelling_the_client_cancels_the_handler(client: TcpRequestClient) -> None:
    started, handler_cancelled = asyncio.Event(), asyncio.Event()

    async def forever(payload: bytes) -> AsyncIterator[bytes]:
        started.set()
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    async with TcpRequestServer() as srv:
        srv.add_endpoint("forever", forever)

        # 1) cancel the consuming task
        async def consume() -> None:
            async for _ in client.stream(srv.address, "forever", b""):
                pass

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(handler_cancelled.wait(), 2)
        # 2) close the iterator early
        started.clear()
        handler_cancelled.clear()
        stream = client.stream(srv.address, "forever", b"")
        assert await stream.__anext__() == b"tick"
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        await asyncio.wait_for(handler_cancelled.wait(), 2)
        await asyncio.sleep(0.05)
        assert not any(conn.tasks for conn in srv.connections)


async def test_server_stop_fails_streams_promptly(client: TcpRequestClient) -> None:
    async def slow(payload: bytes) -> AsyncIterator[bytes]:
        yield b"one"
        await asyncio.sleep(60)
        yield b"never"

    srv = await start_request_server(endpoints={"slow": slow})
    stream = client.stream(srv.address, "slow", b"")
    assert await stream.__anext__() == b"one"
    t0 = time.monotonic()
    await srv.stop()
    with pytest.raises(PeerGoneError):
        await asyncio.wait_for(stream.__anext__(), 2)
    assert time.monotonic() - t0 < 1.0


async def test_connect_refused_is_peer_gone(client: TcpRequestClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PeerGoneError, match="cannot connect"):
        await collect(client, f"tcp://127.0.0.1:{port}", "count", b"a:1")
    with pytest.raises(RequestPlaneError, match="expected tcp"):
        await collect(client, "http://127.0.0.1:1", "count", b"a:1")


async def test_reconnects_after_server_restart(client: TcpRequestClient) -> None:
    srv = await start_request_server(endpoints={"count": count})
    port = srv.port
    assert await collect(client, srv.address, "count", b"a:1") == [b"a:0"]
    await srv.stop()
    await asyncio.sleep(0.05)
    srv2 = await start_request_server("127.0.0.1", port, endpoints={"count": count})
    assert await collect(client, srv2.address, "count", b"b:1") == [b"b:0"]
    await srv2.stop()


async def test_half_open_peer_is_detected_by_silence() -> None:
    """A server that accepts but never answers (not even pings) is declared gone."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    client = TcpRequestClient(ping_interval_s=0.1, dead_after_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(PeerGoneError, match="sent nothing"):
        await asyncio.wait_for(collect(client, f"tcp://127.0.0.1:{port}", "count", b"a:1"), 5)
    assert time.monotonic() - t0 < 1.5
    await client.close()
    silent.close()


async def _raw_exchange(address: str, wire: bytes) -> list[Frame]:
    host, port = parse_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(wire)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    writer.close()
    frames: list[Frame] = []
    decode_frames(data, frames)
    return frames


async def test_malformed_frames_get_an_error_and_only_that_peer_is_dropped(
    server: TcpRequestServer, client: TcpRequestClient
) -> None:
    assert await collect(client, server.address, "count", b"ok:1") == [b"ok:0"]
    garbage = HEADER.pack(3) + b"\xc1\xc1\xc1"
    frames = await _raw_exchange(server.address, garbage)
    assert [type(f) for f in frames if not isinstance(f, Data)][-1] is Error
    error = frames[-1]
    assert isinstance(error, Error) and error.stream_id == 0 and error.code == "protocol"
    # A valid request followed by an absurd length prefix: that connection ends (its handler
    # is cancelled) with a clear error.
    frames = await _raw_exchange(
        server.address, encode_frame(Request(1, "count", b"z:2")) + HEADER.pack(1 << 31)
    )
    assert isinstance(frames[-1], Error) and "exceeds" in frames[-1].message
    # A client speaking another wire version is told so.
    frames = await _raw_exchange(server.address, encode_frame(Hello(99)))
    assert isinstance(frames[-1], Error) and "version 99 not supported" in frames[-1].message
    # A server-only frame kind from a client is refused too.
    frames = await _raw_exchange(server.address, encode_frame(End(5)))
    assert isinstance(frames[-1], Error) and "unexpected End" in frames[-1].message
    # The well-behaved client is unaffected.
    assert await collect(client, server.address, "count", b"ok:3") == [b"ok:0", b"ok:1", b"ok:2"]
    assert client.num_connections() == 1


async def test_dropping_an_unfinished_stream_cancels_the_handler(client: TcpRequestClient) -> None:
    handler_cancelled = asyncio.Event()

    async def forever(payload: bytes) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    async with TcpRequestServer() as srv:
        srv.add_endpoint("forever", forever)
        async for _ in client.stream(srv.address, "forever", b""):
            break  # no aclose: the stream object is dropped here
        await asyncio.wait_for(handler_cancelled.wait(), 2)


def test_request_plane_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with TcpRequestServer() as srv:
            srv.add_endpoint("count", count)
            srv.add_endpoint("fail", fail_after_one)
            client = TcpRequestClient()
            results = await asyncio.gather(
                *(collect(client, srv.address, "count", b"u:%d" % (i % 5 + 1)) for i in range(200))
            )
            assert all(r == [b"u:%d" % k for k in range(i % 5 + 1)] for i, r in enumerate(results))
            with pytest.raises(RemoteHandlerError):
                await collect(client, srv.address, "fail", b"")
            await client.close()

    uvloop.run(scenario())


async def test_large_payloads_both_ways(client: TcpRequestClient) -> None:
    async def mirror(payload: bytes) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield payload[::-1]

    big = bytes(range(256)) * (16 * 1024)  # 4 MiB
    async with TcpRequestServer() as srv:
        srv.add_endpoint("mirror", mirror)
        frames = await collect(client, srv.address, "mirror", big)
    assert len(frames) == 3 and all(f == big[::-1] for f in frames)


async def test_silent_client_is_dropped_and_its_handlers_cancelled() -> None:
    handler_cancelled = asyncio.Event()

    async def forever(payload: bytes) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    srv = TcpRequestServer(ping_interval_s=0.1, dead_after_s=0.5)
    srv.add_endpoint("forever", forever)
    await srv.start()
    host, port = parse_address(srv.address)
    # A raw client that sends one request and then never a byte again (not even a ping).
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_frame(Request(1, "forever", b"")))
    await writer.drain()
    await asyncio.wait_for(handler_cancelled.wait(), 3)
    assert not srv.connections
    writer.close()
    await srv.stop()
