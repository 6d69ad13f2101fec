from __future__ import annotations

import asyncio
import time

import pytest

from mixroute.engine.api import Engine
from mixroute.mocker.config import MockerConfig
from mixroute.mocker.engine import MockerEngine
from mixroute.mocker.fleet import build_mockers, run_mockers
from mixroute.mocker.timing import TimingModel
from mixroute.protocol.messages import GenerateRequest, KvStored, SamplingParams


def _req(rid: str, tokens: list[int], max_tokens: int = 5) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid, token_ids=tokens, sampling=SamplingParams(max_tokens=max_tokens)
    )


async def _collect(engine: MockerEngine, req: GenerateRequest) -> list:  # type: ignore[type-arg]
    return [f async for f in engine.generate(req)]


async def test_generate_streams_tokens_in_simulated_time() -> None:
    # 4000-token prefill ~ 84 ms at speedup 1 -> ~21 ms at speedup 4; decode >= 1.4 ms/step.
    engine = MockerEngine(MockerConfig(num_blocks=1024, timing=TimingModel(speedup_ratio=4.0)))
    as_engine: Engine = engine  # checked by mypy: MockerEngine implements the protocol
    assert as_engine.block_size == 16
    start = time.perf_counter()
    frames = await _collect(engine, _req("a", list(range(4000)), max_tokens=5))
    elapsed = time.perf_counter() - start
    expected = (TimingModel().prefill_ms(4000) + 4 * TimingModel().decode_ms(0.25)) / 4 / 1e3
    assert elapsed >= expected * 0.8
    assert sum(len(f.token_ids) for f in frames) == 5
    assert frames[-1].finish_reason == "length" and frames[-1].usage.prompt_tokens == 4000
    events = await asyncio.wait_for(engine.next_kv_events(), 1.0)
    assert any(isinstance(e.data, KvStored) for e in events)
    assert engine.kv_events_dump()[0].data.__class__.__name__ == "KvCleared"
    await engine.close()


async def test_closing_the_stream_early_aborts_the_request() -> None:
    engine = MockerEngine(MockerConfig(num_blocks=64, timing=TimingModel(speedup_ratio=50.0)))
    gen = engine.generate(_req("a", list(range(100)), max_tokens=500))
    await gen.__anext__()
    await gen.aclose()
    assert engine.load_metrics().num_running == 0 and engine.sim.pool.num_active == 0
    await engine.close()


async def test_concurrent_requests_share_steps() -> None:
    engine = MockerEngine(MockerConfig(num_blocks=512, timing=TimingModel(speedup_ratio=20.0)))
    results = await asyncio.gather(*(_collect(engine, _req(str(i), [i] * 64, 8)) for i in range(6)))
    assert all(sum(len(f.token_ids) for f in r) == 8 for r in results)
    # Batched: far fewer steps than 6 requests x 8 tokens.
    assert engine.num_steps < 6 * 8
    await engine.close()


async def test_run_mockers_serves_each_with_its_own_id() -> None:
    seen: list[int] = []

    async def serve_one(engine: Engine, worker_id: int) -> None:
        assert engine.load_metrics().worker_id == worker_id
        seen.append(worker_id)

    await run_mockers(MockerConfig(num_blocks=16), 3, serve_one)
    assert len(set(seen)) == 3
    engines = build_mockers(MockerConfig(num_blocks=16), 2, worker_ids=[5, 6])
    assert [e.worker_id for e in engines] == [5, 6]


async def test_run_mockers_closes_engines_when_one_fails() -> None:
    async def serve_one(engine: Engine, worker_id: int) -> None:
        if worker_id == 2:
            raise RuntimeError("boom")
        await asyncio.sleep(10)

    with pytest.raises(ExceptionGroup):
        await asyncio.wait_for(
            run_mockers(MockerConfig(num_blocks=16), 2, serve_one, worker_ids=[1, 2]), 5
        )
