"""Answers the router writes itself (blocks, cache hits, errors) as OpenAI JSON or SSE."""

from __future__ import annotations

import json
import time
import uuid

from mixroute.errors import ApiError
from mixroute.router.config import RouterConfig

SSE_MEDIA_TYPE = "text/event-stream"
JSON_MEDIA_TYPE = "application/json"


def _ids() -> tuple[str, int]:
    return f"chatcmpl-vsr-{uuid.uuid4().hex[:24]}", int(time.time())


def completion_json(content: str, model: str, finish_reason: str) -> bytes:
    completion_id, created = _ids()
    return json.dumps({
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }).encode()


def completion_sse(content: str, model: str, finish_reason: str) -> bytes:
    """A whole answer as chat.completion.chunk events: role, content, finish, [DONE]."""
    completion_id, created = _ids()

    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        payload = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    return (
        chunk({"role": "assistant", "content": ""}, None)
        + chunk({"content": content}, None)
        + chunk({}, finish_reason)
        + b"data: [DONE]\n\n"
    )


def completion(content: str, model: str, finish_reason: str, is_stream: bool) -> tuple[bytes, str]:
    if is_stream:
        return completion_sse(content, model, finish_reason), SSE_MEDIA_TYPE
    return completion_json(content, model, finish_reason), JSON_MEDIA_TYPE


def models_json(config: RouterConfig) -> bytes:
    """`/v1/models`: the auto names first, then the real models the router can send to."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "mixroute-router"}
            for name in config.auto_model_names]
    data += [{"id": name, "object": "model", "created": 0, "owned_by": "upstream"} for name in config.models]
    return json.dumps({"object": "list", "data": data}).encode()


def error_json(error: ApiError) -> bytes:
    return json.dumps(error.body()).encode()
