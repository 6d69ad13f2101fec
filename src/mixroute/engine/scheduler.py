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

DEDUP_MIN_BLOCKS = 4
"""A waiting sequence is deferred only for a shared in-flight run of at least this many blocks."""
DEDUP_MIN_FRACTION = 0.5
"""... and only when that run is at least this fraction of the tokens it would compute now."""


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
    def __init__(
        self,
        kv: KvCacheManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        dedup_inflight: bool = True,
    ) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.dedup_inflight = dedup_inflight and kv.pool.enable_caching
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_deferrals = 0
        """Times a waiting sequence was passed over for a prefix another one is computing."""

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
        inflight = self._inflight_blocks() if self.dedup_inflight and self.waiting else None
        deferred: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.imported is not None:
                # The prompt's KV arrives from a prefill worker: blocks only, no compute.
                if self.kv.allocate(seq, seq.num_tokens) is None:
                    break
                batch.imports.append(seq)
            else:
                cached = self.kv.find_cached_prefix(seq)
                if inflight and self._is_worth_waiting(seq, len(cached), inflight):
                    self.waiting.popleft()
                    deferred.append(seq)
                    self.num_deferrals += 1
                    continue
                num_cached = len(cached) * self.kv.block_size
                num_new = min(seq.num_tokens - num_cached, budget)
                if self.kv.allocate(seq, num_new, cached) is None:
                    break
                seq.num_computed_tokens = num_cached
                if seq.num_cached_tokens < 0:
                    seq.num_cached_tokens = min(num_cached, seq.num_prompt_tokens)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
                budget -= num_new
                if inflight is not None:
                    inflight.update(self._uncommitted_prompt_hashes(seq))
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
        # Deferred sequences keep their place ahead of everything still waiting.
        self.waiting.extendleft(reversed(deferred))

    # ---- in-flight prefix dedup ----

    def _uncommitted_prompt_hashes(self, seq: Sequence) -> list[int]:
        """Sequence hashes of the full prompt blocks `seq` has yet to compute and commit."""
        return seq.seq_hashes[
            seq.num_committed_blocks : seq.num_prompt_tokens // self.kv.block_size
        ]

    def _inflight_blocks(self) -> set[int]:
        """Prompt blocks running sequences are computing now or in their next prefill chunks."""
        inflight: set[int] = set()
        block_size = self.kv.block_size
        for s in self.running:
            if s.num_committed_blocks < s.num_prompt_tokens // block_size:
                inflight.update(self._uncommitted_prompt_hashes(s))
        return inflight

    def _num_inflight_after(self, seq: Sequence, num_cached_blocks: int, inflight: set[int]) -> int:
        """Blocks right after `seq`'s cached prefix that are in `inflight` (a leading run)."""
        max_blocks = (seq.num_tokens - 1) // self.kv.block_size
        n = 0
        for seq_hash in seq.seq_hashes[num_cached_blocks:max_blocks]:
            if seq_hash not in inflight:
                break
            n += 1
        return n

    def _is_worth_waiting(self, seq: Sequence, num_cached_blocks: int, inflight: set[int]) -> bool:
        """Waiting for the shared run beats computing it again: it is long, and most of the work."""
        num_shared = self._num_inflight_after(seq, num_cached_blocks, inflight)
        if num_shared < DEDUP_MIN_BLOCKS:
            return False
        num_to_compute = seq.num_tokens - num_cached_blocks * self.kv.block_size
        return num_shared * self.kv.block_size >= DEDUP_MIN_FRACTION * num_to_compute

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
        one that got a miss), nor is a prompt whose KV is imported from a prefill worker,
        nor (with in-flight dedup) a run of blocks that a running sequence, or a waiting
        one ahead of it, will compute first. Probing the cache only reads it: blocks are
        not touched and no event is emitted."""
        num_tokens = sum(max(s.num_prompt_tokens - s.num_computed_tokens, 0) for s in self.running)
        block_size = self.kv.block_size
        inflight = self._inflight_blocks() if self.dedup_inflight and self.waiting else None
        for s in self.waiting:
            if s.imported is not None:
                continue
            num_cached_blocks = len(self.kv.find_cached_prefix(s))
            if inflight is not None:
                if self._is_worth_waiting(s, num_cached_blocks, inflight):
                    num_cached_blocks += self._num_inflight_after(s, num_cached_blocks, inflight)
                inflight.update(s.seq_hashes[num_cached_blocks : s.num_prompt_tokens // block_size])
            num_cached = max(num_cached_blocks * block_size, s.num_computed_tokens)
            num_tokens += max(s.num_prompt_tokens - num_cached, 0)
        return num_tokens
