"""Tokenizing concurrent long prompts in one batched call.

Each long prompt used to hop to the executor on its own; in a burst (many clients starting
at once) those hops queued behind each other and fought the event loop for the GIL, so the
last prompt of a 32-request burst waited hundreds of milliseconds for its tokens. Here the
prompts waiting at any moment go to the tokenizer together, in one `encode_batch_fast`
call, which tokenizes them in parallel across cores without holding the GIL.

Up to `max_parallel` batches run at a time (the tokenizer's pool: one per CPU); prompts
that arrive while they run form the next ones, oldest first, at most `max_batch_size`
(default: one per CPU) in a batch. A lone prompt therefore waits for nothing, and batches
only grow when requests pile up. The cap keeps the first prompts of a burst from waiting
for the whole burst's tokens: a request dispatched early starts its prefill early.

Why several batches at once: `encode_batch_fast` releases the GIL but, measured here
(tokenizers 0.22, 2 CPUs), tokenizes a batch's texts one after the other (~3.3 ms of CPU
each for 4,000 words, batch or not), so one batch at a time used one core. Two batches on
two executor threads can use both cores when the machine has them free. A caller that
goes away (cancelled) is dropped from the batch it waits for.

A prompt that arrives alone (`inline_gap_s`: nothing running or waiting, and no other
prompt arrived in that many seconds) is tokenized on the calling (event loop) thread
instead. The hop to an executor thread and back costs two thread wake-ups, which on a
busy 2-CPU machine took longer than the tokenizing: in a Workload A run (4,000 words a
prompt, one every ~120 ms) the wait for tokens was p50 9.6 / p90 28.5 ms through the
executor and 5.1 / 8.0 ms inline, i.e. the ~4 ms of tokenizing itself. The loop stalls for
those ~4 ms, once per lone request. A burst still goes to the executor: its second prompt
arrives within the gap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import Executor

log = logging.getLogger(__name__)

EncodeBatch = Callable[[list[str]], list[list[int]]]


class EncodeBatcher:
    """Owned by one event loop (the frontend's); `encode` is its only entry point."""

    def __init__(
        self,
        encode_batch: EncodeBatch,
        executor: Executor | None = None,
        max_batch_size: int | None = None,
        max_parallel: int = 1,
        inline_gap_s: float | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self._inline_gap_s = inline_gap_s
        """None: never tokenize on the caller's thread."""
        self._last_arrival = -math.inf
        self.num_inline = 0
        self._encode_batch = encode_batch
        self._executor = executor
        self._max_batch_size = max_batch_size or os.cpu_count() or 1
        self._max_parallel = max_parallel
        self._waiting: list[tuple[str, asyncio.Future[list[int]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.num_batches = 0
        self.max_batch_size = 0
        self.max_running = 0
        """Most batches seen running at once."""
        self._running = 0

    async def encode(self, text: str) -> list[int]:
        loop = asyncio.get_running_loop()
        now, last = loop.time(), self._last_arrival
        self._last_arrival = now
        gap = self._inline_gap_s
        if gap is not None and now - last >= gap and not self._tasks and not self._waiting:
            self.num_inline += 1
            return self._encode_batch([text])[0]
        future: asyncio.Future[list[int]] = loop.create_future()
        self._waiting.append((text, future))
        if len(self._tasks) < self._max_parallel:
            task = loop.create_task(self._run(), name="encode-batches")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[tuple[str, asyncio.Future[list[int]]]] = []
        try:
            while self._waiting:
                waiting = [(t, f) for t, f in self._waiting if not f.done()]
                cut = self._max_batch_size
                batch, self._waiting = waiting[:cut], waiting[cut:]
                if not batch:
                    continue
                self.num_batches += 1
                self.max_batch_size = max(self.max_batch_size, len(batch))
                self._running += 1
                self.max_running = max(self.max_running, self._running)
                try:
                    results = await loop.run_in_executor(self._executor, self._encode_batch, [t for t, _ in batch])
                except Exception:  # one bad prompt must not fail the others: retry one by one
                    log.debug("batched tokenizing failed; retrying each prompt alone", exc_info=True)
                    results = None
                finally:
                    self._running -= 1
                if results is None:
                    for text, future in batch:
                        await self._encode_alone(loop, text, future)
                else:
                    for (_, future), ids in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(ids)
                batch = []
        except asyncio.CancelledError:
            for _, future in batch + self._waiting:
                future.cancel()
            self._waiting = []
            raise

    async def _encode_alone(self, loop: asyncio.AbstractEventLoop, text: str, future: asyncio.Future[list[int]]) -> None:
        try:
            [ids] = await loop.run_in_executor(self._executor, self._encode_batch, [text])
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who turns it into a 400/500
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(ids)
