"""The router's HTTP app: the proxy route plus models, classification, health and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from mixroute.errors import (
    ApiError,
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
)
from mixroute.router import responses
from mixroute.router.core import RouterCore
from mixroute.router.proxy import Proxy
from mixroute.router.request import check_text, parse_json


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code)


# The classify endpoints read one text, every signal over all of it (PII has no clip):
# 1 MB bounds the work one call can queue.
MAX_CLASSIFY_BYTES = 1024 * 1024


async def _text_field(request: Request) -> str:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_CLASSIFY_BYTES:
        raise PayloadTooLargeError(f"request body is larger than {MAX_CLASSIFY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_CLASSIFY_BYTES:
        raise PayloadTooLargeError(f"request body is larger than {MAX_CLASSIFY_BYTES} bytes")
    body: Any = parse_json(raw)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise BadRequestError("`text` is required and must be a non-empty string", param="text")
    check_text(text, "text")
    return text


CHAT_PATH = "/v1/chat/completions"


class RouterApp:
    """The ASGI app: `POST /v1/chat/completions`, the hot path, is served here directly;
    every other request goes to the FastAPI app. FastAPI's routing, dependency and
    middleware layers cost about a fifth of the router's own CPU per proxied request and
    add nothing to a route that reads raw bytes and returns a ready Response."""

    def __init__(self, api: FastAPI, proxy: Proxy) -> None:
        self.api = api
        self.proxy = proxy
        self.state = api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHAT_PATH or scope["method"] != "POST":
            await self.api(scope, receive, send)
            return
        request = StarletteRequest(scope, receive)

        async def client_gone() -> None:
            # After the body, the server's next message is the disconnect.
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            response = await self.proxy.chat_completions(await request.body(), request.headers, client_gone)
        except ApiError as exc:
            response = _error(exc)
        except Exception:
            # As Starlette's ServerErrorMiddleware does: an OpenAI-shaped 500 for the client,
            # then the exception goes on to the server, which logs it.
            await _error(ApiError("the router failed to handle this request"))(scope, receive, send)
            raise
        await response(scope, receive, send)


def build_app(core: RouterCore, proxy: Proxy) -> RouterApp:
    return RouterApp(_build_api(core, proxy), proxy)


def _build_api(core: RouterCore, proxy: Proxy) -> FastAPI:
    app = FastAPI(title="mixroute semantic router", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False  # "/v1/chat/completions/" is a 404, not an empty 307
    app.state.router_core = core

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        # Starlette still logs the exception; the client gets the OpenAI error shape.
        return _error(ApiError("the router failed to handle this request"))

    @app.exception_handler(404)
    async def not_found(request: Request, _: Exception) -> JSONResponse:
        return _error(NotFoundError(f"no route {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def wrong_method(request: Request, _: Exception) -> JSONResponse:
        return _error(MethodNotAllowedError(f"{request.url.path} does not take {request.method}"))

    @app.post(CHAT_PATH)  # served by RouterApp; kept so FastAPI answers other methods with 405
    async def chat_completions(request: Request) -> Response:
        return await proxy.chat_completions(await request.body(), request.headers)

    @app.get("/v1/models")
    async def models() -> Response:
        return Response(responses.models_json(core.config), media_type=responses.JSON_MEDIA_TYPE)

    @app.post("/api/v1/classify/intent")
    async def classify_intent(request: Request) -> dict[str, Any]:
        text = await _text_field(request)
        config = core.config
        category, confidence = await core.runner.classify_intent(
            text, config.classifier.refine_below(), config.classifier.category_refiner_weight
        )
        is_confident = confidence >= config.classifier.category_threshold
        entry = config.category(category) if is_confident else None
        scores = sorted(entry.model_scores, key=lambda s: -s.score) if entry else []
        return {
            "category": category, "confidence": confidence, "is_confident": is_confident,
            "selected_model": scores[0].model if scores else config.default_model,
        }

    @app.post("/api/v1/classify/pii")
    async def classify_pii(request: Request) -> dict[str, Any]:
        text = await _text_field(request)
        config = core.config
        if len(text) > config.pii.max_chars:  # what screening reads of a chat request
            raise PayloadTooLargeError(
                f"`text` holds {len(text)} characters; PII screening reads at most {config.pii.max_chars} "
                "(pii.max_chars in the router config)",
                param="text",
            )
        threshold = config.pii.threshold
        entities = [e for e in await core.runner.detect_pii(text) if e.score >= threshold]  # type: ignore[attr-defined]
        return {
            "has_pii": bool(entities),
            "types": sorted({e.entity_type for e in entities}),  # type: ignore[attr-defined]
            "entities": [
                {"type": e.entity_type, "start": e.start, "end": e.end, "score": round(float(e.score), 4)}  # type: ignore[attr-defined]
                for e in entities
            ],
        }

    @app.post("/api/v1/classify/security")
    async def classify_security(request: Request) -> dict[str, Any]:
        text = await _text_field(request)
        probability = await core.runner.classify_jailbreak(text, core.config.jailbreak.scan_sentences)
        threshold = core.runner.jailbreak_threshold(core.config)
        return {"is_jailbreak": probability >= threshold, "confidence": probability, "threshold": threshold,
                "type": "jailbreak" if probability >= threshold else "benign"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        return {"status": "ready", "config_version": core.source.version}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(core.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
