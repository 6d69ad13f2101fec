"""Tokenizing concurrent long prompts in one batched call.

Each long prompt used to hop to the executor on its own; in a burst (many clients starting
at once) those hops queued behind each other and fought the event loop for the GIL, so the
last prompt of a 32-request burst waited hundreds of milliseconds for its tokens. Here the
prompts waiting at any moment go to the tokenizer together, in one `encode_batch_fast`
call, which tokenizes them in parallel across cores without holding the GIL.

One batch runs at a time; prompts that arrive meanwhile form the next one, oldest first,
at most `max_batch_size` (default: one per CPU) in a batch. A lone prompt therefore waits
for nothing, and batches only grow when requests pile up. The cap keeps the first prompts
of a burst from waiting for the whole burst's tokens: a request dispatched early starts its
prefill early, and a batch larger than the cores gains nothing. A caller that goes away
(cancelled) is dropped from the batch it waits for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor

log = logging.getLogger(__name__)

EncodeBatch = Callable[[list[str]], list[list[int]]]


class EncodeBatcher:
    """Owned by one event loop (the frontend's); `encode` is its only entry point."""

    def __init__(self, encode_batch: EncodeBatch, executor: Executor | None = None, max_batch_size: int | None = None) -> None:
        self._encode_batch = encode_batch
        self._executor = executor
        self._max_batch_size = max_batch_size or os.cpu_count() or 1
        self._waiting: list[tuple[str, asyncio.Future[list[int]]]] = []
        self._task: asyncio.Task[None] | None = None
        self.num_batches = 0
        self.max_batch_size = 0

    async def encode(self, text: str) -> list[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._waiting.append((text, future))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="encode-batches")
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
                try:
                    results = await loop.run_in_executor(self._executor, self._encode_batch, [t for t, _ in batch])
                except Exception:  # one bad prompt must not fail the others: retry one by one
                    log.debug("batched tokenizing failed; retrying each prompt alone", exc_info=True)
                    results = None
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
        finally:
            self._task = None

    async def _encode_alone(self, loop: asyncio.AbstractEventLoop, text: str, future: asyncio.Future[list[int]]) -> None:
        try:
            [ids] = await loop.run_in_executor(self._executor, self._encode_batch, [text])
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who turns it into a 400/500
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(ids)
