"""Admission limits of the OpenAI API: request body size (413) and requests in flight
(429), as an ASGI middleware around the generation routes, plus the per-request timeouts
that `generate_text` applies.

The in-flight count is held for the whole ASGI call, so a streamed answer counts until
its last byte is sent (or its client leaves), not just until its headers are out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec

from mixroute.errors import ApiError, OverloadedError, PayloadTooLargeError
from mixroute.frontend.metrics import ApiMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_REQUESTS = 512
DEFAULT_REQUEST_IDLE_TIMEOUT_S = 120.0
DEFAULT_DRAIN_TIMEOUT_S = 10.0
"""Seconds a stopping frontend lets requests finish; under `mixroute up`'s 15 s stop timeout."""
RETRY_AFTER_S = 1

LIMITED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(slots=True, frozen=True)
class ApiLimits:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """Larger bodies get 413 (checked from Content-Length, and while reading)."""
    max_inflight_requests: int = DEFAULT_MAX_INFLIGHT_REQUESTS
    """Generation requests beyond this many at once get 429 with Retry-After; 0: no limit."""
    request_idle_timeout_s: float = DEFAULT_REQUEST_IDLE_TIMEOUT_S
    """A worker that sends nothing for this long fails the request (503); 0: no limit."""
    request_timeout_s: float = 0.0
    """A request still running after this long fails (503); 0: no limit."""


class AdmissionMiddleware:
    """Answers 413/429 for generation routes before the app sees them."""

    def __init__(self, app: Any, limits: ApiLimits, metrics: ApiMetrics) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics
        self.num_inflight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in LIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        limits = self.limits
        length = _content_length(scope)
        if length is not None and length > limits.max_request_bytes:
            await self._reject(scope, send, _too_large(limits))
            return
        if limits.max_inflight_requests and self.num_inflight >= limits.max_inflight_requests:
            error = OverloadedError(
                f"the server has {self.num_inflight} requests in flight (its limit); retry after {RETRY_AFTER_S} s",
                code="too_many_requests",
            )
            await self._reject(scope, send, error, [(b"retry-after", str(RETRY_AFTER_S).encode())])
            return
        self.num_inflight += 1
        self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, _capped(receive, limits), send)
        finally:
            self.num_inflight -= 1
            self.metrics.requests_in_flight.dec()

    async def _reject(self, scope: dict[str, Any], send: Any, error: ApiError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.metrics.requests_rejected.labels(str(error.status_code)).inc()
        body = msgspec.json.encode(error.body())
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limits: ApiLimits) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is larger than this server's limit of {limits.max_request_bytes} bytes",
        code="request_too_large",
    )


def _capped(receive: Any, limits: ApiLimits) -> Any:
    """`receive` that fails with 413 once the body passes the limit (a chunked body has
    no Content-Length to check up front). The app's error handler answers it."""
    received = 0

    async def capped_receive() -> dict[str, Any]:
        nonlocal received
        message: dict[str, Any] = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limits.max_request_bytes:
                raise _too_large(limits)
        return message

    return capped_receive
