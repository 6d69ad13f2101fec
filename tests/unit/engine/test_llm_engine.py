"""LLMEngine edge cases: held KV blocking admission, hold release, load metrics."""

from __future__ import annotations

from pathlib import Path

from mixroute.protocol.messages import GenerateRequest, SamplingParams

from .conftest import assert_clean, make_engine, make_prompts


def test_held_blocks_block_admission_until_released(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["llama"], num_blocks=4)
    held_prompt, other = make_prompts(2, seed=101, min_len=40, max_len=40)
    engine.add_request(GenerateRequest(request_id="p", token_ids=held_prompt, prefill_only=True))
    frames = engine.step()
    handle = frames[0][1].kv_transfer
    assert handle is not None and len(handle.block_ids) == 3
    engine.add_request(GenerateRequest(request_id="o", token_ids=other[:20], sampling=SamplingParams(max_tokens=10)))
    assert engine.step() == [] and engine.last_step_was_idle
    metrics = engine.load_metrics()
    assert metrics.num_waiting == 1 and metrics.num_active_blocks == 3 and metrics.num_total_blocks == 4
    assert metrics.num_active_prefill_tokens == 20
    engine.release_kv(handle.transfer_id)
    out = []
    while engine.has_work:
        out += [t for _, f in engine.step() for t in f.token_ids]
    assert out and not engine.last_step_was_idle
    assert_clean(engine, set())


def test_expired_hold_frees_blocks(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["qwen2"], kv_hold_timeout_s=5)
    engine.add_request(GenerateRequest(request_id="p", token_ids=list(range(3, 40)), prefill_only=True))
    engine.step()
    assert engine.held and engine.expire_held() == 0
    deadline = engine.next_hold_deadline()
    assert deadline is not None and engine.expire_held(now=deadline) == 1
    assert not engine.held
    assert_clean(engine, set())
