"""Build tiny random-weight Llama / Qwen2 models with a real tokenizer, fully offline.

The tokenizer is a byte-level BPE trained on a few lines of built-in text, saved with a
ChatML chat template, so the frontend's chat templating and detokenizing paths run for
real. Weights are random but seeded, so two builds with the same arguments are identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Explain neural networks in simple terms: layers of weighted sums and nonlinearities.",
    "def add(a, b): return a + b  # numbers 0 1 2 3 4 5 6 7 8 9",
    "You are a helpful assistant. Answer the question step by step.",
    "My SSN is 123-45-6789 and my email is someone@example.com.",
] * 20

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(path: Path, vocab_size: int = 512):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_tiny_model(
    path: str | Path,
    arch: Literal["llama", "qwen2"] = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight model + tokenizer to `path` (skipped if already there)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
    }
    torch.manual_seed(seed)
    model: torch.nn.Module
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"unknown arch {arch!r}; use 'llama' or 'qwen2'")
    # Random init gives near-uniform logits; scale up so greedy choices are well separated
    # and parity tests are not decided by float rounding.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
            elif name.endswith(".bias"):
                # HF initializes biases to zero, which would leave Qwen2's q/k/v bias path
                # untested; give them real values.
                p.normal_(0.0, 0.5)
    model.to(getattr(torch, dtype)).save_pretrained(path, safe_serialization=True)
    return path
