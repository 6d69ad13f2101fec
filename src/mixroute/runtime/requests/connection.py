"""One request-plane TCP connection: framing, write batching, liveness, back-pressure.

Shared by both sides; `ServerConnection` and `ClientConnection` add what a frame means.

Writes are batched: frames written during one event-loop iteration are encoded into one
buffer and handed to the transport in one `write` at the end of the iteration, so a
handler yielding many frames costs one syscall, not one per frame, and nobody awaits
per frame.

Liveness: each side sends a Ping when it has sent nothing for `ping_interval_s`; a peer
heard nothing from for `dead_after_s` is declared gone (this catches half-open
connections, where the kernel never reports the peer's death). A connection whose own
loop stalled longer than that does not blame its peer for the silence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from mixroute.errors import PeerGoneError, RequestPlaneError
from mixroute.logs import kv
from mixroute.runtime.requests.frames import (
    Error,
    ErrorCode,
    Frame,
    FrameError,
    Ping,
    decode_frames,
    encode_frame_into,
)

log = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL_S = 0.5
DEFAULT_DEAD_AFTER_S = float(os.environ.get("MIXROUTE_PEER_TIMEOUT_S", "5.0"))
"""A client fails its streams when the server has been silent this long (env
MIXROUTE_PEER_TIMEOUT_S). This only catches half-open peers: a killed process closes its
socket and fails the streams at once. 5 s rather than 2 s because a worker whose event
loop is starved for a second or two by a forward pass on a loaded CPU is alive, and
dropping it would fail every answer in flight."""
DEFAULT_SERVER_DEAD_AFTER_S = max(10.0, DEFAULT_DEAD_AFTER_S)
"""A server gives a silent client longer: dropping it cancels all its requests, and a
client stalled by a busy machine is more likely than one half-open."""


class Connection(asyncio.Protocol):
    def __init__(
        self,
        *,
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
        dead_after_s: float = DEFAULT_DEAD_AFTER_S,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.is_closed = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self._wbuf = bytearray()
        self._flush_handle: asyncio.Handle | None = None
        self._rbuf = bytearray()
        self._last_recv = 0.0
        self._last_send = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_due = 0.0

    # ---- hooks for subclasses ----

    def frame_received(self, frame: Frame) -> None:
        raise NotImplementedError

    def closed(self, error: Exception) -> None:
        """Called once when the connection ends; `error` says why (for failing streams)."""

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peername = transport.get_extra_info("peername")
        if peername:
            self.peer = f"{peername[0]}:{peername[1]}"
        now = self.loop.time()
        self._last_recv = self._last_send = now
        self._schedule_tick(now)

    def data_received(self, data: bytes) -> None:
        self._last_recv = self.loop.time()
        frames: list[Frame] = []
        try:
            if self._rbuf:
                self._rbuf += data
                consumed = decode_frames(self._rbuf, frames)
                del self._rbuf[:consumed]
            else:
                consumed = decode_frames(data, frames)
                if consumed < len(data):
                    self._rbuf = bytearray(data[consumed:])
        except FrameError as exc:
            for frame in frames:
                self._dispatch(frame)
            self.protocol_error(str(exc))
            return
        for frame in frames:
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        if self.is_closed or type(frame) is Ping:
            return
        self.frame_received(frame)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to {self.peer} lost" + (f": {exc}" if exc else "")
        self._shutdown(PeerGoneError(reason))

    # ---- writing ----

    def write(self, frame: Frame) -> None:
        """Queues `frame`; it goes out at the end of this loop iteration with the others."""
        if self.is_closed:
            return
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)
        encode_frame_into(frame, self._wbuf)

    def _flush(self) -> None:
        self._flush_handle = None
        if self.is_closed or not self._wbuf or self.transport is None:
            return
        buf, self._wbuf = self._wbuf, bytearray()
        self.transport.write(buf)
        self._last_send = self.loop.time()

    # ---- ending ----

    def protocol_error(self, message: str) -> None:
        """The peer sent garbage: tell it why (stream 0 = the connection), then hang up."""
        log.warning("request plane protocol error %s", kv(peer=self.peer, error=message))
        self.write(Error(0, ErrorCode.PROTOCOL, message))
        self._flush()
        self._shutdown(RequestPlaneError(f"protocol error on connection to {self.peer}: {message}"))
        if self.transport is not None:
            self.transport.close()  # close() sends what is buffered first

    def abort(self, error: Exception) -> None:
        self._shutdown(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._flush()
        self._shutdown(PeerGoneError(f"connection to {self.peer} closed"))
        if self.transport is not None:
            self.transport.close()

    def _shutdown(self, error: Exception) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.can_write.set()  # wake writers waiting on back-pressure; they see is_closed
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.closed(error)

    # ---- liveness ----

    def _schedule_tick(self, now: float) -> None:
        self._tick_due = now + self.ping_interval_s
        self._tick_handle = self.loop.call_at(self._tick_due, self._tick)

    def _tick(self) -> None:
        if self.is_closed:
            return
        now = self.loop.time()
        if now - self._tick_due > self.ping_interval_s:
            # Our own loop was stalled: the peer's frames may be waiting unread. Give it time.
            self._last_recv = now
        silent_s = now - self._last_recv
        if silent_s > self.dead_after_s:
            log.warning(
                "request plane peer silent, closing %s",
                kv(peer=self.peer, silent_s=round(silent_s, 2)),
            )
            self.abort(
                PeerGoneError(
                    f"peer {self.peer} sent nothing for {silent_s:.1f}s (dead or unreachable)"
                )
            )
            return
        if now - self._last_send >= self.ping_interval_s * 0.9 and self._flush_handle is None:
            self.write(Ping())
        self._schedule_tick(now)
