"""Model details: llama3 rope scaling and tied embeddings against HF; config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mixroute.engine.model.config import ModelConfig
from mixroute.errors import ConfigError

from .conftest import make_engine, make_prompts, run_batch


def _variant(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _hf_greedy(path: Path, prompt: list[int], max_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_llama3_rope_scaling_matches_hf(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    path = _variant(tiny_dirs["llama"], tmp_path / "llama3", rope_parameters=rope)
    assert ModelConfig.from_dir(path).rope_scaling is not None
    engine = make_engine(path)
    prompts = make_prompts(3, seed=91, min_len=60, max_len=120)
    outputs, _ = run_batch(engine, prompts)
    for i, prompt in enumerate(prompts):
        assert outputs[i] == _hf_greedy(path, prompt, 10)


def test_tied_embeddings_match_hf(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = _variant(tiny_dirs["qwen2"], tmp_path / "tied", tie_word_embeddings=True)
    weights = load_file(str(path / "model.safetensors"))
    weights.pop("lm_head.weight")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    engine = make_engine(path)
    prompts = make_prompts(2, seed=92)
    outputs, _ = run_batch(engine, prompts)
    for i, prompt in enumerate(prompts):
        assert outputs[i] == _hf_greedy(path, prompt, 10)


def test_unsupported_model_type_is_a_clear_error(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = _variant(tiny_dirs["llama"], tmp_path / "gpt2", model_type="gpt2")
    with pytest.raises(ConfigError, match="model_type 'gpt2' is not supported"):
        make_engine(path)


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mixroute model prepare"):
        make_engine(tmp_path / "nope")


def test_qwen2_qkv_bias_is_loaded_and_nonzero(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["qwen2"])
    attn = engine.model.model.layers[0].self_attn
    assert attn.qkv_proj is not None and attn.qkv_proj.bias is not None
    assert attn.qkv_proj.bias.abs().sum() > 0  # the parity tests exercise the bias path
    llama = make_engine(tiny_dirs["llama"]).model.model.layers[0].self_attn
    assert llama.qkv_proj is not None and llama.qkv_proj.bias is None
