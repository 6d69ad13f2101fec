from __future__ import annotations

import logging
import random

import pytest

from mixroute.frontend.preprocess import prepare_prompt
from mixroute.frontend.routing.selector import ApproxTracker, WorkerSelector
from mixroute.protocol.hashing import hash_prompt
from mixroute.protocol.messages import KvEvent, KvStored, LoadMetrics, StoredBlock

BS = 16
PROMPT = list(range(64))  # 4 blocks


def _hashes(tokens: list[int]) -> tuple[list[int], list[int]]:
    local, seq = hash_prompt(tokens, BS)
    return list(local), list(seq)


def _store(sel: WorkerSelector, worker: int, tokens: list[int]) -> None:
    local, seq = _hashes(tokens)
    blocks = [StoredBlock(s, t) for t, s in zip(local, seq)]
    # As the feed does for a worker that just joined: its dump carries what it holds.
    sel.indexer.apply_dump(worker, [KvEvent(worker_id=worker, event_id=0, data=KvStored(parent_hash=None, blocks=blocks))])
    sel.mark_live(worker)


def test_kv_mode_prefers_cached_worker_and_logs_cached_blocks(caplog: pytest.LogCaptureFixture) -> None:
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0))
    for w in (1, 2):
        sel.add_worker(w)
    _store(sel, 2, PROMPT)
    prompt = prepare_prompt(PROMPT, BS)
    with caplog.at_level(logging.INFO):
        d = sel.select("r1", [1, 2], prompt)
    assert (d.worker_id, d.overlap_blocks) == (2, 4)
    assert "worker_id=2 cached blocks: 4" in caplog.text


def test_cost_formula_and_load_release() -> None:
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), overlap_weight=1.0)
    for w in (1, 2):
        sel.add_worker(w)
    _store(sel, 1, PROMPT[:32])  # 2 of 4 blocks cached on worker 1
    d = sel.select("r1", [1, 2], prepare_prompt(PROMPT, BS))
    # w1: prefill (64 - 32) / 16 = 2, decode 0 + 4 - 2 = 2 -> 4; w2: 4 + 4 = 8.
    assert (d.worker_id, d.cost) == (1, 4.0)
    load = sel.loads.get(1)
    assert (load.num_prefill_tokens, load.num_active_blocks, load.num_requests) == (32, 2, 1)
    sel.first_token("r1")
    assert sel.loads.get(1).num_prefill_tokens == 0
    sel.finish("r1")
    assert (load.num_active_blocks, load.num_requests) == (0, 0)


def test_load_spreads_uncached_requests() -> None:
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0))
    for w in (1, 2):
        sel.add_worker(w)
        sel.mark_live(w)
    chosen = []
    for i in range(4):
        chosen.append(sel.select(f"r{i}", [1, 2], prepare_prompt([1000 + i] * 64, BS)).worker_id)
    assert sorted(chosen) == [1, 1, 2, 2]


def test_reported_metrics_count_as_load() -> None:
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0))
    for w in (1, 2):
        sel.add_worker(w)
        sel.mark_live(w)
    sel.loads.update_metrics(LoadMetrics(worker_id=1, num_active_blocks=500, num_total_blocks=1000, num_running=9, num_waiting=0))
    assert sel.select("r", [1, 2], prepare_prompt(PROMPT, BS)).worker_id == 2


def test_round_robin_alternates_and_random_covers() -> None:
    rr = WorkerSelector("round-robin", block_size=BS)
    prompt = prepare_prompt(PROMPT, BS)
    got = [rr.select(f"r{i}", [5, 3, 9], prompt).worker_id for i in range(6)]
    assert got == [3, 5, 9, 3, 5, 9]
    rnd = WorkerSelector("random", block_size=BS, rng=random.Random(1))
    assert {rnd.select(f"r{i}", [1, 2, 3], prompt).worker_id for i in range(50)} == {1, 2, 3}


def test_temperature_spreads_choices() -> None:
    sel = WorkerSelector("kv", block_size=BS, temperature=5.0, rng=random.Random(0))
    for w in (1, 2):
        sel.add_worker(w)
    _store(sel, 1, PROMPT)
    sel.mark_live(2)
    prompt = prepare_prompt(PROMPT, BS)
    picks = set()
    for i in range(60):
        picks.add(sel.select(f"r{i}", [1, 2], prompt).worker_id)
        sel.finish(f"r{i}")
    assert picks == {1, 2}


def test_approximate_mode_remembers_own_decisions_until_ttl() -> None:
    # Predictions off (TTL 0): this is about the approximate records alone.
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), predict_ttl_s=0.0)
    for w in (1, 2):
        sel.add_worker(w)
    prompt = prepare_prompt(PROMPT, BS)
    first = sel.select("a", [1, 2], prompt)
    sel.finish("a")
    second = sel.select("b", [1, 2], prompt)
    assert second.worker_id == first.worker_id and second.overlap_blocks == 4
    # Once a worker sends real events, its approximations are dropped.
    sel.mark_live(first.worker_id)
    sel.finish("b")
    assert sel.overlaps([1, 2], prompt.local_hashes) == {}


def test_approx_tracker_expiry_keeps_refreshed_blocks() -> None:
    tr = ApproxTracker(ttl_s=10)
    local, seq = _hashes(PROMPT)
    tr.record(1, local, seq, now=0.0)
    tr.record(1, local[:2], seq[:2], now=5.0)
    tr.expire(11.0)
    assert tr.index.find_matches(local) == {1: 2}
    tr.expire(16.0)
    assert tr.index.find_matches(local) == {}


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="round-robin"):
        WorkerSelector("fastest")  # type: ignore[arg-type]


def test_without_kv_events_own_decisions_drive_routing() -> None:
    sel = WorkerSelector("kv", block_size=BS, rng=random.Random(0), use_kv_events=False)
    for w in (1, 2):
        sel.add_worker(w)
    assert sel.indexer.take_dump_requests() == []  # no dumps asked for
    prompt = prepare_prompt(PROMPT, BS)
    first = sel.select("a", [1, 2], prompt)
    sel.finish("a")
    sel.mark_live(first.worker_id)  # events arriving anyway change nothing
    second = sel.select("b", [1, 2], prompt)
    assert (second.worker_id, second.overlap_blocks) == (first.worker_id, 4)
