"""Load a Hugging Face model directory (config.json + safetensors) into LlamaForCausalLM."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from mixroute.engine.model.config import ModelConfig
from mixroute.engine.model.llama import LlamaForCausalLM
from mixroute.errors import ConfigError

log = logging.getLogger(__name__)

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_model(
    model_dir: str | Path, device: torch.device, dtype: torch.dtype, *, fuse: bool = True
) -> LlamaForCausalLM:
    model_dir = Path(model_dir)
    cfg = ModelConfig.from_dir(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors in {model_dir}; convert the checkpoint to safetensors first")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(str(file), device="cpu").items():
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            state[name] = tensor.to(device=device, dtype=dtype)
    if "lm_head.weight" not in state:
        if not cfg.tie_word_embeddings and "model.embed_tokens.weight" not in state:
            raise ConfigError(f"{model_dir}: checkpoint has neither lm_head.weight nor tied embeddings")
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    # Build on the meta device so no memory is spent on a random init we overwrite.
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ConfigError(f"{model_dir}: weights do not match the architecture: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.eval()
    if fuse:
        model.fuse()
    log.info("loaded model dir=%s layers=%d dtype=%s device=%s", model_dir, cfg.num_layers, dtype, device)
    return model
