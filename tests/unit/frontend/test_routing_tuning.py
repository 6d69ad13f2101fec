"""KV routing tuned for prefix groups: overlap weight, deduplicated active blocks and
predicted blocks (src/mixroute/frontend/routing/{selector,load}.py)."""

from __future__ import annotations

import random

import pytest

from mixroute.frontend.preprocess import prepare_prompt
from mixroute.frontend.routing import selector as selector_mod
from mixroute.frontend.routing.load import LoadTracker, chain_keys
from mixroute.frontend.routing.selector import WorkerSelector
from mixroute.protocol.hashing import hash_prompt
from mixroute.protocol.messages import KvEvent, KvStored, LoadMetrics, StoredBlock

BS = 16
PREFIX = list(range(3600))  # 225 blocks shared by a prefix group (Workload A's shape)


def _prompt(suffix_seed: int) -> list[int]:
    return PREFIX + [100_000 + suffix_seed * 400 + i for i in range(400)]  # 250 blocks in all


def _store(sel: WorkerSelector, worker: int, tokens: list[int]) -> None:
    local, seq = hash_prompt(tokens, BS)
    blocks = [StoredBlock(s, t) for t, s in zip(local, seq)]
    sel.indexer.apply_dump(worker, [KvEvent(worker_id=worker, event_id=0, data=KvStored(parent_hash=None, blocks=blocks))])
    sel.mark_live(worker)


def _metrics(worker: int, active: int) -> LoadMetrics:
    return LoadMetrics(worker_id=worker, num_active_blocks=active, num_total_blocks=4096, num_running=3, num_waiting=0)


def test_shared_prefix_blocks_count_once_per_worker() -> None:
    tracker = LoadTracker()
    a = chain_keys(hash_prompt(_prompt(0), BS)[0])
    b = chain_keys(hash_prompt(_prompt(1), BS)[0])
    assert len(set(a) & set(b)) == 225  # same prefix, same keys; different suffixes differ
    tracker.add_request("a", 1, prefill_tokens=4000, num_blocks=250, block_hashes=a)
    tracker.add_request("b", 1, prefill_tokens=400, num_blocks=25, block_hashes=b)
    load = tracker.get(1)
    assert load.unique_blocks == 275  # not 250 + 250
    assert load.active_blocks == 275
    tracker.finish_request("a")
    assert load.unique_blocks == 250  # b still holds the prefix
    tracker.finish_request("b")
    assert (load.unique_blocks, load.num_requests, load.block_refs) == (0, 0, {})


def test_requests_without_hashes_still_count_their_blocks() -> None:
    tracker = LoadTracker()
    tracker.add_request("a", 1, prefill_tokens=64, num_blocks=4)
    assert tracker.get(1).active_blocks == 4
    tracker.finish_request("a")
    assert tracker.get(1).active_blocks == 0


def test_reported_blocks_still_floor_the_estimate() -> None:
    tracker = LoadTracker()
    tracker.add_request("a", 1, prefill_tokens=64, num_blocks=4, block_hashes=[1, 2, 3, 4])
    tracker.update_metrics(_metrics(1, 900))
    assert tracker.get(1).active_blocks == 900


def _loaded_pair(weight: float | None) -> tuple[WorkerSelector, list[int]]:
    """Worker 1 caches the group's prefix but carries 700 more active blocks than worker 2."""
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), overlap_weight=weight)
    for w in (1, 2):
        sel.add_worker(w)
    _store(sel, 1, _prompt(0))
    sel.mark_live(2)
    sel.loads.update_metrics(_metrics(1, 700))
    return sel, _prompt(1)


def test_overlap_weight_one_is_designs_cost_and_spreads_the_group() -> None:
    sel, tokens = _loaded_pair(1.0)
    d = sel.select("r", [1, 2], prepare_prompt(tokens, BS))
    # w1: prefill 25 + decode 700 + 25 = 750; w2: 250 + 250 = 500.
    assert (d.worker_id, d.cost) == (2, 500.0)


def test_overlap_weight_keeps_the_group_on_its_worker() -> None:
    sel, tokens = _loaded_pair(4.0)
    d = sel.select("r", [1, 2], prepare_prompt(tokens, BS))
    # w1: 4 * 25 + 725 = 825; w2: 4 * 250 + 250 = 1250.
    assert (d.worker_id, d.overlap_blocks, d.cost) == (1, 225, 825.0)


def test_default_weight_keeps_the_group_on_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(selector_mod.OVERLAP_WEIGHT_ENV, raising=False)
    sel, tokens = _loaded_pair(None)
    assert sel.overlap_weight > 1.0
    assert sel.select("r", [1, 2], prepare_prompt(tokens, BS)).worker_id == 1


def test_overlap_weight_still_spreads_when_load_is_far_apart() -> None:
    sel, tokens = _loaded_pair(4.0)
    sel.loads.update_metrics(_metrics(1, 3000))
    assert sel.select("r", [1, 2], prepare_prompt(tokens, BS)).worker_id == 2


def test_default_weight_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(selector_mod.OVERLAP_WEIGHT_ENV, "2.5")
    assert WorkerSelector("kv").overlap_weight == 2.5
    monkeypatch.delenv(selector_mod.OVERLAP_WEIGHT_ENV)
    assert WorkerSelector("kv").overlap_weight == selector_mod.DEFAULT_OVERLAP_WEIGHT
    monkeypatch.setenv(selector_mod.OVERLAP_WEIGHT_ENV, "lots")
    with pytest.raises(ValueError, match=selector_mod.OVERLAP_WEIGHT_ENV):
        WorkerSelector("kv")
    with pytest.raises(ValueError, match="overlap weight"):
        WorkerSelector("kv", overlap_weight=-1.0)


def test_predicted_blocks_keep_a_group_together_before_events_arrive() -> None:
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), overlap_weight=1.0)
    for w in (1, 2):
        sel.add_worker(w)
        sel.mark_live(w)  # live: no approximation, only real events... and predictions
    first = sel.select("a", [1, 2], prepare_prompt(_prompt(0), BS))
    sel.first_token("a")  # prefill done; the worker's stored events are still in flight
    second = sel.select("b", [1, 2], prepare_prompt(_prompt(1), BS))
    # Predicted: 224 blocks on the first worker (225 rounded down to the stride of 8). Its
    # cost 26 + (250 + 26) = 302 beats the idle worker's 250 + 250 = 500; without the
    # prediction it would be 250 + 500 = 750.
    assert (second.worker_id, second.overlap_blocks) == (first.worker_id, 224)


def test_predictions_expire() -> None:
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), predict_ttl_s=0.0)
    for w in (1, 2):
        sel.add_worker(w)
        sel.mark_live(w)
    prompt = prepare_prompt(_prompt(0), BS)
    sel.select("a", [1, 2], prompt)
    assert sel.overlaps([1, 2], prompt.local_hashes) == {}


def test_predicted_blocks_match_leading_blocks_and_refresh() -> None:
    from mixroute.frontend.routing.selector import PredictedBlocks

    pred = PredictedBlocks(ttl_s=10.0, stride=8)
    keys = chain_keys(hash_prompt(_prompt(0), BS)[0])
    other = chain_keys(hash_prompt(_prompt(1), BS)[0])
    pred.record(1, keys, now=0.0)
    pred.record(2, keys[:100], now=5.0)
    assert pred.find_matches(keys[:100]) == {1: 96, 2: 100}  # a recorded prompt's last block is kept
    assert pred.find_matches(keys) == {1: 250, 2: 96}
    assert pred.find_matches(other) == {1: 224, 2: 96}  # 225 and 100 shared, rounded down to 8s
    assert pred.find_matches(keys[:3]) == {}  # shorter than a stride: its last block was never kept
    pred.record(1, keys[:50], now=8.0)  # refreshes the first 50 blocks only
    pred.expire(12.0)
    assert pred.find_matches(keys) == {1: 48, 2: 96}
    pred.forget_worker(2)
    assert pred.find_matches(keys) == {1: 48}
    pred.expire(20.0)
    assert pred.find_matches(keys) == {}


def _cold_fleet() -> WorkerSelector:
    """Two live workers, nothing cached: a cold start, before any KV event has arrived."""
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), overlap_weight=4.0)
    for w in (1, 2):
        sel.add_worker(w)
        sel.mark_live(w)
    return sel


def _other(seed: int) -> list[int]:
    return [200_000 + seed * 4000 + i for i in range(4000)]


def test_group_sibling_follows_the_worker_still_prefilling_its_prefix() -> None:
    sel = _cold_fleet()
    sel.select("a", [1], prepare_prompt(_other(0), BS))  # worker 1: an unrelated prompt
    sel.select("b", [1], prepare_prompt(_prompt(0), BS))  # worker 1: the group's first request
    sel.select("c", [2], prepare_prompt(_other(1), BS))  # worker 2: one unrelated prompt
    d = sel.select("d", [1, 2], prepare_prompt(_prompt(1), BS))
    # Worker 1 queues 8,000 prefill tokens, 3,584 of them the part of b's prefix that d
    # finds predicted there (224 blocks: 225 rounded down to the prediction stride), which d
    # waits for instead of computing: (4,416 + 416) / 16 = 302 prefill blocks, cost
    # 4 * 302 + 526. Worker 2: (4,000 + 4,000) / 16 = 500, cost 4 * 500 + 500. Without the
    # credit worker 1 would cost 4 * 526 + 526 and d would compute the prefix again there.
    assert (d.worker_id, d.overlap_blocks, d.cost) == (1, 224, 4 * 302 + 526)


def test_prefix_no_longer_in_flight_is_not_credited() -> None:
    sel = _cold_fleet()
    sel.select("a", [1], prepare_prompt(_other(0), BS))
    sel.select("b", [1], prepare_prompt(_prompt(0), BS))
    sel.select("c", [2], prepare_prompt(_other(1), BS))
    load = sel.loads.get(1)
    assert load.prefilling_shared(chain_keys(hash_prompt(_prompt(1), BS)[0])) == 225
    sel.first_token("b")  # b computed its prefix: nothing of it is in flight any more
    assert load.prefilling_shared(chain_keys(hash_prompt(_prompt(1), BS)[0])) == 0
    sel.finish("a")  # a finished (or was aborted) before its first token
    assert load.prefill_refs == {}
    sel.finish("b")
    assert (load.block_refs, load.num_prefill_tokens) == ({}, 0)


def test_cached_part_of_a_prompt_is_not_counted_as_in_flight() -> None:
    sel, tokens = _loaded_pair(4.0)  # worker 1 caches the group's prefix
    d = sel.select("d", [1, 2], prepare_prompt(tokens, BS))
    assert d.worker_id == 1
    # d computes only its 25-block tail there; the prefix is cached, not in flight.
    assert len(sel.loads.get(1).prefill_refs) == 25


def test_sibling_follows_even_when_the_worker_turns_live_in_between() -> None:
    # Cold start: no worker has sent events yet, so decisions are recorded approximately.
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), overlap_weight=4.0)
    for w in (1, 2):
        sel.add_worker(w)
    first = sel.select("a", [1, 2], prepare_prompt(_prompt(0), BS))
    other = 2 if first.worker_id == 1 else 1
    sel.select("c", [other], prepare_prompt(_other(1), BS))
    # The worker's first events (another prompt's blocks) arrive before the group's prefix
    # is computed: it turns live, and its approximate records are dropped.
    _store(sel, first.worker_id, _other(2))
    second = sel.select("b", [1, 2], prepare_prompt(_prompt(1), BS))
    assert (second.worker_id, second.overlap_blocks) == (first.worker_id, 224)
