"""The router's core, shared by both front doors (HTTP proxy and Envoy ext_proc).

`RouterCore.handle` turns one raw request into an Outcome: a Reply the router writes
itself (bad request, PII / jailbreak block, cache hit) or an Upstream call to make.
After relaying an upstream answer, the front door hands it back with `remember` so the
semantic cache can store it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mixroute.errors import ApiError
from mixroute.logs import kv
from mixroute.router import responses
from mixroute.router.cache import (
    CachedAnswer,
    ExactEntry,
    SemanticCache,
    cache_scope,
    cache_tenant,
    exact_key,
    is_cacheable,
)
from mixroute.router.config import RouterConfig
from mixroute.router.decision import Block, Forward, decide
from mixroute.router.metrics import RouterMetrics
from mixroute.router.reload import ConfigSource
from mixroute.router.request import ChatRequest, parse_chat_request
from mixroute.router.signals import SignalResults, SignalRunner

log = logging.getLogger("mixroute.router")


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CacheTicket:
    """Where to store the answer of a forwarded request (config captured at decision time)."""

    scope: str
    vector: np.ndarray
    config: RouterConfig
    exact_key: str
    headers: dict[str, str]


@dataclass(slots=True)
class Upstream:
    forward: Forward
    body: bytes
    is_stream: bool
    ticket: CacheTicket | None
    timing: str = ""

    @property
    def headers(self) -> dict[str, str]:
        if not self.timing:
            return self.forward.headers
        return {**self.forward.headers, "server-timing": self.timing}


Outcome = Reply | Upstream


class RouterCore:
    def __init__(
        self, source: ConfigSource, runner: SignalRunner, metrics: RouterMetrics, cache: SemanticCache | None
    ) -> None:
        self.source = source
        self.runner = runner
        self.metrics = metrics
        self.cache = cache

    @property
    def config(self) -> RouterConfig:
        return self.source.current

    async def classify(self, request: ChatRequest, config: RouterConfig) -> SignalResults:
        start = time.perf_counter()
        signals = await self.runner.run(request, config)
        for name, ms in signals.latency_ms.items():
            self.metrics.classification_seconds.labels(name).observe(ms / 1e3)
        self.metrics.classification_seconds.labels("total").observe(time.perf_counter() - start)
        return signals

    async def handle(self, raw: bytes, headers: Mapping[str, str]) -> Outcome:
        """Decide one chat-completions request. `headers` keys must be lower-case.

        The time the router spent deciding goes out as `server-timing: router;dur=<ms>`."""
        start = time.perf_counter()
        outcome = await self._handle(raw, headers)
        timing = f"router;dur={(time.perf_counter() - start) * 1e3:.2f}"
        if isinstance(outcome, Reply):
            outcome.headers["server-timing"] = timing
        else:
            outcome.timing = timing
        return outcome

    async def _handle(self, raw: bytes, headers: Mapping[str, str]) -> Outcome:
        config = self.config
        try:
            request = parse_chat_request(raw)
        except ApiError as exc:
            return Reply(exc.status_code, responses.error_json(exc), responses.JSON_MEDIA_TYPE)
        start = time.perf_counter()
        use_cache = self.cache is not None and config.cache.enabled and is_cacheable(request)
        key = ""
        if use_cache:
            key = exact_key(request, cache_tenant(config.cache, request, headers), self.source.version)
            repeat = self.cache.exact.get(key, time.time())  # type: ignore[union-attr]
            if repeat is not None:
                return self._exact_hit(repeat, request, start)
        try:
            signals = await self.classify(request, config)
        except ApiError as exc:  # more text than screening reads
            return Reply(exc.status_code, responses.error_json(exc), responses.JSON_MEDIA_TYPE)
        decision = decide(config, request, signals)
        if isinstance(decision, Block):
            return self._block(decision, request, signals, start)
        ticket = None
        if use_cache and signals.embedding is not None:
            assert self.cache is not None
            scope = cache_scope(config.cache, request, headers, decision.body)
            hit = await self.cache.lookup(config.cache, scope, signals.embedding)
            if hit is not None:
                self.metrics.cache_hits.inc()
                return self._cache_hit(decision, hit.answer, hit.similarity, request, signals, start)
            self.metrics.cache_misses.inc()
            ticket = CacheTicket(scope, signals.embedding, config, key, decision.headers)
        self._record("forward", decision.route.category, decision.route.model, signals, start, decision)
        body = raw if decision.body is request.body else json.dumps(decision.body).encode()
        return Upstream(decision, body, request.is_stream, ticket)

    async def remember(self, ticket: CacheTicket, answer: CachedAnswer | None) -> None:
        if answer is None or self.cache is None:
            return
        await self.cache.save(ticket.config.cache, ticket.scope, ticket.vector, answer)
        expires_at = time.time() + ticket.config.cache.ttl_seconds
        self.cache.exact.put(ticket.exact_key, ExactEntry(answer, ticket.headers, expires_at))

    def _exact_hit(self, entry: ExactEntry, request: ChatRequest, start: float) -> Reply:
        self.metrics.cache_hits.inc()
        route_headers = entry.headers
        category, model = route_headers["x-vsr-selected-category"], route_headers["x-vsr-selected-model"]
        self.metrics.decisions.labels("cache_hit", category, self._model_label(model)).inc()
        if log.isEnabledFor(logging.INFO):
            ms = f"{(time.perf_counter() - start) * 1e3:.1f}"
            log.info("route %s", kv(decision="cache_hit", tier="exact", category=category, model=model, ms=ms))
        body, media_type = responses.completion(
            entry.answer.content, entry.answer.model, entry.answer.finish_reason, request.is_stream
        )
        return Reply(200, body, media_type, {**route_headers, "x-vsr-cache-hit": "true"})

    def _block(self, block: Block, request: ChatRequest, signals: SignalResults, start: float) -> Reply:
        if block.kind == "pii":
            for pii_type in block.pii_types:
                self.metrics.pii_blocks.labels(pii_type).inc()
        else:
            self.metrics.jailbreak_blocks.inc()
        self._record(f"block_{block.kind}", signals.category, block.model, signals, start)
        body, media_type = responses.completion(block.message, block.model, "content_filter", request.is_stream)
        return Reply(200, body, media_type, dict(block.headers))

    def _cache_hit(
        self, forward: Forward, answer: CachedAnswer, similarity: float,
        request: ChatRequest, signals: SignalResults, start: float,
    ) -> Reply:
        self._record("cache_hit", forward.route.category, forward.route.model, signals, start, similarity=similarity)
        body, media_type = responses.completion(
            answer.content, answer.model or forward.route.model, answer.finish_reason, request.is_stream
        )
        headers = {**forward.headers, "x-vsr-cache-hit": "true"}
        return Reply(200, body, media_type, headers)

    def _model_label(self, model: str) -> str:
        """A configured model's name, else "other": clients choose explicit names freely, and
        each label value is a time series kept for the process's life."""
        return model if model in self.config.models else "other"

    def _record(
        self, decision: str, category: str | None, model: str, signals: SignalResults, start: float,
        forward: Forward | None = None, similarity: float | None = None,
    ) -> None:
        self.metrics.decisions.labels(decision, category or "none", self._model_label(model)).inc()
        if not log.isEnabledFor(logging.INFO):
            return
        # PII types only, never the matched text.
        fields: dict[str, object] = {
            "decision": decision, "category": category or "none",
            "confidence": f"{signals.category_confidence:.2f}", "model": model,
            "pii": ",".join(signals.pii_types) or "none",
            "jailbreak": f"{signals.jailbreak_probability:.2f}",
        }
        if forward is not None:
            fields["reasoning"] = "on" if forward.route.use_reasoning else "off"
            fields["system_prompt"] = forward.route.injected_system_prompt
        if similarity is not None:
            fields["similarity"] = f"{similarity:.3f}"
        fields["ms"] = f"{(time.perf_counter() - start) * 1e3:.1f}"
        log.info("route %s", kv(**fields))
