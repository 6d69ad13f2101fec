"""The planner's view of load: the latest `LoadMetrics` of each worker, per pool.

Workers publish `LoadMetrics` on `namespace.{ns}.component.{component}.load_metrics`
(component `prefill` for prefill workers, `backend` for decode and aggregated ones).
One task (`consume`) owns the table; the planner loop reads `snapshot` on the same event
loop, so no lock is needed. A worker that stops reporting for `stale_after_s` drops out,
which is how a stopped or dead worker leaves the sums.

With `model` set (one planner per model when several share a namespace), only workers
whose discovery record (`InstanceInfo.model`, fed by `consume_instances`) names that
model count; `LoadMetrics.worker_id` is the worker's instance id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec

from mixroute.planner.policy import Pool, PoolLoad
from mixroute.protocol import names
from mixroute.protocol.messages import InstanceInfo, LoadMetrics, decode_json, decoder
from mixroute.runtime.discovery.base import WatchEvent

log = logging.getLogger(__name__)

COMPONENT_OF_POOL: dict[Pool, str] = {
    "prefill": names.COMPONENT_PREFILL,
    "decode": names.COMPONENT_BACKEND,
}


@dataclass(slots=True)
class _Report:
    metrics: LoadMetrics
    at: float


class LoadTable:
    def __init__(
        self,
        *,
        stale_after_s: float = 15.0,
        model: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stale_after_s = stale_after_s
        self._model = model
        self._model_of: dict[int, str] = {}
        self._clock = clock
        self._reports: dict[Pool, dict[int, _Report]] = {"prefill": {}, "decode": {}}
        self._decoder = decoder(LoadMetrics)

    def record(self, pool: Pool, metrics: LoadMetrics) -> None:
        self._reports[pool][metrics.worker_id] = _Report(metrics, self._clock())

    def record_payload(self, subject: str, payload: bytes) -> None:
        """Decode one event-plane message; a malformed one is logged and dropped."""
        pool = pool_of_subject(subject)
        if pool is None:
            return
        try:
            metrics = self._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            log.warning("dropping malformed load metrics subject=%s error=%s", subject, exc)
            return
        self.record(pool, metrics)

    def snapshot(self, pool: Pool) -> PoolLoad:
        now = self._clock()
        reports = self._reports[pool]
        for worker_id in [w for w, r in reports.items() if now - r.at > self._stale_after_s]:
            del reports[worker_id]
        live = [
            r.metrics
            for w, r in reports.items()
            if self._model is None or self._model_of.get(w) == self._model
        ]
        return PoolLoad(
            num_workers=len(live),
            num_active_blocks=sum(m.num_active_blocks for m in live),
            num_total_blocks=sum(m.num_total_blocks for m in live),
            num_running=sum(m.num_running for m in live),
            num_waiting=sum(m.num_waiting for m in live),
            num_active_prefill_tokens=sum(m.num_active_prefill_tokens for m in live),
        )

    def record_instance(self, event: WatchEvent) -> None:
        """Track which model each worker serves, from a discovery watch of instance keys."""
        try:
            _, _, _, worker_id = names.parse_instance_key(event.key)
        except ValueError:
            return
        if event.kind == "delete" or event.value is None:
            self._model_of.pop(worker_id, None)
            return
        try:
            info = decode_json(event.value, InstanceInfo)
        except msgspec.DecodeError as exc:
            log.warning("dropping malformed instance record key=%s error=%s", event.key, exc)
            return
        self._model_of[worker_id] = info.model

    async def consume_instances(self, events: AsyncIterator[WatchEvent]) -> None:
        async for event in events:
            self.record_instance(event)

    async def consume(self, messages: AsyncIterator[tuple[str, bytes]]) -> None:
        """Feed the table from a subscription until it ends (run as one task)."""
        async for subject, payload in messages:
            self.record_payload(subject, payload)


def subject_prefix(namespace: str) -> str:
    """One subscription covers both pools: every component's subjects in the namespace."""
    return f"namespace.{namespace}.component."


def pool_of_subject(subject: str) -> Pool | None:
    parts = subject.rsplit(".", 2)
    if len(parts) != 3 or parts[2] != names.LOAD_METRICS or not parts[0].startswith("namespace."):
        return None
    for pool, component in COMPONENT_OF_POOL.items():
        if parts[0].endswith(".component") and parts[1] == component:
            return pool
    return None
