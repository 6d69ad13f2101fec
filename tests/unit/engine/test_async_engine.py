"""AsyncEngine: the asyncio API the worker uses (generate, abort, KV hold/export, events, errors)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mixroute.engine.async_engine import AsyncEngine
from mixroute.engine.config import EngineConfig
from mixroute.errors import EngineError, RequestTooLongError
from mixroute.protocol.messages import GenerateFrame, GenerateRequest, SamplingParams

from .conftest import Reference, make_prompts, replay


@pytest.fixture
async def engine(tiny_dirs: dict[str, Path]) -> AsyncIterator[AsyncEngine]:
    eng = AsyncEngine.from_config(EngineConfig(model_path=str(tiny_dirs["llama"]), max_model_len=256, worker_id=7))
    yield eng
    await eng.close()


async def collect(engine: AsyncEngine, request: GenerateRequest, **kw: object) -> list[GenerateFrame]:
    return [frame async for frame in engine.generate(request, **kw)]  # type: ignore[arg-type]


def request(rid: str, prompt: list[int], **sampling: object) -> GenerateRequest:
    return GenerateRequest(request_id=rid, token_ids=prompt, sampling=SamplingParams(**sampling))  # type: ignore[arg-type]


async def test_concurrent_generate_matches_reference(engine: AsyncEngine, reference: Reference) -> None:
    prompts = make_prompts(6, seed=41)
    results = await asyncio.gather(*(collect(engine, request(f"g{i}", p, max_tokens=10)) for i, p in enumerate(prompts)))
    for prompt, frames in zip(prompts, results, strict=True):
        tokens = [t for f in frames for t in f.token_ids]
        assert tokens == reference.greedy("llama", prompt)
        last = frames[-1]
        assert last.finish_reason in ("stop", "length") and last.usage is not None
        assert last.usage.completion_tokens == len(tokens) and last.usage.prompt_tokens == len(prompt)
        assert all(f.finish_reason is None for f in frames[:-1])
    assert engine.load_metrics().num_active_blocks == 0
    assert engine.model_name == "llama" and engine.eos_token_ids


async def test_too_long_and_bad_requests(engine: AsyncEngine) -> None:
    with pytest.raises(RequestTooLongError, match="exceeds the model's context of 256"):
        await collect(engine, request("long", [5] * 250, max_tokens=10))
    with pytest.raises(EngineError, match="empty"):
        await collect(engine, request("empty", []))
    with pytest.raises(EngineError, match="vocabulary"):
        await collect(engine, request("vocab", [10**6]))
    # The engine still serves afterwards.
    frames = await collect(engine, request("ok", [5, 6, 7], max_tokens=2, ignore_eos=True))
    assert frames[-1].usage is not None and frames[-1].usage.completion_tokens == 2


async def test_abort_and_early_close_free_blocks(engine: AsyncEngine) -> None:
    stream = engine.generate(request("a", [5] * 40, max_tokens=200, ignore_eos=True))
    first = await stream.__anext__()
    assert first.token_ids
    await engine.abort("a")
    rest = [f async for f in stream]
    assert rest[-1].finish_reason == "abort"
    # Closing the iterator early aborts too.
    stream2 = engine.generate(request("b", [6] * 40, max_tokens=200, ignore_eos=True))
    await stream2.__anext__()
    await stream2.aclose()
    for _ in range(100):
        if engine.load_metrics().num_active_blocks == 0 and engine.load_metrics().num_running == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.load_metrics().num_active_blocks == 0


async def test_prefill_export_import_and_hold_timeout(tiny_dirs: dict[str, Path], reference: Reference) -> None:
    path = str(tiny_dirs["llama"])
    prefill = AsyncEngine.from_config(EngineConfig(model_path=path, worker_id=1, kv_hold_timeout_s=1.5))
    decode = AsyncEngine.from_config(EngineConfig(model_path=path, worker_id=2))
    try:
        prompt = make_prompts(1, seed=51, min_len=40, max_len=40)[0]
        frames = await collect(prefill, GenerateRequest(request_id="p", token_ids=prompt, prefill_only=True))
        handle = frames[-1].kv_transfer
        assert handle is not None and handle.num_tokens == 40 and len(handle.block_hashes) == 2
        export = await prefill.export_kv(handle.transfer_id)
        with pytest.raises(KeyError):
            await prefill.export_kv(handle.transfer_id)
        req = GenerateRequest(request_id="d", token_ids=prompt, kv_transfer=handle, sampling=SamplingParams(max_tokens=10))
        frames = await collect(decode, req, imported=export)
        assert [t for f in frames for t in f.token_ids] == reference.greedy("llama", prompt)
        assert frames[-1].usage is not None and frames[-1].usage.imported_tokens == 40
        # Nobody exports this one: the hold expires and the blocks come back.
        frames = await collect(prefill, GenerateRequest(request_id="p2", token_ids=prompt[:30], prefill_only=True))
        assert prefill.load_metrics().num_active_blocks > 0
        for _ in range(100):
            await asyncio.sleep(0.1)
            if prefill.load_metrics().num_active_blocks == 0:
                break
        assert prefill.load_metrics().num_active_blocks == 0
        assert frames[-1].kv_transfer is not None
        with pytest.raises(KeyError):
            await prefill.export_kv(frames[-1].kv_transfer.transfer_id)
    finally:
        await prefill.close()
        await decode.close()


async def test_kv_events_stream_and_dump(engine: AsyncEngine) -> None:
    prompt = make_prompts(1, seed=61, min_len=50, max_len=50)[0]
    await collect(engine, request("e", prompt, max_tokens=3))
    events = await asyncio.wait_for(engine.next_kv_events(), 5)
    assert events and all(e.worker_id == 7 for e in events)
    ids = [e.event_id for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    index = replay(events)
    assert len(index) == 3  # 50 prompt tokens -> 3 full blocks
    assert replay(engine.kv_events_dump()) == index
    assert engine.load_metrics().last_event_id == ids[-1]


async def test_dump_tracks_evictions(tiny_dirs: dict[str, Path]) -> None:
    eng = AsyncEngine.from_config(EngineConfig(model_path=str(tiny_dirs["qwen2"]), num_blocks=8))
    try:
        index: set[int] = set()
        for i, prompt in enumerate(make_prompts(6, seed=62, min_len=40, max_len=60)):
            await collect(eng, request(f"v{i}", prompt, max_tokens=4))
            replay(await asyncio.wait_for(eng.next_kv_events(), 5), index)
        dump = eng.kv_events_dump()
        assert replay(dump) == index
        assert len(index) <= 8
        assert dump[0].event_id == eng.load_metrics().last_event_id
    finally:
        await eng.close()
