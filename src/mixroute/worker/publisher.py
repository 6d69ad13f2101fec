"""Publishing a worker's KV events and load metrics on the event plane.

KV events go out as soon as the engine produces them, batched per wake-up, in event-id
order. Load metrics are sampled every `interval_s` and sent when they change (and at
least every `heartbeat_s`, so a router that just started learns the load quickly).
"""

from __future__ import annotations

import asyncio
import logging
import time

from mixroute.engine.api import Engine
from mixroute.errors import EventPlaneError
from mixroute.logs import kv
from mixroute.protocol.messages import KvEventBatch, encode
from mixroute.protocol.names import KV_EVENTS, LOAD_METRICS, event_subject
from mixroute.runtime.events.base import EventPublisher

log = logging.getLogger(__name__)


class WorkerPublisher:
    def __init__(
        self,
        engine: Engine,
        publisher: EventPublisher,
        *,
        namespace: str,
        component: str,
        worker_id: int,
        interval_s: float = 0.1,
        heartbeat_s: float = 2.0,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.worker_id = worker_id
        self.kv_subject = event_subject(namespace, component, KV_EVENTS)
        self.load_subject = event_subject(namespace, component, LOAD_METRICS)
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self._tasks: list[asyncio.Task[None]] = []
        self.num_events = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._kv_events(), name=f"kv-events-{self.worker_id:x}"),
            asyncio.create_task(self._load_metrics(), name=f"load-metrics-{self.worker_id:x}"),
        ]

    def failure(self) -> str | None:
        """Why publishing stopped (a task ended on its own), or None while it runs."""
        for task in self._tasks:
            if task.done():
                error = None if task.cancelled() else task.exception()
                return f"{task.get_name()} ended: {error!r}" if error else f"{task.get_name()} ended"
        return None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # A task that died already re-raises its error here; it was reported by failure().
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _kv_events(self) -> None:
        while True:
            events = await self.engine.next_kv_events()
            if not events:
                continue
            try:
                await self.publisher.publish(self.kv_subject, encode(KvEventBatch(worker_id=self.worker_id, events=events)))
                self.num_events += len(events)
            except EventPlaneError as exc:
                # Routers see the gap in event ids and ask for a dump; nothing to repair here.
                log.warning("kv events not published %s", kv(worker_id=f"{self.worker_id:x}", error=exc))

    async def _load_metrics(self) -> None:
        last: bytes | None = None
        last_sent = 0.0
        while True:
            payload = encode(self.engine.load_metrics())
            now = time.monotonic()
            if payload != last or now - last_sent >= self.heartbeat_s:
                try:
                    await self.publisher.publish(self.load_subject, payload)
                    last, last_sent = payload, now
                except EventPlaneError as exc:
                    log.warning("load metrics not published %s", kv(worker_id=f"{self.worker_id:x}", error=exc))
            await asyncio.sleep(self.interval_s)
