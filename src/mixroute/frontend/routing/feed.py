"""The task that feeds the routers: KV events and load metrics from the event plane, and
full dumps fetched from workers over the request plane when an indexer asks for one.

This is the only writer of the indexers' and load trackers' reported state; it runs on
the frontend's event loop, as do the route decisions that read it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import msgspec

from mixroute.errors import EventPlaneError, RequestPlaneError
from mixroute.frontend.routing.selector import WorkerSelector
from mixroute.logs import kv
from mixroute.protocol.messages import InstanceInfo, KvEventBatch, LoadMetrics, decoder
from mixroute.protocol.names import KV_EVENTS, LOAD_METRICS
from mixroute.runtime.events.base import EventSubscriber
from mixroute.runtime.requests.base import RequestClient

log = logging.getLogger(__name__)

KV_DUMP_ENDPOINT = "kv_dump"
"""Worker endpoint answering one `KvEventBatch`: a `cleared` event then `stored` events."""

_DUMP_RETRY_S = 1.0
_RESUBSCRIBE_S = 1.0

WorkerLookup = Callable[[int], "tuple[object, WorkerSelector, InstanceInfo] | None"]


class KvEventFeed:
    def __init__(self, namespace: str, subscriber: EventSubscriber, client: RequestClient, lookup: WorkerLookup) -> None:
        self.namespace = namespace
        self._subscriber = subscriber
        self._client = client
        self._lookup = lookup
        self._batch = decoder(KvEventBatch)
        self._metrics = decoder(LoadMetrics)
        self._dumps: dict[int, asyncio.Task[None]] = {}
        self.num_batches = 0
        self.num_dumps = 0

    def worker_added(self, selector: WorkerSelector, worker_id: int) -> None:
        """Discovery saw a new worker: fetch its dump (what it cached before we were watching)."""
        self._fetch_dumps(selector)

    async def run(self) -> None:
        """Apply events until cancelled. If the event plane fails, subscribe again: events
        missed meanwhile show up as gaps in event ids and are repaired by dumps."""
        prefix = f"namespace.{self.namespace}.component."
        while True:
            try:
                async for subject, payload in self._subscriber.subscribe(prefix):
                    self._on_message(subject, payload)
                return
            except EventPlaneError as exc:
                log.warning("event plane failed; subscribing again %s", kv(error=exc, retry_s=_RESUBSCRIBE_S))
                await asyncio.sleep(_RESUBSCRIBE_S)

    def _on_message(self, subject: str, payload: bytes) -> None:
        try:
            if subject.endswith(KV_EVENTS):
                self._on_kv_events(self._batch.decode(payload))
            elif subject.endswith(LOAD_METRICS):
                self._on_metrics(self._metrics.decode(payload))
        except msgspec.DecodeError as exc:
            log.warning("dropping a bad event %s", kv(subject=subject, error=exc))

    def _on_kv_events(self, batch: KvEventBatch) -> None:
        self.num_batches += 1
        found = self._lookup(batch.worker_id)
        if found is None:
            return  # not in discovery yet; its dump is fetched when it appears
        _, selector, _ = found
        if not selector.use_kv_events:
            return
        for event in batch.events:
            selector.indexer.apply_event(event)
        selector.mark_live(batch.worker_id)
        self._fetch_dumps(selector)

    def _on_metrics(self, metrics: LoadMetrics) -> None:
        found = self._lookup(metrics.worker_id)
        if found is not None:
            found[1].loads.update_metrics(metrics)

    def _fetch_dumps(self, selector: WorkerSelector) -> None:
        for worker_id in selector.indexer.take_dump_requests():
            if worker_id in self._dumps:
                continue
            task = asyncio.create_task(self._fetch_dump(selector, worker_id), name=f"kv-dump-{worker_id:x}")
            self._dumps[worker_id] = task
            task.add_done_callback(functools.partial(self._dump_done, worker_id))

    def _dump_done(self, worker_id: int, task: asyncio.Task[None]) -> None:
        self._dumps.pop(worker_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("kv dump task failed %s", kv(worker_id=f"{worker_id:x}", error=task.exception()))

    async def _fetch_dump(self, selector: WorkerSelector, worker_id: int) -> None:
        for attempt in range(3):
            found = self._lookup(worker_id)
            if found is None:
                return
            address = found[2].address
            try:
                batch: KvEventBatch | None = None
                async for payload in self._client.stream(address, KV_DUMP_ENDPOINT, b""):
                    batch = self._batch.decode(payload)
                if batch is None:
                    raise RequestPlaneError("empty kv_dump answer")
            except (RequestPlaneError, msgspec.DecodeError) as exc:
                log.warning("kv dump failed %s", kv(worker_id=f"{worker_id:x}", attempt=attempt, error=exc))
                await asyncio.sleep(_DUMP_RETRY_S)
                continue
            if self._lookup(worker_id) is None:
                return
            selector.indexer.apply_dump(worker_id, batch.events)
            self.num_dumps += 1
            log.info("kv dump applied %s", kv(worker_id=f"{worker_id:x}", num_events=len(batch.events)))
            self._fetch_dumps(selector)
            return
        selector.indexer.dump_failed(worker_id)
