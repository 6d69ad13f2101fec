"""The frontend's backend: choose a worker, stream the request over the request plane,
keep the router's load accounting in step with the stream.

A worker that dies before sending any token is retried once on another worker (the
request is idempotent until output has been sent to the client). One that dies after
sending tokens is migrated: the request continues on another worker from the tokens
already sent (`migration.py`), up to `migration_limit` times per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from mixroute.errors import PeerGoneError, UnavailableError
from mixroute.frontend.backend import ModelEntry
from mixroute.frontend.disagg import DisaggSettings, generate_disaggregated, wants_disagg
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.migration import continuation, finished_frame, restate_usage
from mixroute.frontend.models import ModelPool, ModelRegistry
from mixroute.frontend.preprocess import PreparedPrompt
from mixroute.frontend.routing.selector import WorkerSelector
from mixroute.logs import kv
from mixroute.protocol.messages import GenerateFrame, GenerateRequest, InstanceInfo, decoder, encode
from mixroute.protocol.names import ENDPOINT_GENERATE
from mixroute.runtime.requests.base import RequestClient

log = logging.getLogger(__name__)

_frame_decoder = decoder(GenerateFrame)

DEFAULT_MIGRATION_LIMIT = 3


def decode_frame(payload: bytes) -> GenerateFrame:
    return _frame_decoder.decode(payload)


class RoutedBackend:
    def __init__(
        self,
        registry: ModelRegistry,
        client: RequestClient,
        metrics: ApiMetrics,
        disagg: DisaggSettings,
        migration_limit: int = DEFAULT_MIGRATION_LIMIT,
    ) -> None:
        self.registry = registry
        self.client = client
        self.metrics = metrics
        self.disagg = disagg
        self.migration_limit = migration_limit
        """How many times one request may move to another worker after its worker died mid-stream."""

    def model_entries(self) -> list[ModelEntry]:
        return self.registry.entries()

    def model(self, name: str) -> ModelEntry:
        return self.registry.pool(name).entry

    def is_ready(self) -> bool:
        return self.registry.ready.is_set()

    def generate(self, model: ModelEntry, request: GenerateRequest, prompt: PreparedPrompt) -> AsyncIterator[GenerateFrame]:
        # Hands out the inner generator itself: a wrapping generator would cost every
        # frame one more hop. Closing it cancels the request as before.
        pool = self.registry.pool(model.name)
        if wants_disagg(pool, len(prompt.token_ids), self.disagg):
            return generate_disaggregated(self, pool, request, prompt)
        return self.generate_on(pool, pool.decode, pool.workers, request, prompt)

    async def generate_on(
        self,
        pool: ModelPool,
        selector: WorkerSelector,
        workers: dict[int, InstanceInfo],
        request: GenerateRequest,
        prompt: PreparedPrompt,
    ) -> AsyncIterator[GenerateFrame]:
        """Route `request` to one of `workers` with `selector` and stream its frames."""
        excluded: set[int] = set()
        generated: list[int] = []
        """Token ids already passed on to the caller (over every worker this request ran on)."""
        current = request
        retries_left = 1
        migrations_left = 0 if request.prefill_only else self.migration_limit
        while True:
            candidates = [w for w in workers if w not in excluded]
            if not candidates:
                raise UnavailableError(f"no {selector.name} worker is available for {pool.entry.name}")
            payload = encode(current)  # before select: a failure here must not leave load counted
            started = time.perf_counter()
            decision = selector.select(request.request_id, candidates, prompt)
            worker_id = decision.worker_id
            prompt.route.record(selector.name, worker_id, (time.perf_counter() - started) * 1e6, decision.overlap_blocks)
            self.metrics.router_decisions.labels(pool.entry.name, selector.name, f"{worker_id:x}").inc()
            self.metrics.router_overlap_blocks.labels(pool.entry.name, selector.name).observe(decision.overlap_blocks)
            info = workers[worker_id]
            got_output = False
            num_before = len(generated)
            stream = self.client.stream(info.address, ENDPOINT_GENERATE, payload)
            try:
                async for payload in stream:
                    frame = decode_frame(payload)
                    if not got_output and (frame.token_ids or frame.finish_reason is not None):
                        got_output = True
                        selector.first_token(request.request_id)
                    if num_before:
                        frame = restate_usage(frame, len(request.token_ids), num_before)
                    generated.extend(frame.token_ids)
                    yield frame
                return
            except PeerGoneError as exc:
                excluded.add(worker_id)
                if not got_output and not generated:
                    if retries_left == 0:
                        raise
                    retries_left -= 1
                    log.warning("worker gone before output; retrying %s", kv(request_id=request.request_id, worker_id=f"{worker_id:x}", error=exc))
                    continue
                if migrations_left == 0:
                    raise
                migrations_left -= 1
                next_request = continuation(request, generated)
                if next_request is None:
                    yield finished_frame(request, generated)
                    return
                current = next_request
                self.metrics.migrations.labels(pool.entry.name).inc()
                log.warning(
                    "worker gone mid-stream; migrating %s",
                    kv(request_id=request.request_id, worker_id=f"{worker_id:x}", generated=len(generated), error=exc),
                )
            finally:
                selector.finish(request.request_id)
                await stream.aclose()  # type: ignore[attr-defined]
