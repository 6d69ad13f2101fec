"""CUDA: the Triton paged-decode kernel against SDPA, and bf16 greedy parity with HF on the same GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.testing.tiny_model import build_tiny_model

from .conftest import make_prompts, run_batch


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_decode_kernel_matches_sdpa(dtype: torch.dtype) -> None:
    from mixroute.engine.triton_attention import paged_decode

    gen = torch.Generator(device="cuda").manual_seed(0)
    num_blocks, block_size, kv_heads, heads, head_dim = 64, 16, 2, 8, 64
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda", generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device="cuda", generator=gen).to(dtype)
    lengths = [1, 15, 16, 17, 100, 250]
    perm = torch.randperm(num_blocks, device="cuda", generator=gen).tolist()
    tables, used = [], 0
    for n in lengths:
        nb = -(-n // block_size)
        tables.append(perm[used : used + nb] + [0] * (16 - nb))
        used += nb
    q = torch.randn(len(lengths), heads, head_dim, device="cuda", generator=gen).to(dtype)
    out = paged_decode(q, k_cache, v_cache, torch.tensor(tables, dtype=torch.int32, device="cuda"),
                       torch.tensor(lengths, dtype=torch.int32, device="cuda"), head_dim**-0.5)
    for i, n in enumerate(lengths):
        slots = torch.tensor(tables[i], device="cuda").repeat_interleave(block_size) * block_size
        slots = (slots + torch.arange(block_size, device="cuda").repeat(16))[:n]
        k = k_cache.view(-1, kv_heads, head_dim)[slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        v = v_cache.view(-1, kv_heads, head_dim)[slots].double().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        ref = F.scaled_dot_product_attention(q[i].double().unsqueeze(1), k, v, scale=head_dim**-0.5).squeeze(1)
        err = (out[i].double() - ref).norm() / ref.norm()
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), f"len {n}: rel err {err}"


def _hf_greedy(hf: object, prompt: list[int], max_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    # min_new_tokens bans EOS for all 32 steps; the engine's min_tokens=32 does the same
    # (ignore_eos alone would still let EOS be *chosen*, just not stop).
    with torch.no_grad():
        out = hf.generate(  # type: ignore[attr-defined]
            torch.tensor([prompt], device="cuda"), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
            do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )
    return out.sequences[0, len(prompt):].tolist(), [x[0].float() for x in out.logits]


def _build(arch: str, tmp_path: Path) -> Path:
    return build_tiny_model(tmp_path / arch, arch, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                            intermediate_size=512)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bf16_cuda_matches_hf_exactly(arch: str, tmp_path: Path) -> None:
    """Each of 8 prompts alone, SDPA backend, unfused projections: the same kernels as HF,
    so 32 identical tokens."""
    from transformers import AutoModelForCausalLM

    path = _build(arch, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    engine = LLMEngine(EngineConfig(model_path=str(path), device="cuda", dtype="bfloat16", num_blocks=512,
                                    attention_backend="sdpa", fuse_projections=False))
    for i, prompt in enumerate(make_prompts(8, seed=81, min_len=5, max_len=120)):
        outputs, _ = run_batch(engine, [prompt], max_tokens=32, tag=f"x{i}-", min_tokens=32)
        ref, _ = _hf_greedy(hf, prompt, 32)
        assert outputs[0] == ref, f"prompt {i}: {outputs[0]} != {ref}"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bf16_cuda_batched_tracks_hf(arch: str, backend: str, tmp_path: Path) -> None:
    """8 prompts in one batch: bf16 rounding differs with batch shape and kernel, so the
    sequences may part where HF's top two logits are nearly tied; until then they must agree,
    and the parting token must be within 1% of HF's best logit."""
    from transformers import AutoModelForCausalLM

    path = _build(arch, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    engine = LLMEngine(EngineConfig(model_path=str(path), device="cuda", dtype="bfloat16", num_blocks=512,
                                    attention_backend=backend))  # type: ignore[arg-type]
    prompts = make_prompts(8, seed=81, min_len=5, max_len=120)
    outputs, _ = run_batch(engine, prompts, max_tokens=32, min_tokens=32)
    num_exact = 0
    for i, prompt in enumerate(prompts):
        ref, logits = _hf_greedy(hf, prompt, 32)
        ours = outputs[i]
        if ours == ref:
            num_exact += 1
            continue
        step = next(j for j in range(32) if ours[j] != ref[j])
        best = logits[step][ref[step]]
        assert best - logits[step][ours[step]] <= 0.01 * best.abs(), f"prompt {i} parts at {step} on a clear choice"
    assert num_exact >= 4, f"only {num_exact}/8 prompts identical"
