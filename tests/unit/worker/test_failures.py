"""Worker failure handling: dumps off the event loop, typed error frames, supervision."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from mixroute.engine.api import KvExport
from mixroute.errors import EngineError, EventPlaneError, OutOfBlocksError, RequestTooLongError
from mixroute.protocol.messages import (
    ERROR_CONTEXT_LENGTH,
    ERROR_INTERNAL,
    ERROR_OVERLOADED,
    GenerateFrame,
    GenerateRequest,
    KvCleared,
    KvEvent,
    KvEventBatch,
    decoder,
)
from mixroute.runtime.requests import open_request_client
from mixroute.worker.engines import engine_has_failed
from mixroute.worker.handlers import WorkerCounters, WorkerHandlers
from mixroute.worker.main import _supervise
from mixroute.worker.publisher import WorkerPublisher

from .test_handlers import FakeEngine


class LockedDumpEngine(FakeEngine):
    """`kv_events_dump` waits like the torch engine does while a long step holds its lock."""

    def __init__(self) -> None:
        super().__init__()
        self.step_done = threading.Event()
        self.was_released: bool | None = None

    def kv_events_dump(self) -> list[KvEvent]:
        self.was_released = self.step_done.wait(timeout=10.0)
        return super().kv_events_dump()


async def test_kv_dump_waits_for_the_engine_off_the_event_loop() -> None:
    engine = LockedDumpEngine()
    client = open_request_client()
    handlers = WorkerHandlers(engine, client, WorkerCounters(CollectorRegistry()), 0xE)  # type: ignore[arg-type]
    try:
        dump = asyncio.ensure_future(anext(handlers.kv_dump(b"")))
        # The loop must stay free while the dump waits: this sleep returning is what
        # ends the "step" (a blocked loop would let the dump time out instead).
        await asyncio.sleep(0.1)
        assert not dump.done()
        engine.step_done.set()
        payload = await asyncio.wait_for(dump, 30.0)
    finally:
        await client.close()
    assert engine.was_released is True
    batch = decoder(KvEventBatch).decode(payload)
    assert batch.worker_id == 0xE and isinstance(batch.events[0].data, KvCleared)


class FailingEngine(FakeEngine):
    def __init__(self, failure: BaseException | None = None, frame: GenerateFrame | None = None) -> None:
        super().__init__()
        self.failure = failure
        self.frame = frame

    async def generate(self, request: GenerateRequest, imported: KvExport | None = None) -> AsyncIterator[GenerateFrame]:
        if self.failure is not None:
            raise self.failure
        assert self.frame is not None
        yield GenerateFrame(token_ids=[3])
        yield self.frame


SECRET = "tcp://10.1.2.3:9100 RuntimeError: CUDA error at 0x7f00"


@pytest.mark.parametrize(
    ("engine", "code", "needle"),
    [
        (FailingEngine(RequestTooLongError("prompt (90 tokens) + max_tokens exceeds 64; shorten it")), ERROR_CONTEXT_LENGTH, "shorten"),
        (FailingEngine(OutOfBlocksError(SECRET)), ERROR_OVERLOADED, "no room"),
        (FailingEngine(EngineError(SECRET)), ERROR_INTERNAL, "failed"),
        (FailingEngine(RuntimeError(SECRET)), ERROR_INTERNAL, "failed"),
        (FailingEngine(frame=GenerateFrame(finish_reason="error", error=f"engine step failed: {SECRET}")), ERROR_INTERNAL, "failed"),
    ],
)
async def test_engine_failures_become_typed_frames_without_internals(engine: FailingEngine, code: str, needle: str) -> None:
    registry = CollectorRegistry()
    handlers = WorkerHandlers(engine, None, WorkerCounters(registry), 1)  # type: ignore[arg-type]
    frames = [f async for f in handlers.generate_frames(GenerateRequest(request_id="r", token_ids=[1, 2]))]
    last = frames[-1]
    assert last.finish_reason is not None and last.error_code == code
    assert last.error is not None and needle in last.error
    assert "10.1.2.3" not in last.error and "RuntimeError" not in last.error and "0x7f00" not in last.error
    # A failure is not a cancellation.
    assert registry.get_sample_value("mixroute_worker_cancelled_requests_total") == 0


async def test_a_caller_leaving_counts_as_cancelled() -> None:
    registry = CollectorRegistry()
    engine = FailingEngine(frame=GenerateFrame(finish_reason="stop"))
    handlers = WorkerHandlers(engine, None, WorkerCounters(registry), 1)  # type: ignore[arg-type]
    frames = handlers.generate_frames(GenerateRequest(request_id="r", token_ids=[1]))
    assert (await anext(frames)).token_ids == [3]
    await frames.aclose()  # type: ignore[attr-defined]
    assert registry.get_sample_value("mixroute_worker_cancelled_requests_total") == 1


class _DeadThreadEngine(FakeEngine):
    def __init__(self, closed: bool) -> None:
        super().__init__()
        self._thread = threading.Thread(target=lambda: None)
        self._thread.start()
        self._thread.join()
        self._closed = closed


def test_an_engine_whose_thread_ended_unclosed_has_failed() -> None:
    assert engine_has_failed(_DeadThreadEngine(closed=False))
    assert not engine_has_failed(_DeadThreadEngine(closed=True))
    assert not engine_has_failed(FakeEngine())  # type: ignore[arg-type]


class _BrokenPublisher:
    async def publish(self, subject: str, payload: bytes) -> None:
        raise EventPlaneError("down")


class _KvEventsRaise(FakeEngine):
    async def next_kv_events(self) -> list[KvEvent]:
        raise RuntimeError("engine event queue broke")


async def test_publisher_reports_a_task_that_died() -> None:
    publisher = WorkerPublisher(_KvEventsRaise(), _BrokenPublisher(), namespace="ns", component="backend", worker_id=1)  # type: ignore[arg-type]
    publisher.start()
    try:
        for _ in range(200):
            if publisher.failure() is not None:
                break
            await asyncio.sleep(0.01)
        reason = publisher.failure()
        assert reason is not None and "kv-events" in reason and "event queue broke" in reason
    finally:
        await publisher.stop()


class _Instance:
    def __init__(self, reason: str | None) -> None:
        self.worker_id = 7
        self.reason = reason

    async def wait_failure(self) -> str:
        if self.reason is None:
            await asyncio.Event().wait()
        await asyncio.sleep(0.01)
        return self.reason or ""


async def test_supervise_exits_1_on_a_failed_part_and_0_on_a_signal() -> None:
    assert await asyncio.wait_for(_supervise([_Instance("the engine stopped running")], asyncio.Event()), 10.0) == 1  # type: ignore[list-item]
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(_supervise([_Instance(None)], stop), 10.0) == 0  # type: ignore[list-item]
