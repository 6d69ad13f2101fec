"""Scheduler with a real block pool: in-flight prefix dedup, FCFS, and pending prefill work."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from mixroute.engine.kv_cache.block_pool import BlockPool
from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager
from mixroute.engine.scheduler import ScheduledBatch, Scheduler
from mixroute.engine.sequence import Sequence, SequenceStatus
from mixroute.protocol.hashing import HASH_SEED
from mixroute.protocol.messages import SamplingParams

from .conftest import ARCHS, Reference, assert_clean, make_engine, make_prompts, run_batch

BS = 4
_ids = itertools.count()


def make_scheduler(budget: int = 1024, num_blocks: int = 256, dedup: bool = True) -> Scheduler:
    kv = KvCacheManager(BlockPool(num_blocks), BS)
    return Scheduler(kv, max_num_seqs=64, max_num_batched_tokens=budget, dedup_inflight=dedup)


def seq(tokens: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(
        request_id=f"s{next(_ids)}", token_ids=list(tokens), num_prompt_tokens=len(tokens),
        sampling=SamplingParams(max_tokens=max_tokens), hash_seed=HASH_SEED,
    )  # fmt: skip


def prompt(prefix: int, n_prefix: int, tail: int, n_tail: int) -> list[int]:
    """`n_prefix` tokens of group `prefix` then `n_tail` tokens unique to `tail`."""
    return [prefix * 1000 + i for i in range(n_prefix)] + [
        50_000 + tail * 1000 + i for i in range(n_tail)
    ]


def step(sched: Scheduler) -> ScheduledBatch:
    """Schedule, 'compute' the batch, commit, append a token where a prompt is done."""
    batch = sched.schedule()
    for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        s.num_computed_tokens += n
        sched.kv.commit(s)
        if s.num_computed_tokens >= s.num_tokens:
            s.token_ids.append(7)
            if s.num_output_tokens >= s.sampling.max_tokens:
                finish(sched, s)
    return batch


def finish(sched: Scheduler, s: Sequence) -> None:
    sched.remove(s)
    sched.kv.free(s)


def scheduled(batch: ScheduledBatch) -> dict[str, int]:
    return {s.request_id: n for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)}


def test_same_step_duplicate_prefix_is_deferred_then_hits() -> None:
    sched = make_scheduler()
    a, b = seq(prompt(1, 80, 1, 8)), seq(prompt(1, 80, 2, 8))
    sched.add(a)
    sched.add(b)
    first = step(sched)
    assert scheduled(first) == {a.request_id: 88}
    assert b.status is SequenceStatus.WAITING and sched.num_deferrals == 1
    second = step(sched)
    # A's 20 prefix blocks are cached now: B computes its 8-token tail only.
    assert scheduled(second)[b.request_id] == 8
    assert b.num_cached_tokens == 80


def test_without_dedup_both_compute_the_prefix() -> None:
    sched = make_scheduler(dedup=False)
    a, b = seq(prompt(1, 80, 1, 8)), seq(prompt(1, 80, 2, 8))
    sched.add(a)
    sched.add(b)
    assert scheduled(step(sched)) == {a.request_id: 88, b.request_id: 88}
    assert b.num_cached_tokens == 0


def test_chunked_prefix_deferred_until_its_blocks_are_committed() -> None:
    # Budget 40 tokens: A computes its 100-token prompt in chunks of 40, 40, 20.
    sched = make_scheduler(budget=40)
    a = seq(prompt(1, 96, 1, 4))
    sched.add(a)
    step(sched)  # A: tokens 0-39
    b = seq(prompt(1, 96, 2, 4))
    sched.add(b)
    assert scheduled(step(sched)) == {a.request_id: 40}  # A: 40-79, no budget left for B
    # A: 80-99 and 20 tokens of budget left, but B's blocks 20-23 are A's chunk in flight.
    assert scheduled(step(sched)) == {a.request_id: 20}
    assert sched.num_deferrals == 1
    # The very next step B is admitted with all 24 shared blocks from the cache.
    assert scheduled(step(sched))[b.request_id] == 4
    assert b.num_cached_tokens == 96


def two_sharing_a_prefix() -> tuple[Scheduler, Sequence, Sequence]:
    """A and B share an 80-token prefix; the first step computes all of A (B waits for it)."""
    sched = make_scheduler()
    a, b = seq(prompt(1, 80, 1, 8)), seq(prompt(1, 80, 2, 8))
    sched.add(a)
    sched.add(b)
    assert scheduled(sched.schedule()) == {a.request_id: 88}
    return sched, a, b


def test_deferred_request_proceeds_when_the_computing_one_is_aborted() -> None:
    sched, a, b = two_sharing_a_prefix()
    finish(sched, a)  # aborted before its blocks were computed
    # No one computes the prefix any more: B goes at once and computes all of it.
    assert scheduled(step(sched)) == {b.request_id: 88}
    assert b.num_cached_tokens == 0


def test_deferred_request_proceeds_when_the_computing_one_is_preempted() -> None:
    sched, a, b = two_sharing_a_prefix()
    sched._preempt(a)  # as under block pressure: back to the front of the queue, blocks freed
    assert list(sched.waiting) == [a, b]
    # A is admitted again first; B waits behind its prefix again, then hits; both finish.
    order = [scheduled(step(sched)) for _ in range(8)]
    assert order[0] == {a.request_id: 88}
    assert order[1][b.request_id] == 8
    assert not sched.has_work


def test_unrelated_requests_go_first_and_are_unaffected() -> None:
    reqs_on = [seq(prompt(1, 80, 1, 8)), seq(prompt(1, 80, 2, 8)), seq(prompt(2, 40, 3, 8))]
    reqs_off = [seq(list(s.token_ids)) for s in reqs_on]
    on, off = make_scheduler(budget=200), make_scheduler(budget=200, dedup=False)
    for s in reqs_on:
        on.add(s)
    for s in reqs_off:
        off.add(s)
    batch_on, batch_off = step(on), step(off)
    # C (unrelated) is admitted in the first step either way, computing the same tokens;
    # B waits behind A's prefix only with dedup, so C gets the budget B would have used.
    assert scheduled(batch_on) == {reqs_on[0].request_id: 88, reqs_on[2].request_id: 48}
    assert scheduled(batch_off) == {
        reqs_off[0].request_id: 88,
        reqs_off[1].request_id: 88,
        reqs_off[2].request_id: 24,
    }
    assert list(on.waiting) == [reqs_on[1]]


def test_short_or_minor_overlap_is_not_deferred() -> None:
    sched = make_scheduler()
    a = seq(prompt(1, 12, 1, 40))  # 3 shared blocks: below DEDUP_MIN_BLOCKS
    b = seq(prompt(1, 12, 2, 40))
    c = seq(prompt(3, 20, 1, 40))  # 5 shared blocks of D's 100 tokens: under half its work
    d = seq(prompt(3, 20, 2, 80))
    for s in (a, b, c, d):
        sched.add(s)
    assert set(scheduled(step(sched))) == {a.request_id, b.request_id, c.request_id, d.request_id}
    assert sched.num_deferrals == 0


def test_fcfs_kept_when_blocks_run_out() -> None:
    # A deferred request must not let a later one jump the queue past a blocked head.
    sched = make_scheduler(num_blocks=40)
    a, b = seq(prompt(1, 80, 1, 8)), seq(prompt(1, 80, 2, 8))
    c, d = seq(prompt(2, 120, 3, 8)), seq(prompt(3, 8, 4, 8))
    for s in (a, b, c, d):
        sched.add(s)
    # A takes 22 blocks; C needs 32 and does not fit: D (after C) must wait too.
    assert scheduled(step(sched)) == {a.request_id: 88}
    assert list(sched.waiting) == [b, c, d]


def test_pending_prefill_tokens_count_the_shared_run_once() -> None:
    sched = make_scheduler()
    a, b, c = seq(prompt(1, 80, 1, 8)), seq(prompt(1, 80, 2, 8)), seq(prompt(2, 40, 3, 8))
    for s in (a, b, c):
        sched.add(s)
    # Nothing admitted yet: A computes 88, B its tail only (A is ahead of it), C all 48.
    assert sched.num_pending_prefill_tokens() == 88 + 8 + 48
    step(sched)
    # A done, B waiting with its prefix cached, C done.
    assert sched.num_pending_prefill_tokens() == 8
    off = make_scheduler(dedup=False)
    for s in (a, b, c):
        off.add(seq(list(s.token_ids[: s.num_prompt_tokens])))
    assert off.num_pending_prefill_tokens() == 88 + 88 + 48


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_outputs_identical_with_inflight_dedup(
    arch: str, tiny_dirs: dict[str, Path], reference: Reference
) -> None:
    engine = make_engine(tiny_dirs[arch], max_num_batched_tokens=96)
    shared = make_prompts(1, seed=31, min_len=64, max_len=64)[0]
    prompts = make_prompts(4, seed=32, prefix=shared, min_len=3, max_len=12) + make_prompts(
        2, seed=33, min_len=20
    )
    outputs, usage = run_batch(engine, prompts, tag="d")
    for i, p in enumerate(prompts):
        assert outputs[i] == reference.greedy(arch, p), f"prompt {i} differs"
    assert engine.scheduler.num_deferrals > 0
    # The followers of the shared prefix reused it instead of computing it again.
    assert all(usage[i].cached_tokens >= 64 for i in (1, 2, 3))  # type: ignore[attr-defined]
    assert_clean(engine, set())
