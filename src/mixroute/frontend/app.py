"""The OpenAI-compatible HTTP API (Starlette): chat and text completions, streaming (SSE)
or not, /v1/models, /health, /metrics.

Starlette rather than FastAPI: the routes are few, bodies are validated by pydantic
explicitly, and skipping FastAPI's dependency machinery keeps added latency down.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mixroute.errors import ApiError, BadRequestError, UnavailableError
from mixroute.frontend.admission import AdmissionMiddleware, ApiLimits
from mixroute.frontend.backend import Backend, ModelEntry
from mixroute.frontend.completion import InflightRequests, TextDelta, check_length, generate_text
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.preprocess import (
    check_not_far_too_long,
    check_token_ids,
    prepare_prompt,
    sampling_params,
)
from mixroute.frontend.schemas import ChatCompletionRequest, CompletionRequest, usage_body
from mixroute.logs import kv
from mixroute.protocol.messages import GenerateRequest

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json", headers=headers)


def _error_response(exc: ApiError) -> Response:
    return _json_response(exc.body(), exc.status_code)


def _parse(body: bytes, kind: type[BaseModel]) -> Any:
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError:
        raise BadRequestError("the body is not valid UTF-8") from None
    if not isinstance(raw, dict):
        raise BadRequestError("the body must be a JSON object")
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequestError(f"{where}: {first['msg']}", param=where or None) from exc


def _text_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of text in the messages (text parts only: an image's URL is not prompt text)."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return total


class OpenAiApi:
    def __init__(self, backend: Backend, metrics: ApiMetrics, limits: ApiLimits) -> None:
        self.backend = backend
        self.metrics = metrics
        self.limits = limits
        self.inflight = InflightRequests()

    # ---- simple routes ----

    async def health(self, request: Request) -> Response:
        models = [e.name for e in self.backend.model_entries()]
        if not self.backend.is_ready():
            return _json_response({"status": "starting", "models": models}, 503)
        return _json_response({"status": "ok", "models": models})

    async def models(self, request: Request) -> Response:
        data = [
            {"id": e.name, "object": "model", "created": e.created, "owned_by": "mixroute", "max_model_len": e.max_model_len}
            for e in self.backend.model_entries()
        ]
        return _json_response({"object": "list", "data": data})

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # ---- completions ----

    async def chat(self, request: Request) -> Response:
        return await self._guarded(request, "chat", self._chat)

    async def completions(self, request: Request) -> Response:
        return await self._guarded(request, "completions", self._completions)

    async def _guarded(self, request: Request, endpoint: str, fn: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            response = await fn(request)
        except ApiError as exc:
            self.metrics.requests.labels("", endpoint, str(exc.status_code)).inc()
            return _error_response(exc)
        except Exception:
            log.exception("unexpected error in %s", endpoint)
            self.metrics.requests.labels("", endpoint, "500").inc()
            return _error_response(ApiError("internal error; see the server log"))
        return response

    async def _chat(self, request: Request) -> Response:
        body = _parse(await request.body(), ChatCompletionRequest)
        entry = self.backend.model(body.model)
        try:
            messages = [m.for_template() for m in body.messages]
        except ValueError as exc:
            raise BadRequestError(str(exc), param="messages") from exc
        check_not_far_too_long(_text_chars(messages), entry.tokenizer, entry.max_model_len, "messages")
        token_ids = await entry.tokenizer.render_chat(messages, body.tools)
        return await self._run(request, body, entry, token_ids, "chat", body.requested_max_tokens)

    async def _completions(self, request: Request) -> Response:
        body = _parse(await request.body(), CompletionRequest)
        entry = self.backend.model(body.model)
        if isinstance(body.prompt, str):
            check_not_far_too_long(len(body.prompt), entry.tokenizer, entry.max_model_len, "prompt")
            token_ids = await entry.tokenizer.encode(body.prompt)
        else:
            token_ids = list(body.prompt)
            check_token_ids(token_ids, entry.tokenizer.vocab_size, "prompt")
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        return await self._run(request, body, entry, token_ids, "completions", max_tokens)

    async def _run(
        self, request: Request, body: Any, entry: ModelEntry, token_ids: list[int], endpoint: str, max_tokens: int | None
    ) -> Response:
        max_tokens = check_length(
            entry, len(token_ids), max_tokens, "messages" if endpoint == "chat" else "prompt"
        )
        check_token_ids(body.stop_token_ids, entry.tokenizer.vocab_size, "stop_token_ids")
        request_id = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        sampling = sampling_params(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k if body.top_k and body.top_k > 0 else None,
            seed=body.seed,
            stop_token_ids=body.stop_token_ids,
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
        )
        prompt = prepare_prompt(token_ids, entry.block_size, body.cache_salt)
        gen = GenerateRequest(request_id=request_id, token_ids=token_ids, sampling=sampling, cache_salt=body.cache_salt)
        self.metrics.requests_started.labels(entry.name).inc()
        deltas = generate_text(
            self.backend, entry, gen, prompt, body.stop_strings(), self.metrics, self.limits, self.inflight
        )
        shape = _Shape(endpoint, request_id, entry.name)
        if body.stream:
            # Fail before the 200 is sent if the very first step fails (no worker, bad request).
            first = await _first_or_error(deltas)
            self.metrics.requests.labels(entry.name, endpoint, "200").inc()
            # The worker was chosen before the first frame, so the headers can name it.
            return StreamingResponse(
                _sse(shape, first, deltas, body.include_usage),
                media_type="text/event-stream",
                headers={**_SSE_HEADERS, **prompt.route.headers()},
            )
        result = await _collect_unless_disconnected(request, deltas)
        self.metrics.requests.labels(entry.name, endpoint, "200").inc()
        return _json_response(shape.whole(result), headers=prompt.route.headers())

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
        ]


def preload_lazy_imports() -> None:
    """Import now what the first request would otherwise import: anyio's asyncio backend
    (Starlette's StreamingResponse loads it on first use) and tokenizers' decoders
    (incremental detokenizing). Measured on the first streamed completion: ~35 ms of CPU
    more than the next ones, holding the GIL while a burst of first requests waits."""
    for name in ("anyio._backends._asyncio", "anyio.lowlevel", "anyio.streams.memory", "tokenizers.decoders"):
        with contextlib.suppress(ImportError):  # a warm-up only; the request path imports what it needs
            importlib.import_module(name)


def create_app(backend: Backend, metrics: ApiMetrics, *, lifespan: Any = None, limits: ApiLimits | None = None) -> Starlette:
    preload_lazy_imports()
    limits = limits if limits is not None else ApiLimits()
    api = OpenAiApi(backend, metrics, limits)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json_response({"error": {"message": f"no route {request.url.path}", "type": "not_found_error", "param": None, "code": 404}}, 404)

    async def bad_method(request: Request, exc: Exception) -> Response:
        return _json_response({"error": {"message": f"method {request.method} not allowed", "type": "invalid_request_error", "param": None, "code": 405}}, 405)

    app = Starlette(
        routes=api.routes(),
        exception_handlers={404: not_found, 405: bad_method},
        lifespan=lifespan,
        middleware=[Middleware(AdmissionMiddleware, limits=limits, metrics=metrics)],
    )
    app.state.inflight = api.inflight  # ended by a stopping frontend (main.py)
    return app


# ---- response shapes ----


class _Shape:
    def __init__(self, endpoint: str, request_id: str, model: str) -> None:
        self.is_chat = endpoint == "chat"
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.object = "chat.completion" if self.is_chat else "text_completion"

    def chunk(self, text: str | None, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
        if self.is_chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self, last: TextDelta) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.is_chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [], "usage": _usage(last)}

    def whole(self, result: tuple[str, TextDelta]) -> dict[str, Any]:
        text, last = result
        if self.is_chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": last.finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason}
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": _usage(last),
        }


def _usage(last: TextDelta) -> dict[str, Any]:
    u = last.usage
    if u is None:
        return usage_body(0, 0, 0)
    return usage_body(u.prompt_tokens, u.completion_tokens, u.cached_tokens)


async def _first_or_error(deltas: AsyncIterator[TextDelta]) -> TextDelta:
    try:
        return await deltas.__anext__()
    except StopAsyncIteration:
        raise UnavailableError("the request produced no output") from None
    except BaseException:
        await deltas.aclose()  # type: ignore[attr-defined]
        raise


async def _sse(shape: _Shape, first: TextDelta, deltas: AsyncIterator[TextDelta], include_usage: bool) -> AsyncIterator[bytes]:
    encode = _json.encode
    try:
        if shape.is_chat:
            yield b"data: " + encode(shape.chunk("", None, role=True)) + b"\n\n"
        delta: TextDelta | None = first
        while delta is not None:
            if delta.text or delta.finish_reason is not None:
                yield b"data: " + encode(shape.chunk(delta.text, delta.finish_reason)) + b"\n\n"
            if delta.finish_reason is not None:
                if include_usage:
                    yield b"data: " + encode(shape.usage_chunk(delta)) + b"\n\n"
                break
            delta = await anext(deltas, None)
    except ApiError as exc:
        # Headers are gone; report the error in-band as OpenAI does, then end the stream.
        yield b"data: " + encode(exc.body()) + b"\n\n"
    except Exception:
        log.exception("stream failed %s", kv(request_id=shape.id))
        yield b"data: " + encode(ApiError("internal error; see the server log").body()) + b"\n\n"
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
    yield b"data: [DONE]\n\n"


async def _collect(deltas: AsyncIterator[TextDelta]) -> tuple[str, TextDelta]:
    parts: list[str] = []
    try:
        async for delta in deltas:
            parts.append(delta.text)
            if delta.finish_reason is not None:
                return "".join(parts), delta
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
    raise UnavailableError("the request ended without a result")


async def _collect_unless_disconnected(request: Request, deltas: AsyncIterator[TextDelta]) -> tuple[str, TextDelta]:
    """Collect the whole answer, but stop (cancelling downstream) if the client goes away."""
    work = asyncio.ensure_future(_collect(deltas))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            log.info("client disconnected; request cancelled %s", kv(path=request.url.path))
            await asyncio.shield(asyncio.wait([work]))
    if work.cancelled():
        raise UnavailableError("client disconnected")
    return work.result()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
