"""bf16 on CUDA: greedy output of a random-weight model matches HF on the same GPU (32 tokens, 8 prompts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.testing.tiny_model import build_tiny_model

from .conftest import make_prompts, run_batch


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bf16_cuda_matches_hf(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(tmp_path / arch, arch, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2,
                            intermediate_size=512)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    engine = LLMEngine(EngineConfig(model_path=str(path), device="cuda", dtype="bfloat16", num_blocks=512))
    prompts = make_prompts(8, seed=81, min_len=5, max_len=120)
    outputs, _ = run_batch(engine, prompts, max_tokens=32, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=32, min_new_tokens=32,
                              do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        assert outputs[i] == ref, f"prompt {i}: {outputs[i]} != {ref}"
