"""A linear classifier head over MiniLM embeddings plus TF-IDF features, in numpy.

Artifact = two files with one stem, written by scripts/train_router_classifiers.py:
- `<stem>.npz`: `emb_weight` [384, k], `bias` [k], per TF-IDF block i
  `tfidf{i}_idf` [v_i], `tfidf{i}_weight` [v_i, k] (int8 with `tfidf{i}_scale` [k]
  when k > 1, float16 for a single output);
- `<stem>.json`: `labels`, `output` ("softmax" | "sigmoid"), `emb_scale`, the TF-IDF
  blocks' settings and vocabularies, plus head-specific fields (threshold, label
  groups, training metrics) that the owning classifier reads.

No pickle anywhere: arrays are loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.tfidf import TfidfFeatures

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"


@dataclass(slots=True)
class LinearHead:
    labels: list[str]
    output: str
    emb_weight: np.ndarray
    bias: np.ndarray
    tfidf: list[tuple[TfidfFeatures, np.ndarray]]
    max_chars: int
    meta: dict[str, Any]

    @classmethod
    def load(cls, stem: Path) -> LinearHead:
        npz_path, json_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
        if not npz_path.is_file() or not json_path.is_file():
            raise ConfigError(
                f"classifier artifact {stem} is missing; "
                "run python3 scripts/train_router_classifiers.py"
            )
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        with np.load(npz_path, allow_pickle=False) as arrays:
            emb_weight = arrays["emb_weight"].astype(np.float32) * float(meta["emb_scale"])
            bias = arrays["bias"].astype(np.float32)
            tfidf = []
            for i, block in enumerate(meta["tfidf"]):
                features = TfidfFeatures(
                    block["vocabulary"],
                    arrays[f"tfidf{i}_idf"],
                    analyzer=block["analyzer"],
                    ngram_range=(block["ngram_range"][0], block["ngram_range"][1]),
                    sublinear_tf=block["sublinear_tf"],
                )
                weight = arrays[f"tfidf{i}_weight"].astype(np.float32)
                if f"tfidf{i}_scale" in arrays:
                    weight *= arrays[f"tfidf{i}_scale"].astype(np.float32)
                tfidf.append((features, weight))

        if meta["output"] not in ("softmax", "sigmoid"):
            raise ConfigError(f"{json_path}: output must be softmax or sigmoid")
        max_chars = int(meta.get("max_chars", 4000))
        return cls(meta["labels"], meta["output"], emb_weight, bias, tfidf, max_chars, meta)

    def logits(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        if embeddings.shape != (len(texts), self.emb_weight.shape[0]):
            raise ValueError(
                f"embeddings shape {embeddings.shape} does not match "
                f"{len(texts)} texts x {self.emb_weight.shape[0]} dims"
            )
        out = embeddings.astype(np.float32) @ self.emb_weight + self.bias
        # Training truncated the same way: long prompts cost no more than max_chars.
        clipped = [text[: self.max_chars] for text in texts]
        for features, weight in self.tfidf:
            out += features.project(clipped, weight)
        return out

    def probabilities(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        logits = self.logits(texts, embeddings)
        if self.output == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)
