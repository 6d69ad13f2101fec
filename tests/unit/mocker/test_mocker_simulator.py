from __future__ import annotations

import pytest

from mixroute.errors import EngineError, RequestTooLongError
from mixroute.mocker.config import MockerConfig
from mixroute.mocker.simulator import Simulator
from mixroute.mocker.timing import TimingModel
from mixroute.protocol.messages import GenerateRequest, KvRemoved, KvStored, SamplingParams


def _req(rid: str, tokens: list[int], max_tokens: int = 4, **kw) -> GenerateRequest:  # type: ignore[no-untyped-def]
    return GenerateRequest(
        request_id=rid, token_ids=tokens, sampling=SamplingParams(max_tokens=max_tokens), **kw
    )


def _run(sim: Simulator) -> tuple[dict[str, list], list[float]]:  # type: ignore[type-arg]
    frames: dict[str, list] = {}  # type: ignore[type-arg]
    durations = []
    while sim.has_work:
        result = sim.step()
        durations.append(result.duration_ms)
        for rid, frame in result.frames:
            frames.setdefault(rid, []).append(frame)
    return frames, durations


def test_prefill_priced_by_uncached_tokens_and_prefix_hits() -> None:
    timing = TimingModel()
    sim = Simulator(MockerConfig(num_blocks=256, timing=timing))
    prompt = list(range(320))  # 20 full blocks
    sim.add_request(_req("a", prompt))
    first = sim.step()
    assert first.num_prefill_tokens == 320 and first.num_decode_seqs == 0
    assert first.duration_ms == pytest.approx(timing.prefill_ms(320))
    frames, _ = _run(sim)
    final = frames["a"][-1]
    assert final.finish_reason == "length" and final.usage.completion_tokens == 4
    assert final.usage.cached_tokens == 0

    # Same prefix + a different tail: the 20 cached blocks are not recomputed.
    sim.add_request(_req("b", prompt + [999] * 40))
    second = sim.step()
    assert second.num_prefill_tokens == 40
    assert second.duration_ms == pytest.approx(timing.prefill_ms(40))
    frames, _ = _run(sim)
    assert frames["b"][-1].usage.cached_tokens == 320


def test_decode_steps_use_kv_usage_and_emit_one_token_each() -> None:
    timing = TimingModel(speedup_ratio=2.0)
    sim = Simulator(MockerConfig(num_blocks=100, timing=timing))
    sim.add_request(_req("a", list(range(50)), max_tokens=6))
    sim.step()  # prefill + first token
    step = sim.step()
    assert step.num_prefill_tokens == 0 and step.num_decode_seqs == 1
    usage = sim.pool.num_active / 100
    assert step.duration_ms == pytest.approx(timing.decode_ms(usage))
    assert [len(f.token_ids) for _, f in step.frames] == [1]
    frames, _ = _run(sim)
    assert sum(len(f.token_ids) for f in frames["a"]) == 4  # 6 in all, 2 already out


def test_kv_events_and_load_metrics_come_from_the_block_pool() -> None:
    sim = Simulator(MockerConfig(num_blocks=8, worker_id=42))
    sim.add_request(_req("a", list(range(64)), max_tokens=1))
    _run(sim)
    events = sim.drain_events()
    stored = [e for e in events if isinstance(e.data, KvStored)]
    assert stored and all(e.worker_id == 42 for e in events)
    assert sum(len(e.data.blocks) for e in stored) == 4
    # A different prompt needing all 8 blocks evicts the cached ones.
    sim.add_request(_req("b", list(range(1000, 1120)), max_tokens=1))
    _run(sim)
    assert any(isinstance(e.data, KvRemoved) for e in sim.drain_events())
    m = sim.load_metrics()
    assert m.worker_id == 42 and m.num_total_blocks == 8 and m.num_running == 0
    assert m.last_event_id == sim.pool.last_event_id >= 2


def test_prefill_only_holds_blocks_until_export() -> None:
    sim = Simulator(MockerConfig(num_blocks=32))
    sim.add_request(_req("p", list(range(40)), max_tokens=50, prefill_only=True))
    frames, _ = _run(sim)
    final = frames["p"][-1]
    handle = final.kv_transfer
    assert final.finish_reason == "length" and handle is not None
    assert (
        handle.num_tokens == 40
        and len(handle.block_hashes) == 2
        and handle.first_token_id == final.token_ids[0]
    )
    assert sim.pool.num_active == 3
    export = sim.export_kv(handle.transfer_id)
    assert sim.pool.num_active == 0 and export.header.first_token_id == handle.first_token_id
    with pytest.raises(KeyError):
        sim.export_kv(handle.transfer_id)

    # A decode mocker imports it: no prefill cost, first token is the prefill worker's.
    decode = Simulator(MockerConfig(num_blocks=32))
    decode.add_request(_req("d", list(range(40)), max_tokens=3), imported=export)
    frames, _ = _run(decode)
    tokens = [t for f in frames["d"] for t in f.token_ids]
    assert tokens[0] == handle.first_token_id and len(tokens) == 3
    assert frames["d"][-1].usage.imported_tokens == 40


def test_held_blocks_expire() -> None:
    sim = Simulator(MockerConfig(num_blocks=32, kv_hold_timeout_s=5.0))
    sim.add_request(_req("p", list(range(40)), prefill_only=True))
    _run(sim)
    assert sim.expire_held(now=0.0) == 0 and sim.held
    assert sim.expire_held(now=1e12) == 1 and sim.pool.num_active == 0


def test_bad_requests_are_rejected_clearly() -> None:
    sim = Simulator(MockerConfig(num_blocks=4, max_model_len=100))
    with pytest.raises(EngineError, match="empty"):
        sim.add_request(_req("a", []))
    with pytest.raises(RequestTooLongError, match="context"):
        sim.add_request(_req("a", list(range(99)), max_tokens=5))
    with pytest.raises(RequestTooLongError, match="num-blocks"):
        sim.add_request(_req("a", list(range(80)), max_tokens=5))
    with pytest.raises(EngineError, match="vocabulary"):
        sim.add_request(_req("a", [-1]))
    sim.add_request(_req("a", [1, 2]))
    with pytest.raises(EngineError, match="already running"):
        sim.add_request(_req("a", [1, 2]))


def test_reported_pending_prefill_excludes_cached_prompt_tokens() -> None:
    """A waiting request whose prefix is cached reports only its uncached tokens: a worker
    that just got a cache hit must not look busier to routers than one that got a miss."""
    sim = Simulator(MockerConfig(num_blocks=256, max_num_batched_tokens=64))
    prompt = list(range(320))  # 20 full blocks
    sim.add_request(_req("a", prompt))
    _run(sim)
    assert sim.load_metrics().num_active_prefill_tokens == 0
    sim.add_request(_req("hit", prompt + [999] * 40))  # 320 cached + 40 new
    sim.add_request(_req("miss", [7] * 360))
    assert sim.load_metrics().num_active_prefill_tokens == 40 + 360
    assert sim.pool.num_active == 0  # probing the cache took no block references
    sim.step()  # budget 64: "hit" is admitted (40 computed), "miss" starts (24 of 360)
    assert sim.load_metrics().num_active_prefill_tokens == 360 - 24
