"""Prometheus metrics of the OpenAI API (frontend or a worker's own HTTP port).

Each app gets its own registry (no process-global state), served at /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True, frozen=True)
class WorkerLoadSample:
    model: str
    pool: str
    worker_id: int
    active_blocks: int
    prefill_tokens: int
    num_requests: int


LoadSource = Callable[[], Iterable[WorkerLoadSample]]


class _LoadCollector(Collector):
    def __init__(self, prefix: str, source: LoadSource) -> None:
        self._prefix = prefix
        self._source = source

    def collect(self):  # type: ignore[no-untyped-def]
        labels = ["model", "pool", "worker_id"]
        blocks = GaugeMetricFamily(f"{self._prefix}_worker_active_blocks", "KV blocks in use per worker", labels=labels)
        prefill = GaugeMetricFamily(
            f"{self._prefix}_worker_prefill_tokens", "prompt tokens waiting for prefill per worker", labels=labels
        )
        requests = GaugeMetricFamily(
            f"{self._prefix}_worker_inflight_requests", "requests in flight per worker (this frontend)", labels=labels
        )
        for s in self._source():
            values = [s.model, s.pool, f"{s.worker_id:x}"]
            blocks.add_metric(values, s.active_blocks)
            prefill.add_metric(values, s.prefill_tokens)
            requests.add_metric(values, s.num_requests)
        yield blocks
        yield prefill
        yield requests


class _FeedCollector(Collector):
    def __init__(self, prefix: str, source: Callable[[], tuple[int, int]]) -> None:
        self._prefix = prefix
        self._source = source

    def collect(self):  # type: ignore[no-untyped-def]
        num_batches, num_dumps = self._source()
        yield CounterMetricFamily(f"{self._prefix}_kv_event_batches", "KV event batches received from workers", value=num_batches)
        yield CounterMetricFamily(f"{self._prefix}_kv_dumps", "KV dumps fetched from workers (after a gap or a new worker)", value=num_dumps)


class ApiMetrics:
    def __init__(self, prefix: str = "mixroute_frontend", registry: CollectorRegistry | None = None) -> None:
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{prefix}_requests", "HTTP requests by endpoint and status", ["model", "endpoint", "status"], registry=r
        )
        self.ttft = Histogram(
            f"{prefix}_time_to_first_token_seconds", "time to first token", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            f"{prefix}_inter_token_latency_seconds",
            "time between streamed tokens",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            f"{prefix}_request_duration_seconds", "whole request time", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter(f"{prefix}_prompt_tokens", "prompt tokens", ["model"], registry=r)
        self.cached_tokens = Counter(
            f"{prefix}_cached_tokens", "prompt tokens served from a worker's prefix cache", ["model"], registry=r
        )
        self.completion_tokens = Counter(f"{prefix}_completion_tokens", "generated tokens", ["model"], registry=r)
        self.requests_started = Counter(f"{prefix}_requests_started", "requests accepted for generation", ["model"], registry=r)
        self.requests_in_flight = Gauge(
            f"{prefix}_requests_in_flight", "generation requests being served now (the admission limit counts these)", registry=r
        )
        self.requests_rejected = Counter(
            f"{prefix}_requests_rejected", "requests refused before generation (413 too large, 429 too many)", ["status"], registry=r
        )
        self.migrations = Counter(
            f"{prefix}_request_migrations",
            "requests moved to another worker after theirs died mid-stream",
            ["model"],
            registry=r,
        )
        self.router_decisions = Counter(
            f"{prefix}_router_decisions", "worker choices", ["model", "pool", "worker_id"], registry=r
        )
        self.router_overlap_blocks = Histogram(
            f"{prefix}_router_overlap_blocks",
            "cached prompt blocks on the chosen worker, as the router saw them",
            ["model", "pool"],
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )

    def add_load_source(self, source: LoadSource) -> None:
        self.registry.register(_LoadCollector(self.prefix, source))

    def add_kv_feed_source(self, source: Callable[[], tuple[int, int]]) -> None:
        """`source` returns (KV event batches received, dumps fetched) so far."""
        self.registry.register(_FeedCollector(self.prefix, source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
