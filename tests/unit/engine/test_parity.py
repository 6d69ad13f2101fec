"""Greedy outputs must be token-identical to HF transformers `generate` (each prompt alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixroute.engine.api import KvExport
from mixroute.protocol.messages import GenerateRequest, SamplingParams

from .conftest import (
    ARCHS,
    MAX_TOKENS,
    Reference,
    assert_clean,
    make_engine,
    make_prompts,
    run_batch,
)


def check(reference: Reference, arch: str, prompts: list[list[int]], outputs: dict[int, list[int]]) -> None:
    for i, prompt in enumerate(prompts):
        assert outputs[i] == reference.greedy(arch, prompt), f"prompt {i} (len {len(prompt)}) differs"


@pytest.mark.parametrize("arch", ARCHS)
def test_cold_batches(arch: str, tiny_dirs: dict[str, Path], reference: Reference) -> None:
    engine = make_engine(tiny_dirs[arch])
    index: set[int] = set()
    for size in (1, 4, 16):
        prompts = make_prompts(size, seed=size)
        outputs, _usage = run_batch(engine, prompts, tag=f"c{size}-")
        check(reference, arch, prompts, outputs)
        assert_clean(engine, index)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_cache_hits(arch: str, tiny_dirs: dict[str, Path], reference: Reference) -> None:
    engine = make_engine(tiny_dirs[arch])
    index: set[int] = set()
    shared = make_prompts(1, seed=99, min_len=40, max_len=40)[0]
    first = make_prompts(3, seed=5, prefix=shared, max_len=20)
    outputs, _ = run_batch(engine, first, tag="a")
    check(reference, arch, first, outputs)
    assert_clean(engine, index)
    # Same prefix again (plus exact repeats of earlier prompts): blocks come from the cache.
    second = make_prompts(8, seed=6, prefix=shared, max_len=30) + first[:2]
    outputs, usage = run_batch(engine, second, tag="b")
    check(reference, arch, second, outputs)
    assert all(u.cached_tokens >= 32 for u in usage.values())  # type: ignore[attr-defined]
    assert_clean(engine, index)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill(arch: str, tiny_dirs: dict[str, Path], reference: Reference) -> None:
    engine = make_engine(tiny_dirs[arch], max_num_batched_tokens=13)
    prompts = make_prompts(6, seed=11, min_len=20, max_len=60)
    outputs, _ = run_batch(engine, prompts)
    check(reference, arch, prompts, outputs)
    assert_clean(engine, set())


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption(arch: str, tiny_dirs: dict[str, Path], reference: Reference) -> None:
    engine = make_engine(tiny_dirs[arch], num_blocks=12, block_size=8)
    prompts = make_prompts(8, seed=21, min_len=15, max_len=40)
    outputs, _ = run_batch(engine, prompts, max_tokens=16)
    assert engine.scheduler.num_preemptions > 0, "the test must force preemption"
    for i, prompt in enumerate(prompts):
        assert outputs[i] == reference.greedy(arch, prompt, 16)
    assert_clean(engine, set())


@pytest.mark.parametrize("arch", ARCHS)
def test_export_import(arch: str, tiny_dirs: dict[str, Path], reference: Reference) -> None:
    prefill = make_engine(tiny_dirs[arch], worker_id=1)
    decode = make_engine(tiny_dirs[arch], worker_id=2)
    prompts = make_prompts(5, seed=31, min_len=1, max_len=50)
    exports: list[KvExport] = []
    for i, prompt in enumerate(prompts):
        prefill.add_request(GenerateRequest(request_id=f"p{i}", token_ids=prompt, prefill_only=True,
                                            sampling=SamplingParams(max_tokens=MAX_TOKENS)))
    handles = {}
    while prefill.has_work:
        for request_id, frame in prefill.step():
            if frame.finish_reason is not None:
                assert frame.kv_transfer is not None and len(frame.token_ids) == 1
                assert frame.kv_transfer.first_token_id == frame.token_ids[0]
                handles[int(request_id[1:])] = frame.kv_transfer
    assert prefill.pool.num_free < prefill.num_blocks  # held until exported
    for i in range(len(prompts)):
        exports.append(prefill.export_kv(handles[i].transfer_id))
    assert_clean(prefill, set())
    with pytest.raises(KeyError):
        prefill.export_kv(handles[0].transfer_id)
    for i, prompt in enumerate(prompts):
        decode.add_request(GenerateRequest(request_id=f"d{i}", token_ids=prompt,
                                           sampling=SamplingParams(max_tokens=MAX_TOKENS)), imported=exports[i])
    outputs: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    usage = {}
    while decode.has_work:
        for request_id, frame in decode.step():
            outputs[int(request_id[1:])].extend(frame.token_ids)
            if frame.finish_reason:
                usage[int(request_id[1:])] = frame.usage
    check(reference, arch, prompts, outputs)
    for i, prompt in enumerate(prompts):
        assert usage[i].imported_tokens == len(prompt)
        assert usage[i].prompt_tokens == len(prompt)
    assert_clean(decode, set())
