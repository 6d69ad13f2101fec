"""Scheduler: one token-budget loop per step, running sequences first, then waiting ones.

Every sequence simply has `num_tokens - num_computed_tokens` tokens left to compute; a
prefill, a prefill chunk, a decode step and a recompute after preemption are all that
same quantity under the step's token budget. When blocks run out, the most recently
admitted running sequence is preempted: its blocks are freed and it goes back to the
front of the waiting queue to be recomputed (its finished blocks often come back from
the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager
from mixroute.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    imports: list[Sequence] = field(default_factory=list)
    """Sequences whose imported KV must be copied into their new blocks this step."""
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.seqs and not self.imports


class Scheduler:
    def __init__(self, kv: KvCacheManager, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        budget = self._schedule_running(batch, budget)
        if batch.num_preempted == 0:
            self._schedule_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while self.kv.allocate(seq, num_new) is None:
                victim = self.running[-1]
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    return budget
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
            i += 1
        return budget

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.imported is not None:
                # The prompt's KV arrives from a prefill worker: blocks only, no compute.
                if self.kv.allocate(seq, seq.num_tokens) is None:
                    return
                batch.imports.append(seq)
            else:
                cached = self.kv.find_cached_prefix(seq)
                num_cached = len(cached) * self.kv.block_size
                num_new = min(seq.num_tokens - num_cached, budget)
                if self.kv.allocate(seq, num_new, cached) is None:
                    return
                seq.num_computed_tokens = num_cached
                if seq.num_cached_tokens < 0:
                    seq.num_cached_tokens = min(num_cached, seq.num_prompt_tokens)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
                budget -= num_new
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queues (finished or aborted); the caller frees or holds its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    def num_pending_prefill_tokens(self) -> int:
        """Prompt tokens this worker still has to compute: what routers and the planner read
        as its queued prefill work (`LoadMetrics.num_active_prefill_tokens`).

        A waiting sequence's prompt prefix that the prefix cache holds will not be computed,
        so it is not counted (a worker that just got a cache hit must not look busier than
        one that got a miss), nor is a prompt whose KV is imported from a prefill worker.
        Probing the cache only reads it: blocks are not touched and no event is emitted."""
        num_tokens = sum(max(s.num_prompt_tokens - s.num_computed_tokens, 0) for s in self.running)
        block_size = self.kv.block_size
        for s in self.waiting:
            if s.imported is not None:
                continue
            num_cached = max(len(self.kv.find_cached_prefix(s)) * block_size, s.num_computed_tokens)
            num_tokens += max(s.num_prompt_tokens - num_cached, 0)
        return num_tokens
