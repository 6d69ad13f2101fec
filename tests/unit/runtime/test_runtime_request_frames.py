from __future__ import annotations

import pytest

from mixroute.runtime.requests.frames import (
    HEADER,
    MAX_FRAME_BYTES,
    Cancel,
    Data,
    End,
    Error,
    Frame,
    FrameError,
    Hello,
    Ping,
    Request,
    decode_frames,
    encode_frame,
)

FRAMES: list[Frame] = [
    Request(1, "generate", b"\x00payload"),
    Data(1, b"x" * 1000),
    End(1),
    Error(2, "handler", "ValueError: boom"),
    Cancel(3),
    Ping(),
    Hello(1),
]


def test_roundtrip_all_kinds_in_one_buffer() -> None:
    wire = b"".join(encode_frame(f) for f in FRAMES)
    out: list[Frame] = []
    assert decode_frames(wire, out) == len(wire)
    assert out == FRAMES


def test_partial_frame_is_left_for_later() -> None:
    wire = encode_frame(Data(7, b"abc")) + encode_frame(End(7))
    for cut in range(len(wire)):
        out: list[Frame] = []
        consumed = decode_frames(wire[:cut], out)
        rest: list[Frame] = []
        consumed += decode_frames(wire[consumed:], rest)
        assert out + rest == [Data(7, b"abc"), End(7)]
        assert consumed == len(wire)


def test_garbage_body_is_a_frame_error() -> None:
    body = b"\x93\x07\x01\x02"  # unknown frame kind 7
    with pytest.raises(FrameError, match="malformed frame"):
        decode_frames(HEADER.pack(len(body)) + body, [])
    body = b"\xc1"  # not msgpack at all
    with pytest.raises(FrameError):
        decode_frames(HEADER.pack(len(body)) + body, [])


def test_wrong_field_type_is_a_frame_error() -> None:
    body = b"\x93\x01\xa1x\xa1y"  # Data with a str stream id
    with pytest.raises(FrameError):
        decode_frames(HEADER.pack(len(body)) + body, [])


def test_oversized_length_prefix_is_refused_before_buffering() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        decode_frames(HEADER.pack(MAX_FRAME_BYTES + 1) + b"abc", [])
