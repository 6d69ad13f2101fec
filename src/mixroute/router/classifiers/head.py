"""A linear classifier head over [sentence embedding, n-gram TF-IDF], in numpy.

logits = embedding @ emb_weight + tfidf(text) @ weight + bias, where tfidf(text) has
one l2-normalised block per group of n-gram tags (token uni+bigrams; byte 3-5-grams),
sublinear tf and the idf of the training texts: scikit-learn's TfidfVectorizer
recipe, over `featurizer` keys instead of strings.

Artifact = two files with one stem, written by scripts/train_router_classifiers.py:
- `<stem>.npz`: `emb_weight` [dim, k] float16, `bias` [k], `keys` [F] int64 (sorted
  n-gram keys), `idf` [F] float16, `weight` [F, k] (int8 with `scale` [k] when k > 1,
  float16 for a single output);
- `<stem>.json`: `labels`, `output` ("softmax" | "sigmoid"), `blocks` (lists of tags),
  `embedder` (which embedder's vectors it was trained on, and their dim), plus
  head-specific fields (threshold, label groups, training notes) that the owning
  classifier reads.

No pickle anywhere: arrays are loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.featurizer import BatchFeatures, Featurizer, TextFeatures, tag_of

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"


@dataclass(slots=True)
class NgramVocabulary:
    """The n-grams a head knows, their idf and block; maps a prompt to TF-IDF values."""

    keys: np.ndarray  # int64 [F], sorted
    idf: np.ndarray  # float32 [F]
    block_of_row: np.ndarray  # int64 [F]
    num_blocks: int

    @classmethod
    def build(cls, keys: np.ndarray, idf: np.ndarray, blocks: list[list[int]]) -> NgramVocabulary:
        block_of_tag = np.full(256, -1, dtype=np.int64)
        for b, tags in enumerate(blocks):
            block_of_tag[tags] = b
        block_of_row = block_of_tag[tag_of(keys)]
        if keys.size and (block_of_row < 0).any():
            raise ConfigError("n-gram vocabulary holds a key whose tag is in no block")
        if keys.size > 1 and not (np.diff(keys) > 0).all():
            raise ConfigError("n-gram vocabulary keys must be sorted and unique")
        return cls(keys.astype(np.int64), idf.astype(np.float32), block_of_row, len(blocks))

    def tfidf(self, features: TextFeatures) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of the prompt's known n-grams; each block l2-normalised."""
        if not self.keys.size or not features.keys.size:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        pos = np.searchsorted(self.keys, features.keys)
        pos[pos == self.keys.size] = 0
        hit = self.keys[pos] == features.keys
        rows = pos[hit]
        values = (1.0 + np.log(features.counts[hit])) * self.idf[rows]
        block = self.block_of_row[rows]
        norms = np.sqrt(np.bincount(block, values * values, minlength=self.num_blocks))
        norms[norms == 0] = 1.0
        return rows, (values / norms[block]).astype(np.float32)

    def batch_tfidf(self, batch: BatchFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`tfidf` of every text of `batch` at once: (text of each value, vocabulary row, value)."""
        if not self.keys.size or not batch.keys.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        pos = np.searchsorted(self.keys, batch.keys)
        pos[pos == self.keys.size] = 0
        hit = self.keys[pos] == batch.keys
        rows, texts = pos[hit], batch.rows[hit]
        values = (1.0 + np.log(batch.counts[hit])) * self.idf[rows]
        slot = texts * self.num_blocks + self.block_of_row[rows]
        norms = np.sqrt(np.bincount(slot, values * values, minlength=len(batch) * self.num_blocks))
        norms[norms == 0] = 1.0
        return texts, rows, (values / norms[slot]).astype(np.float32)


@dataclass(slots=True)
class LinearHead:
    labels: list[str]
    output: str
    emb_weight: np.ndarray  # float32 [dim, k]
    bias: np.ndarray  # float32 [k]
    vocabulary: NgramVocabulary
    weight: np.ndarray  # float32 [F, k]
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
        if meta.get("output") not in ("softmax", "sigmoid"):
            raise ConfigError(f"{json_path}: output must be softmax or sigmoid")
        with np.load(npz_path, allow_pickle=False) as arrays:
            emb_weight = arrays["emb_weight"].astype(np.float32)
            bias = arrays["bias"].astype(np.float32)
            weight = arrays["weight"].astype(np.float32)
            if "scale" in arrays:
                weight *= arrays["scale"].astype(np.float32)
            vocabulary = NgramVocabulary.build(arrays["keys"], arrays["idf"], meta["blocks"])
        return cls(meta["labels"], meta["output"], emb_weight, bias, vocabulary, weight, meta)

    @property
    def embedder_kind(self) -> str:
        return str(self.meta.get("embedder", {}).get("kind", "static"))

    def logits(self, features: list[TextFeatures], embeddings: np.ndarray) -> np.ndarray:
        if embeddings.shape != (len(features), self.emb_weight.shape[0]):
            raise ValueError(
                f"embeddings shape {embeddings.shape} does not match {len(features)} texts x "
                f"{self.emb_weight.shape[0]} dims (this head was trained on the "
                f"{self.embedder_kind} embedder)"
            )
        out = embeddings.astype(np.float32) @ self.emb_weight + self.bias
        for row, feats in enumerate(features):
            rows, values = self.vocabulary.tfidf(feats)
            if rows.size:
                out[row] += values @ self.weight[rows]
        return out

    def batch_logits(self, batch: BatchFeatures, embeddings: np.ndarray) -> np.ndarray:
        """`logits` of many texts from their `BatchFeatures` (one pass, no loop per text)."""
        out = embeddings.astype(np.float32) @ self.emb_weight + self.bias
        texts, rows, values = self.vocabulary.batch_tfidf(batch)
        for column in range(out.shape[1]):
            out[:, column] += np.bincount(texts, values * self.weight[rows, column], minlength=len(batch))
        return out

    def probabilities(self, features: list[TextFeatures], embeddings: np.ndarray) -> np.ndarray:
        return self._activate(self.logits(features, embeddings))

    def batch_probabilities(self, batch: BatchFeatures, embeddings: np.ndarray) -> np.ndarray:
        return self._activate(self.batch_logits(batch, embeddings))

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        if self.output == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def featurize(featurizer: Featurizer, texts: list[str]) -> list[TextFeatures]:
    return [featurizer.features(text) for text in texts]
