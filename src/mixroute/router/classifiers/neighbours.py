"""Nearest training questions of a prompt, by TF-IDF cosine over token 1-2-grams.

The category head is linear; a vote of the prompt's nearest labelled questions adds
what a linear model cannot express: "this prompt is a near copy of those questions".
The index is an inverted file: for each n-gram key (token uni/bigrams, the most common
ones left out, since they only make every posting list long), the rows of the labelled
questions that contain it and their l2-normalised TF-IDF value. A query touches only
the postings of its own n-grams (~10k entries for an MMLU question), so a vote costs
about 0.1 ms in numpy.

Artifact (`<stem>.npz`, written by scripts/train_router_classifiers.py):
`keys` int64 [F] sorted n-gram keys, `idf` float16 [F], `indptr` int64 [F+1] (postings
of key f are `rows[indptr[f]:indptr[f+1]]`), `rows` uint16 [nnz], `values` uint8 [nnz]
(cosine terms x 255), `labels` uint8 [num_rows] (the class of every indexed row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.featurizer import (
    TAG_CHAR,
    TAG_SHIFT,
    TAG_TOKEN,
    TAG_TOKEN_BIGRAM,
    TextFeatures,
)
from mixroute.router.classifiers.head import NgramVocabulary

NEIGHBOUR_BLOCKS: list[list[int]] = [[TAG_TOKEN, TAG_TOKEN_BIGRAM]]
_VALUE_SCALE = 255.0
_FIRST_BYTE_KEY = TAG_CHAR << TAG_SHIFT
assert max(TAG_TOKEN, TAG_TOKEN_BIGRAM) < TAG_CHAR


@dataclass(slots=True)
class NeighbourIndex:
    """`vote(features) -> [n, num_classes]`: similarity-weighted class votes of the
    `k` nearest indexed rows (weights exp((cos - best cos) / temperature); rows with
    cosine 0 do not vote)."""

    vocabulary: NgramVocabulary
    indptr: np.ndarray  # int64 [F + 1]
    rows: np.ndarray  # int64 [nnz]
    values: np.ndarray  # float32 [nnz]
    labels: np.ndarray  # int64 [num_rows]
    num_classes: int
    k: int
    temperature: float

    @classmethod
    def build(
        cls,
        vocabulary: NgramVocabulary,
        matrix: object,
        labels: np.ndarray,
        num_classes: int,
        k: int,
        temperature: float,
    ) -> NeighbourIndex:
        """From a scipy sparse [num_rows, F] matrix of l2-normalised rows (training)."""
        csc = matrix.tocsc()  # type: ignore[attr-defined]
        csc.sort_indices()
        values = np.round(csc.data * _VALUE_SCALE) / _VALUE_SCALE
        return cls(
            vocabulary,
            csc.indptr.astype(np.int64),
            csc.indices.astype(np.int64),
            values.astype(np.float32),
            labels.astype(np.int64),
            num_classes,
            k,
            temperature,
        )

    def save(self, stem: Path) -> None:
        if self.labels.size > np.iinfo(np.uint16).max + 1:
            raise ValueError("the index stores row ids as uint16: at most 65536 rows")
        np.savez_compressed(
            stem.with_suffix(".npz"),
            keys=self.vocabulary.keys,
            idf=self.vocabulary.idf.astype(np.float16),
            indptr=self.indptr,
            rows=self.rows.astype(np.uint16),
            values=np.round(self.values * _VALUE_SCALE).astype(np.uint8),
            labels=self.labels.astype(np.uint8),
        )

    @classmethod
    def load(cls, stem: Path, num_classes: int, k: int, temperature: float) -> NeighbourIndex:
        path = stem.with_suffix(".npz")
        if not path.is_file():
            raise ConfigError(
                f"neighbour index {path} is missing; run scripts/train_router_classifiers.py"
            )
        with np.load(path, allow_pickle=False) as arrays:
            vocabulary = NgramVocabulary.build(arrays["keys"], arrays["idf"], NEIGHBOUR_BLOCKS)
            indptr = arrays["indptr"].astype(np.int64)
            rows = arrays["rows"].astype(np.int64)
            values = arrays["values"].astype(np.float32) / _VALUE_SCALE
            labels = arrays["labels"].astype(np.int64)
        if (
            indptr.size != vocabulary.keys.size + 1
            or indptr[-1] != rows.size
            or rows.size != values.size
        ):
            raise ConfigError(f"neighbour index {path} is inconsistent (indptr/rows/values sizes)")
        if labels.size and (labels.max() >= num_classes or rows.max(initial=0) >= labels.size):
            raise ConfigError(f"neighbour index {path} has a label or row out of range")
        return cls(vocabulary, indptr, rows, values, labels, num_classes, k, temperature)

    def similarities(self, features: TextFeatures) -> np.ndarray | None:
        """Cosine of the prompt with every indexed row ([num_rows] float32); None when
        the prompt shares no indexed n-gram with any row."""
        # Keys are sorted with the tag in the top byte: token n-grams come before the byte
        # n-grams, which this index never holds, so only that prefix is looked up.
        end = int(np.searchsorted(features.keys, _FIRST_BYTE_KEY))
        tokens = TextFeatures(features.token_ids, features.keys[:end], features.counts[:end])
        cols, query = self.vocabulary.tfidf(tokens)
        if not cols.size:
            return None
        starts = self.indptr[cols]
        lengths = self.indptr[cols + 1] - starts
        total = int(lengths.sum())
        if not total:
            return None
        # Positions of every posting of the query's keys, without a Python loop.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        weights = self.values[offsets] * np.repeat(query, lengths)
        return np.bincount(self.rows[offsets], weights, minlength=self.labels.size)

    def nearest(self, features: TextFeatures) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows and cosines of the prompt's (at most `k`) nearest indexed rows among those
        with a positive cosine; None when no row shares an n-gram with the prompt. The
        search runs over the rows the prompt touches only: `argpartition` over the whole
        index is slow when most cosines tie at 0 (~0.7 ms at 20k rows)."""
        sims = self.similarities(features)
        if sims is None:
            return None
        candidates = np.flatnonzero(sims > 0)
        if not candidates.size:
            return None
        k = min(self.k, candidates.size)
        top = candidates[np.argpartition(sims[candidates], candidates.size - k)[candidates.size - k :]]
        return top, sims[top]

    def vote_or(self, features: list[TextFeatures], fallback: np.ndarray) -> np.ndarray:
        """Like `vote`, but a prompt that shares no n-gram with any row keeps its row of
        `fallback` ([n, num_classes], e.g. the head's own probabilities) instead of a
        uniform vote."""
        out = np.array(fallback, dtype=np.float32, copy=True)
        for i, feats in enumerate(features):
            found = self.nearest(feats)
            if found is None:
                continue
            top, best = found
            weights = np.exp((best - best.max()) / self.temperature)
            row = np.bincount(self.labels[top], weights, minlength=self.num_classes)
            out[i] = row / row.sum()
        return out

    def vote(self, features: list[TextFeatures]) -> np.ndarray:
        """[n, num_classes] class distribution of each prompt's nearest rows (uniform
        when the prompt shares no n-gram with any row)."""
        out = np.full((len(features), self.num_classes), 1.0 / self.num_classes, dtype=np.float32)
        num_rows = self.labels.size
        k = min(self.k, num_rows)
        for i, feats in enumerate(features):
            sims = self.similarities(feats)
            if sims is None or k == 0:
                continue
            top = np.argpartition(sims, num_rows - k)[num_rows - k :]
            best = sims[top]
            # A row sharing nothing with the prompt (cosine 0) has no say, whatever k is.
            weights = np.exp((best - best.max()) / self.temperature) * (best > 0)
            row = np.bincount(self.labels[top], weights, minlength=self.num_classes)
            out[i] = row / row.sum()
        return out
