"""Tensor parallelism over 2 CPU processes (gloo): same greedy tokens as one process.

Float sums run in a different order (each rank's partial o_proj/down_proj product, then
all_reduce), so logits are compared with a tolerance; the tiny models' greedy margins are
wide (weights scaled x4), so the tokens must be identical.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from mixroute.engine.api import KvExport
from mixroute.engine.async_engine import AsyncEngine
from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.errors import ConfigError, EngineError
from mixroute.protocol.messages import GenerateRequest, SamplingParams
from mixroute.testing.tiny_model import build_tiny_model

from .conftest import assert_clean, make_engine, make_prompts, run_batch


def record_logits(engine: LLMEngine) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    sample = engine.sampler.sample

    def recording(logits: torch.Tensor, seqs: list) -> list[int]:  # type: ignore[type-arg]
        seen.append(logits.clone())
        return sample(logits, seqs)

    engine.sampler.sample = recording  # type: ignore[method-assign]
    return seen


def test_tp2_matches_tp1_greedy_and_helpers_exit(tiny_dirs: dict[str, Path]) -> None:
    # Mixed lengths, a shared prefix (prefix-cache hits in the second round) and a small
    # token budget (chunked prefill mixed with decodes).
    prompts = make_prompts(6, seed=31, min_len=1, max_len=60)
    shared = make_prompts(3, seed=32, min_len=5, max_len=20, prefix=prompts[0][:48])
    overrides = {"num_blocks": 64, "max_num_batched_tokens": 48}
    single = make_engine(tiny_dirs["llama"], **overrides)
    single_logits = record_logits(single)
    expected = [run_batch(single, prompts)[0], run_batch(single, shared, tag="s")[0]]

    engine = make_engine(tiny_dirs["llama"], tensor_parallel_size=2, **overrides)
    procs = list(engine.tp_group.procs)  # type: ignore[union-attr]
    try:
        assert len(procs) == 1 and procs[0].is_alive()
        # Each rank's cache holds half the kv heads.
        assert engine.kv_tensors.num_kv_heads == engine.model_config.num_kv_heads // 2
        tp_logits = record_logits(engine)
        got = [run_batch(engine, prompts)[0], run_batch(engine, shared, tag="s")[0]]
        assert got == expected
        assert len(tp_logits) == len(single_logits)
        for a, b in zip(tp_logits, single_logits, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
        assert_clean(engine, set())
    finally:
        engine.close()
    for proc in procs:
        proc.join(10)
        assert not proc.is_alive() and proc.exitcode == 0


def _prefill_export(engine: LLMEngine, request_id: str, prompt: list[int]) -> KvExport:
    engine.add_request(GenerateRequest(request_id=request_id, token_ids=prompt, prefill_only=True))
    while engine.has_work:
        for _, frame in engine.step():
            if frame.kv_transfer is not None:
                return engine.export_kv(frame.kv_transfer.transfer_id)
    raise AssertionError("no handle")


def _decode(engine: LLMEngine, request_id: str, prompt: list[int], imported: KvExport) -> list[int]:
    engine.add_request(GenerateRequest(request_id=request_id, token_ids=prompt,
                                       sampling=SamplingParams(max_tokens=10)), imported)
    tokens: list[int] = []
    while engine.has_work:
        for _, frame in engine.step():
            tokens.extend(frame.token_ids)
    return tokens


def test_tp2_kv_export_import_in_full_head_layout(tiny_dirs: dict[str, Path]) -> None:
    """Disaggregation with TP: a TP=2 prefill's export (both ranks' heads) imports into a
    TP=1 engine and the other way round; the tokens equal an aggregated TP=1 run."""
    prompts = make_prompts(2, seed=33, min_len=20, max_len=50)
    single = make_engine(tiny_dirs["qwen2"], num_blocks=64)
    expected = run_batch(single, prompts)[0]
    engine = make_engine(tiny_dirs["qwen2"], num_blocks=64, tensor_parallel_size=2)
    try:
        exported = _prefill_export(engine, "p0", prompts[0])
        assert exported.header.num_kv_heads == single.model_config.num_kv_heads
        assert _decode(single, "d0", prompts[0], exported) == expected[0]
        assert _decode(engine, "d1", prompts[1], _prefill_export(single, "p1", prompts[1])) == expected[1]
        with pytest.raises(EngineError, match="tensor parallelism"):
            engine.lend_kv("any")
        assert_clean(engine, set())
    finally:
        engine.close()
    assert_clean(single, set())


def test_tp2_async_engine_qwen2_and_dead_helper(tiny_dirs: dict[str, Path]) -> None:
    """Qwen2 (q/k/v biases are sharded too) through AsyncEngine; close() stops the helper."""
    prompt = make_prompts(1, seed=41, min_len=20, max_len=20)[0]
    expected = run_batch(make_engine(tiny_dirs["qwen2"], num_blocks=32), [prompt])[0][0]
    config = EngineConfig(model_path=str(tiny_dirs["qwen2"]), num_blocks=32, tensor_parallel_size=2)

    async def scenario() -> tuple[list[int], list]:  # type: ignore[type-arg]
        engine = AsyncEngine.from_config(config)
        procs = list(engine.engine.tp_group.procs)  # type: ignore[union-attr]
        tokens: list[int] = []
        request = GenerateRequest(request_id="q", token_ids=prompt, sampling=SamplingParams(max_tokens=10))
        async for frame in engine.generate(request):
            tokens.extend(frame.token_ids)
        await engine.close()
        return tokens, procs

    tokens, procs = asyncio.run(scenario())
    assert tokens == expected
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0

    # A helper that dies is reported as an error on the next step, not a hang.
    engine = make_engine(tiny_dirs["qwen2"], num_blocks=32, tensor_parallel_size=2)
    try:
        helper = engine.tp_group.procs[0]  # type: ignore[union-attr]
        helper.kill()
        helper.join(10)
        engine.add_request(GenerateRequest(request_id="d", token_ids=prompt, sampling=SamplingParams(max_tokens=2)))
        with pytest.raises(EngineError, match="rank 1 exited"):
            engine.step()
    finally:
        engine.close()


def test_tp_size_must_divide_heads(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "odd", "llama", num_heads=3, num_kv_heads=3, hidden_size=48)
    with pytest.raises(ConfigError, match="does not divide"):
        make_engine(path, tensor_parallel_size=2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tp2_matches_tp1_greedy_on_two_gpus(tiny_dirs: dict[str, Path], dtype: str) -> None:
    """NCCL: rank 0 on cuda:0, rank 1 on cuda:1; same greedy tokens as one GPU."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    prompts = make_prompts(6, seed=51, min_len=1, max_len=60)
    shared = make_prompts(3, seed=52, min_len=5, max_len=20, prefix=prompts[0][:48])
    overrides = {"device": "cuda", "dtype": dtype, "num_blocks": 64, "max_num_batched_tokens": 48}
    single = make_engine(tiny_dirs["llama"], **overrides)
    expected = [run_batch(single, prompts)[0], run_batch(single, shared, tag="s")[0]]
    del single
    engine = make_engine(tiny_dirs["llama"], tensor_parallel_size=2, **overrides)
    procs = list(engine.tp_group.procs)  # type: ignore[union-attr]
    try:
        assert engine.kv_tensors.buffer.device == torch.device("cuda", 0)
        got = [run_batch(engine, prompts)[0], run_batch(engine, shared, tag="s")[0]]
        assert got == expected
        assert_clean(engine, set())
    finally:
        engine.close()
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
