"""Prometheus metrics of one router, in its own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.classification_seconds = Histogram(
            "mixroute_router_classification_seconds",
            "Time to compute a request's signals, by signal (embed_classify, pii, total)",
            ["signal"], registry=self.registry, buckets=_LATENCY_BUCKETS,
        )
        self.decisions = Counter(
            "mixroute_router_decisions_total", "Routing decisions by outcome, category and model",
            ["decision", "category", "model"], registry=self.registry,
        )
        self.pii_blocks = Counter(
            "mixroute_router_pii_blocks_total", "Requests blocked by a PII policy, by PII type",
            ["pii_type"], registry=self.registry,
        )
        self.jailbreak_blocks = Counter(
            "mixroute_router_jailbreak_blocks_total", "Requests blocked as jailbreaks", registry=self.registry,
        )
        self.cache_hits = Counter("mixroute_router_cache_hits_total", "Semantic cache hits", registry=self.registry)
        self.cache_misses = Counter(
            "mixroute_router_cache_misses_total", "Semantic cache misses", registry=self.registry
        )
        self.upstream_errors = Counter(
            "mixroute_router_upstream_errors_total", "Upstream calls that failed to connect or broke",
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "mixroute_router_config_reloads_total", "Config reloads by result", ["result"], registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
