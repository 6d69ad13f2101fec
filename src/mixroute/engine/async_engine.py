"""AsyncEngine: the asyncio face of LLMEngine (implements mixroute.engine.api.Engine).

Threading rule: the LLMEngine (scheduler, block pool, tensors) is owned by one engine
thread. Callers never touch it; they post commands (closures) that the engine thread runs
between steps, and get results back through futures. Frames go back to each request's
asyncio queue with `call_soon_threadsafe`. The cross-thread reads never wait for a step:
`load_metrics` returns a snapshot taken after each step, and `kv_events_dump` is rebuilt
from a mirror of the events already published.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from mixroute.engine.api import KvExport
from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.errors import EngineError
from mixroute.protocol.messages import (
    GenerateFrame,
    GenerateRequest,
    KvCleared,
    KvEvent,
    KvExportHeader,
    KvRemoved,
    KvShareInfo,
    KvStored,
    LoadMetrics,
    StoredBlock,
    Usage,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[GenerateFrame]


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        config = engine.config
        self.model_name: str = config.served_model_name or ""
        self.model_path: str = config.model_path
        self.block_size: int = engine.block_size
        self.max_model_len: int = engine.max_model_len
        self.eos_token_ids: tuple[int, ...] = engine.eos_token_ids
        self.worker_id: int = config.worker_id
        self.kv_device = engine.device
        """Where this engine's KV cache lives (direct KV imports are copied to it)."""
        self.supports_direct_kv = engine.tp_size == 1
        """Direct (same-host) KV transfer needs the whole cache in one process: not with TP."""
        self._wakeup = threading.Condition()
        self._commands: list[Callable[[], None]] = []
        self._streams: dict[str, _Stream] = {}
        self._events: list[KvEvent] = []
        self._event_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._events_lock = threading.Lock()
        self._mirror: dict[int, tuple[int | None, int]] = {}
        """block_hash -> (parent_hash, tokens_hash) of every published, not yet removed block."""
        self._last_published_id = engine.pool.last_event_id
        self._metrics = engine.load_metrics()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{config.worker_id}", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model and start the engine thread (blocking: seconds for a small model)."""
        return cls(LLMEngine(config))

    # ---- Engine API ----

    async def generate(self, request: GenerateRequest, imported: KvExport | None = None) -> AsyncIterator[GenerateFrame]:
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        request_id = request.request_id

        def add() -> None:
            self.engine.add_request(request, imported)
            self._streams[request_id] = stream

        await self._call(add)
        finished = False
        try:
            while True:
                frame = await stream.queue.get()
                if frame.finish_reason is not None:
                    finished = True
                yield frame
                if finished:
                    return
        finally:
            if not finished and not self._closed:
                # The consumer went away early: abort without waiting (we may be in GC).
                self._post(lambda: self._abort_now(request_id))

    async def abort(self, request_id: str) -> None:
        await self._call(lambda: self._abort_now(request_id))

    async def export_kv(self, transfer_id: str) -> KvExport:
        return await self._call(lambda: self.engine.export_kv(transfer_id))

    async def release_kv(self, transfer_id: str) -> None:
        await self._call(lambda: self.engine.release_kv(transfer_id))

    # ---- direct (same-host) KV transfer; see mixroute.engine.kv_transfer ----

    async def share_kv(self, host_id: str) -> KvShareInfo:
        """On the engine thread: the first CPU share moves the cache into shared memory."""
        return await self._call(lambda: self.engine.share_kv(host_id))

    async def lend_kv(self, transfer_id: str) -> KvExportHeader:
        return await self._call(lambda: self.engine.lend_kv(transfer_id))

    async def next_kv_events(self) -> list[KvEvent]:
        loop = asyncio.get_running_loop()
        while True:
            with self._events_lock:
                if self._events:
                    events, self._events = self._events, []
                    return events
                ready = asyncio.Event()
                self._event_waiters.append((loop, ready))
            await ready.wait()

    def kv_events_dump(self) -> list[KvEvent]:
        """Built from the mirror of published events, so it never waits for an engine step."""
        with self._events_lock:
            last = self._last_published_id
            blocks = list(self._mirror.items())
        out = [KvEvent(worker_id=self.worker_id, event_id=last, data=KvCleared())]
        for block_hash, (parent_hash, tokens_hash) in blocks:
            stored = KvStored(parent_hash=parent_hash, blocks=[StoredBlock(block_hash, tokens_hash)])
            out.append(KvEvent(worker_id=self.worker_id, event_id=last, data=stored))
        return out

    def load_metrics(self) -> LoadMetrics:
        return self._metrics

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._wakeup:
            self._wakeup.notify()
        await asyncio.to_thread(self._thread.join, 30.0)

    # ---- plumbing ----

    def _post(self, command: Callable[[], None]) -> None:
        with self._wakeup:
            self._commands.append(command)
            self._wakeup.notify()

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise EngineError("engine is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def command() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                future.set_exception(exc)

        self._post(command)
        return await asyncio.wrap_future(future)

    def _abort_now(self, request_id: str) -> None:
        frame = self.engine.abort(request_id)
        if frame is not None:
            self._deliver(request_id, frame)

    def _deliver(self, request_id: str, frame: GenerateFrame) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        if frame.finish_reason is not None:
            del self._streams[request_id]
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, frame)
        except RuntimeError:
            pass  # the caller's event loop is closed; nobody is listening

    def _run(self) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.set_device(self.engine.device)  # per thread; Triton launches on it
        while True:
            with self._wakeup:
                if self.engine.last_step_was_idle and not self._commands and not self._closed:
                    # Work is waiting for blocks that only an export, release or hold
                    # timeout frees: wait for a command instead of spinning.
                    self._wakeup.wait(timeout=0.05)
                while not self._commands and not self.engine.has_work and not self._closed:
                    self._wakeup.wait(timeout=self._idle_timeout())
                    if self.engine.held or self.engine.loans:
                        break
                commands, self._commands = self._commands, []
            if self._closed:
                self._shutdown(commands)
                return
            outputs: list[tuple[str, GenerateFrame]] = []
            for command in commands:
                command()
            self.engine.expire_held()
            if self.engine.has_work:
                outputs = self._step()
            events = self.engine.pool.drain_events()
            self._metrics = self.engine.load_metrics()
            # Metrics and events first: whoever sees a frame also sees the state that made it.
            if events:
                self._publish(events)
            for request_id, frame in outputs:
                self._deliver(request_id, frame)

    def _idle_timeout(self) -> float:
        deadline = self.engine.next_hold_deadline()
        return 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))

    def _step(self) -> list[tuple[str, GenerateFrame]]:
        try:
            return self.engine.step()
        except Exception as exc:  # a failed forward pass must not hang every caller
            log.exception("engine step failed; failing its requests")
            self._fail_all(f"engine step failed: {exc}")
            return []

    def _fail_all(self, message: str) -> None:
        for request_id in list(self.engine.seqs):
            frame = self.engine.abort(request_id)
            if frame is not None:
                frame.finish_reason = "error"
                frame.error = message
                self._deliver(request_id, frame)

    def _publish(self, events: list[KvEvent]) -> None:
        with self._events_lock:
            self._events.extend(events)
            for event in events:
                self._mirror_apply(event)
            waiters, self._event_waiters = self._event_waiters, []
        for loop, ready in waiters:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:
                pass

    def _mirror_apply(self, event: KvEvent) -> None:
        data = event.data
        if isinstance(data, KvStored):
            parent = data.parent_hash
            for block in data.blocks:
                self._mirror[block.block_hash] = (parent, block.tokens_hash)
                parent = block.block_hash
        elif isinstance(data, KvRemoved):
            for block_hash in data.block_hashes:
                self._mirror.pop(block_hash, None)
        else:
            self._mirror.clear()
        self._last_published_id = event.event_id

    def _shutdown(self, commands: list[Callable[[], None]]) -> None:
        for command in commands:
            command()  # lets pending _call futures complete instead of hanging
        for request_id, stream in list(self._streams.items()):
            frame = GenerateFrame(finish_reason="abort", usage=Usage(), error="engine closed")
            try:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, frame)
            except RuntimeError:
                pass
        self._streams.clear()
        self.engine.close()

