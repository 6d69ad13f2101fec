"""A small OpenAI-compatible upstream for the router's integration tests, run as its own
process: `python upstream_app.py --port N`.

It answers chat completions with `echo: <last user text>` (JSON, or SSE one word per
chunk with `x-test-chunk-delay` seconds between chunks; a JSON answer after
`x-test-json-delay` seconds), and records every request it received (body + headers) for
the test to inspect at GET /_received, and every JSON request whose client went away
before its answer at GET /_abandoned (POST /_reset clears both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

RECEIVED: list[dict[str, Any]] = []
ABANDONED: list[dict[str, Any]] = []


def _last_user(messages: list[dict[str, Any]]) -> str:
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else ""


async def chat(request: Request) -> Response:
    body = await request.json()
    RECEIVED.append({"body": body, "headers": dict(request.headers)})
    words = ["echo:", *_last_user(body.get("messages", [])).split()]
    model = body.get("model", "")
    if not body.get("stream"):
        deadline = time.monotonic() + float(request.headers.get("x-test-json-delay", "0"))
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                ABANDONED.append({"body": body})
                return Response(status_code=499)
            await asyncio.sleep(0.05)
        return JSONResponse({
            "id": "chatcmpl-up", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": len(words) + 1},
        })
    delay = float(request.headers.get("x-test-chunk-delay", "0"))

    async def events():
        for i, word in enumerate(words):
            chunk = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word},
                                  "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if delay:
                await asyncio.sleep(delay)
        final = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0, "model": model,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(final)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def received(_: Request) -> Response:
    return JSONResponse(RECEIVED)


async def abandoned(_: Request) -> Response:
    return JSONResponse(ABANDONED)


async def reset(_: Request) -> Response:
    RECEIVED.clear()
    ABANDONED.clear()
    return JSONResponse({"ok": True})


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[
    Route("/v1/chat/completions", chat, methods=["POST"]),
    Route("/_received", received), Route("/_abandoned", abandoned), Route("/_reset", reset, methods=["POST"]),
    Route("/health", health),
])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
