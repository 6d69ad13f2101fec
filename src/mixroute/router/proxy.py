"""Standalone proxy front door: relays a forwarded request to its upstream over httpx.

The relay talks to an httpx transport (connection pool) directly rather than through
`httpx.AsyncClient`: the client's auth, redirect, cookie and URL-merging layers do nothing
for a proxy and cost about a tenth of the router's own CPU per request.

Streams are relayed chunk by chunk as they arrive (no buffering); a stream recorder
assembles the answer on the side for the semantic cache. Upstream failures become an
OpenAI-shaped 503. A client disconnect closes the upstream response, which cancels the
generation upstream. A stopping router (`end_forwards`, after its drain period) ends the
forwards still waiting on their upstream: a 503, or an error chunk and `[DONE]` on a
stream that has begun.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from mixroute.errors import BadGatewayError, BadRequestError, UnavailableError
from mixroute.logs import kv
from mixroute.router import responses
from mixroute.router.cache import StreamRecorder, answer_from_json
from mixroute.router.core import Reply, RouterCore, Upstream

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Not forwarded: hop-by-hop headers, and the ones httpx recomputes for the new body.
_DROP_REQUEST = {
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-connection", "accept-encoding",
}
_KEEP_RESPONSE = {"content-type", "cache-control", "x-request-id"}


def reply_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)


def _upstream_headers(client_headers: Mapping[str, str]) -> dict[str, str]:
    headers = {k: v for k, v in client_headers.items() if k.lower() not in _DROP_REQUEST}
    headers["accept-encoding"] = "identity"  # the recorder reads the bytes it relays
    headers["content-type"] = "application/json"
    return headers


def _unavailable(endpoint: str, model: str, exc: Exception) -> Response:
    error = UnavailableError(f"upstream {endpoint} for model {model!r} is unavailable ({type(exc).__name__})")
    return Response(responses.error_json(error), status_code=503, media_type=responses.JSON_MEDIA_TYPE)


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def _upstream_error(status: int, body: bytes, model: str, headers: dict[str, str]) -> Response:
    """An upstream error that is not JSON (a bare 'Internal Server Error' page), in the
    OpenAI shape: 5xx as 502 (the router itself did not fail), 4xx kept."""
    snippet = body[:200].decode("utf-8", "replace").strip()
    message = f"upstream for model {model!r} answered HTTP {status}: {snippet or '(empty body)'}"
    error = BadGatewayError(message) if status >= 500 else BadRequestError(message)
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return Response(responses.error_json(error), status_code=error.status_code if status >= 500 else status,
                    media_type=responses.JSON_MEDIA_TYPE, headers=headers)


def _shutting_down() -> UnavailableError:
    return UnavailableError("the router is shutting down; try again", code="shutting_down")


class Proxy:
    def __init__(self, core: RouterCore, transport: httpx.AsyncBaseTransport) -> None:
        self.core = core
        self.transport = transport
        self._waiting: set[asyncio.Task[object]] = set()
        """Tasks awaiting an upstream (a response, or a stream's next chunk) right now."""
        self.ended = False

    def end_forwards(self) -> int:
        """End every forward in progress, and any that starts from now on; returns how many
        were waiting on their upstream."""
        self.ended = True
        waiting = list(self._waiting)
        for task in waiting:
            task.cancel()
        return len(waiting)

    async def _upstream(self, step: Awaitable[_T]) -> _T:
        """Await `step` (upstream I/O) so that `end_forwards` can interrupt it: then raises
        the 503 of a stopping router instead of being cancelled."""
        task = asyncio.current_task()
        assert task is not None
        if self.ended:
            close = getattr(step, "close", None)
            if close is not None:
                close()  # not awaited: say so to the coroutine, not to the warnings log
            raise _shutting_down()
        cancelling = task.cancelling()
        self._waiting.add(task)  # type: ignore[arg-type]
        try:
            return await step
        except asyncio.CancelledError:
            if self.ended and task.uncancel() <= cancelling:
                raise _shutting_down() from None
            raise
        finally:
            self._waiting.discard(task)  # type: ignore[arg-type]

    async def chat_completions(
        self, raw: bytes, client_headers: Mapping[str, str],
        client_gone: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        """`client_gone` returns when the client disconnects: a JSON answer still being
        generated is then abandoned, which closes the upstream connection and so cancels
        the generation (streams are cancelled by the relay itself)."""
        lowered = {k.lower(): v for k, v in client_headers.items()}
        outcome = await self.core.handle(raw, lowered)
        if isinstance(outcome, Reply):
            return reply_response(outcome)
        if client_gone is None or outcome.is_stream:
            return await self._forward(outcome, lowered)
        # One watcher task (the hot path pays for one task, not two and a wait): on a
        # disconnect it cancels this request's task, which closes the upstream response.
        this = asyncio.current_task()
        assert this is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            await client_gone()
            gone = True
            this.cancel()

        watcher = asyncio.create_task(watch())
        try:
            return await self._forward(outcome, lowered)
        except asyncio.CancelledError:
            if not gone:
                raise
            this.uncancel()
            log.info("client disconnected; upstream request cancelled %s", kv(model=outcome.forward.route.model))
            return Response(status_code=499)  # nobody reads it
        finally:
            watcher.cancel()

    async def _forward(self, upstream: Upstream, client_headers: Mapping[str, str]) -> Response:
        route = upstream.forward.route
        url = f"{upstream.forward.endpoint}/v1/chat/completions"
        timeout = self.core.config.upstream_timeout_s
        request = httpx.Request(
            "POST", url, content=upstream.body, headers=_upstream_headers(client_headers),
            extensions={"timeout": {"connect": 5.0, "read": timeout, "write": timeout, "pool": timeout}},
        )
        try:
            response = await self._upstream(self.transport.handle_async_request(request))
            response.request = request
        except httpx.HTTPError as exc:
            self.core.metrics.upstream_errors.inc()
            log.warning("upstream unavailable %s", kv(endpoint=upstream.forward.endpoint, model=route.model,
                                                      error=type(exc).__name__))
            return _unavailable(upstream.forward.endpoint, route.model, exc)
        headers = {k: v for k, v in response.headers.items() if k.lower() in _KEEP_RESPONSE}
        headers.update(upstream.headers)
        is_sse = response.headers.get("content-type", "").startswith(responses.SSE_MEDIA_TYPE)
        if not is_sse:
            try:
                body = await self._upstream(response.aread())
            except httpx.HTTPError as exc:
                self.core.metrics.upstream_errors.inc()
                return _unavailable(upstream.forward.endpoint, route.model, exc)
            finally:
                await response.aclose()
            if response.status_code == 200 and upstream.ticket is not None:
                await self.core.remember(upstream.ticket, answer_from_json(body))
            if response.status_code >= 400 and not _is_json(body):
                return _upstream_error(response.status_code, body, route.model, headers)
            return Response(body, status_code=response.status_code, headers=headers)
        return StreamingResponse(
            self._relay(response, upstream), status_code=response.status_code, headers=headers,
            background=BackgroundTask(response.aclose),
        )

    async def _relay(self, response: httpx.Response, upstream: Upstream) -> AsyncIterator[bytes]:
        recorder = StreamRecorder() if upstream.ticket is not None and response.status_code == 200 else None
        chunks = response.aiter_raw()
        try:
            while (chunk := await self._upstream(anext(chunks, None))) is not None:
                if recorder is not None:
                    recorder.feed(chunk)
                yield chunk
        except UnavailableError as exc:  # the router is stopping: the stream is cut short
            log.warning("stream ended: the router is stopping %s", kv(model=upstream.forward.route.model))
            yield b"data: " + responses.error_json(exc) + b"\n\ndata: [DONE]\n\n"
            return
        except httpx.HTTPError as exc:
            # Headers are already sent: end the stream with an error event the client can see.
            self.core.metrics.upstream_errors.inc()
            log.warning("upstream stream broke %s", kv(model=upstream.forward.route.model, error=type(exc).__name__))
            error = UnavailableError(f"upstream stream broke ({type(exc).__name__})")
            yield b"data: " + responses.error_json(error) + b"\n\ndata: [DONE]\n\n"
            return
        finally:
            await response.aclose()
        if recorder is not None and upstream.ticket is not None:
            await self.core.remember(upstream.ticket, recorder.answer())
