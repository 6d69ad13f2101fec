from __future__ import annotations

import pytest

from mixroute.errors import BadRequestError
from mixroute.router.request import parse_chat_request


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "not valid JSON"),
    (b"[1]", "must be a JSON object"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "`model` is required"),
    (b'{"model": "MoM"}', "`messages` is required"),
    (b'{"model": "MoM", "messages": []}', "`messages` is required"),
    (b'{"model": "MoM", "messages": ["hi"]}', "messages[0] must be an object"),
    (b'{"model": "MoM", "messages": [{"role": "user", "content": 3}]}', "messages[0].content"),
    (b'{"model": "MoM", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "`stream`"),
])
def test_bad_requests_say_what_is_wrong(raw, message):
    with pytest.raises(BadRequestError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        parse_chat_request(raw)
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_texts_include_content_parts_and_history():
    req = parse_chat_request(b'{"model": "m", "user": "u1", "messages": ['
                             b'{"role": "system", "content": "sys"},'
                             b'{"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "image_url"}]},'
                             b'{"role": "assistant", "content": null},'
                             b'{"role": "user", "content": "last"}]}')
    assert req.texts() == ["sys", "first", "last"]
    assert req.last_user_text() == "last" and req.user == "u1" and not req.is_stream
