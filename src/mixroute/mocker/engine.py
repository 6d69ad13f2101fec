"""MockerEngine: `mixroute.engine.api.Engine` over a `Simulator`, in simulated time.

One asyncio task owns the simulator and steps it: schedule, price the batch with the
timing model, sleep until the step's simulated end (the step's own CPU time counts
toward it, so bookkeeping does not slow the simulated clock), then hand out frames.
Many MockerEngines share one event loop, so `--num-workers N` costs one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from mixroute.engine.api import KvExport
from mixroute.errors import EngineError
from mixroute.mocker.config import MockerConfig
from mixroute.mocker.simulator import Simulator
from mixroute.protocol.messages import GenerateFrame, GenerateRequest, KvEvent, LoadMetrics

log = logging.getLogger(__name__)

HOLD_SWEEP_S = 1.0


class MockerEngine:
    def __init__(self, config: MockerConfig) -> None:
        self.config = config
        self.sim = Simulator(config)
        self.model_name = config.served_model_name
        self.block_size = config.block_size
        self.max_model_len = self.sim.max_model_len
        self.eos_token_ids = self.sim.eos_token_ids
        self.worker_id = config.worker_id
        self._streams: dict[str, asyncio.Queue[GenerateFrame]] = {}
        self._wake = asyncio.Event()
        self._events: list[KvEvent] = []
        self._events_ready = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.num_steps = 0
        self.simulated_ms = 0.0

    @classmethod
    def from_config(cls, config: MockerConfig, worker_id: int | None = None) -> MockerEngine:
        return cls(config if worker_id is None else config.with_worker_id(worker_id))

    def _ensure_running(self) -> None:
        if self._closed:
            raise EngineError("the mocker engine is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"mocker-{self.worker_id:x}"
            )

    # ---- Engine API ----

    async def generate(
        self, request: GenerateRequest, imported: KvExport | None = None
    ) -> AsyncIterator[GenerateFrame]:
        self._ensure_running()
        queue: asyncio.Queue[GenerateFrame] = asyncio.Queue()
        self.sim.add_request(request, imported)  # raises EngineError on bad input
        self._streams[request.request_id] = queue
        self._wake.set()
        self._publish_events()
        finished = False
        try:
            while True:
                frame = await queue.get()
                yield frame
                if frame.finish_reason is not None:
                    finished = True
                    return
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self._abort_now(request.request_id)

    async def abort(self, request_id: str) -> None:
        self._abort_now(request_id)

    def _abort_now(self, request_id: str) -> None:
        frame = self.sim.abort(request_id)
        queue = self._streams.get(request_id)
        if frame is not None and queue is not None:
            queue.put_nowait(frame)
        self._publish_events()

    async def export_kv(self, transfer_id: str) -> KvExport:
        export = self.sim.export_kv(transfer_id)
        self._publish_events()
        return export

    async def release_kv(self, transfer_id: str) -> None:
        self.sim.release_kv(transfer_id)
        self._publish_events()

    async def next_kv_events(self) -> list[KvEvent]:
        while not self._events:
            self._events_ready.clear()
            await self._events_ready.wait()
        events, self._events = self._events, []
        return events

    def kv_events_dump(self) -> list[KvEvent]:
        return self.sim.dump_events()

    def load_metrics(self) -> LoadMetrics:
        return self.sim.load_metrics()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for request_id in list(self.sim.seqs):
            self._abort_now(request_id)

    # ---- the step loop ----

    def _publish_events(self) -> None:
        events = self.sim.drain_events()
        if events:
            self._events.extend(events)
            self._events_ready.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + HOLD_SWEEP_S
        while True:
            if not self.sim.has_work:
                self._wake.clear()
                timeout = HOLD_SWEEP_S if self.sim.held else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            if loop.time() >= next_sweep:
                self.sim.expire_held()
                next_sweep = loop.time() + HOLD_SWEEP_S
            if not self.sim.has_work:
                self._publish_events()
                continue
            start = loop.time()
            result = self.sim.step()
            self.num_steps += 1
            self.simulated_ms += result.duration_ms
            end = start + result.duration_ms / 1e3
            # Sleep even for a zero-cost step so other mockers on this loop get a turn.
            await asyncio.sleep(max(0.0, end - loop.time()))
            for request_id, frame in result.frames:
                queue = self._streams.get(request_id)
                if queue is not None:
                    queue.put_nowait(frame)
            self._publish_events()
            if not result.frames and result.duration_ms == 0.0 and self.sim.has_work:
                # Nothing could be scheduled (blocks held elsewhere): wait for a change.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.05)
