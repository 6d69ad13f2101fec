"""The slice of an OpenAI chat-completions request the router reads, parsed once.

The body is kept as a dict so fields the router does not know pass through untouched;
only `model`, `messages`, `stream` and `user` are validated here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mixroute.errors import BadRequestError, PayloadTooLargeError

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_MODEL_CHARS = 256


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    is_stream: bool
    user: str | None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]

    def texts(self, role: str | None = None) -> list[str]:
        """Text of each message (optionally only one role), in order; empty ones dropped."""
        out = []
        for message in self.messages:
            if role is not None and message.get("role") != role:
                continue
            text = message_text(message)
            if text:
                out.append(text)
        return out

    def last_user_text(self) -> str:
        users = self.texts("user")
        return users[-1] if users else ""


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a chat-completions body; raises BadRequestError saying what is wrong."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"request body is larger than {MAX_BODY_BYTES} bytes")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("`model` is required and must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        # It is echoed in a response header and in log lines (a lone surrogate is not
        # printable either).
        raise BadRequestError(
            f"`model` must be at most {MAX_MODEL_CHARS} printable characters", param="model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("`messages` is required and must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError(f"messages[{i}] must be an object with a string `role`", param="messages")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequestError(f"messages[{i}].content must be a string or an array of parts", param="messages")
        check_text(message_text(message), "messages", f"messages[{i}]")
    stream = body.get("stream")
    if stream is None:  # OpenAI's schema allows null
        stream = False
    if not isinstance(stream, bool):
        raise BadRequestError("`stream` must be a boolean", param="stream")
    user = body.get("user")
    return ChatRequest(body=body, model=model, is_stream=stream, user=user if isinstance(user, str) else None)


def parse_json(raw: bytes) -> Any:
    """JSON of a request body; BadRequestError for anything `json` cannot read, nesting too
    deep for it included."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("request body is nested too deeply") from None


def check_text(text: str, param: str, where: str | None = None) -> None:
    """BadRequestError for text that is not valid Unicode: a lone UTF-16 surrogate (a JSON
    escape like \\ud800 with no pair) cannot be tokenised, encoded or forwarded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(
            f"{where or '`' + param + '`'} contains an unpaired UTF-16 surrogate (invalid Unicode)", param=param
        ) from None
