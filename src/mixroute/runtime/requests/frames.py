"""Request-plane wire format: length-prefixed msgpack frames.

Each frame on the TCP stream is a 4-byte big-endian body length followed by the body, a
msgpack array whose first element is the frame kind (a tagged msgspec struct):

    Request(0, stream_id, endpoint, payload)   client -> server: open a stream
    Data(1, stream_id, payload)                server -> client: one response payload
    End(2, stream_id)                          server -> client: the stream is complete
    Error(3, stream_id, code, message)         either way: the stream (or, with stream id 0,
                                               the connection) failed; codes in ErrorCode
    Cancel(4, stream_id)                       client -> server: stop the handler
    Ping(5)                                    either way, when idle: proves the peer is alive
    Hello(6, version)                          client -> server, first frame: wire version;
                                               a server that cannot speak it answers
                                               Error(0, "protocol") and hangs up

Stream ids are chosen by the client, unique per connection, never 0.
"""

from __future__ import annotations

import struct

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 512 * 1024 * 1024
"""Larger frames are refused as malformed (protects against a garbage length prefix)."""

HEADER = struct.Struct(">I")
_COPY_BELOW = 64 * 1024
"""Frames smaller than this are sliced (a copy) before decoding; larger ones are decoded
from a memoryview so a multi-MB KV chunk is not copied twice."""


class ErrorCode:
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    HANDLER = "handler"
    PROTOCOL = "protocol"
    SHUTDOWN = "shutdown"


class Request(msgspec.Struct, array_like=True, tag=0):
    stream_id: int
    endpoint: str
    payload: bytes


class Data(msgspec.Struct, array_like=True, tag=1):
    stream_id: int
    payload: bytes


class End(msgspec.Struct, array_like=True, tag=2):
    stream_id: int


class Error(msgspec.Struct, array_like=True, tag=3):
    stream_id: int
    code: str
    message: str


class Cancel(msgspec.Struct, array_like=True, tag=4):
    stream_id: int


class Ping(msgspec.Struct, array_like=True, tag=5):
    pass


class Hello(msgspec.Struct, array_like=True, tag=6):
    version: int


Frame = Request | Data | End | Error | Cancel | Ping | Hello

encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(Frame)


class FrameError(ValueError):
    """The byte stream is not a valid frame sequence (the connection cannot continue)."""


def encode_frame_into(frame: Frame, buf: bytearray) -> None:
    """Appends the length prefix and body of `frame` to `buf` (no intermediate copy)."""
    offset = len(buf)
    buf.extend(b"\0\0\0\0")
    encoder.encode_into(frame, buf, offset + 4)
    HEADER.pack_into(buf, offset, len(buf) - offset - 4)


def encode_frame(frame: Frame) -> bytes:
    buf = bytearray()
    encode_frame_into(frame, buf)
    return bytes(buf)


def decode_frames(buf: bytes | bytearray, frames: list[Frame]) -> int:
    """Decodes the complete frames at the start of `buf` into `frames`; returns the number
    of bytes consumed (a trailing partial frame is left for the next call)."""
    pos, size = 0, len(buf)
    while size - pos >= 4:
        (length,) = HEADER.unpack_from(buf, pos)
        if length > MAX_FRAME_BYTES:
            raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES} byte limit")
        end = pos + 4 + length
        if end > size:
            break
        try:
            if length < _COPY_BELOW:
                frames.append(decoder.decode(buf[pos + 4 : end]))  # copying is cheaper here
            else:
                with memoryview(buf) as view:
                    frames.append(decoder.decode(view[pos + 4 : end]))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FrameError(f"malformed frame: {exc}") from None
        pos = end
    return pos
