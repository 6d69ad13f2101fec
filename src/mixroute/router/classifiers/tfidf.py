"""TF-IDF features in plain Python/numpy, matching scikit-learn's `TfidfVectorizer`.

The training script fits scikit-learn's vectorizer, exports its vocabulary and idf
weights, and checks that `TfidfFeatures.transform` reproduces its output; the
router then needs neither scikit-learn nor a pickle at run time. Supported settings
are the ones the heads use: lowercase, word n-grams from the default token pattern
or `char_wb` n-grams, `sublinear_tf`, smooth idf, l2 norm.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"(?u)\b\w\w+\b")
_SPACES = re.compile(r"\s\s+")


@dataclass(frozen=True, slots=True)
class SparseRow:
    """One l2-normalised row: feature indices and their weights."""

    indices: np.ndarray  # int64
    values: np.ndarray  # float32


class TfidfFeatures:
    def __init__(
        self,
        vocabulary: list[str],
        idf: np.ndarray,
        *,
        analyzer: str,
        ngram_range: tuple[int, int],
        sublinear_tf: bool,
    ) -> None:
        if analyzer not in ("word", "char_wb"):
            raise ValueError(f"unsupported analyzer {analyzer!r}")
        if len(vocabulary) != idf.shape[0]:
            raise ValueError("vocabulary and idf lengths differ")
        self.index = {term: i for i, term in enumerate(vocabulary)}
        self.idf = idf.astype(np.float32)
        self.analyzer = analyzer
        self.ngram_range = ngram_range
        self.sublinear_tf = sublinear_tf

    @property
    def num_features(self) -> int:
        return int(self.idf.shape[0])

    def _word_ngrams(self, text: str) -> list[str]:
        tokens = _WORD.findall(text.lower())
        low, high = self.ngram_range
        grams: list[str] = []
        for n in range(low, high + 1):
            grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        return grams

    def _char_wb_ngrams(self, text: str) -> list[str]:
        text = _SPACES.sub(" ", text.lower())
        low, high = self.ngram_range
        grams: list[str] = []
        for word in text.split():
            padded = f" {word} "
            for n in range(low, high + 1):
                # scikit-learn emits a word shorter than n once, whole, then stops.
                grams.extend(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))
                if len(padded) <= n:
                    break
        return grams

    def transform_one(self, text: str) -> SparseRow:
        grams = self._word_ngrams(text) if self.analyzer == "word" else self._char_wb_ngrams(text)
        counts: dict[int, int] = {}
        for gram in grams:
            j = self.index.get(gram)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return SparseRow(np.zeros(0, np.int64), np.zeros(0, np.float32))
        indices = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        if self.sublinear_tf:
            tf = (np.log(tf) + 1.0).astype(np.float32)
        values = tf * self.idf[indices]
        norm = math.sqrt(float(np.dot(values, values)))
        if norm > 0:
            values /= norm
        return SparseRow(indices, values.astype(np.float32))

    def project(self, texts: list[str], weight: np.ndarray) -> np.ndarray:
        """`tfidf(texts) @ weight` ([n, k]) without building the sparse matrix."""
        out = np.zeros((len(texts), weight.shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            sparse = self.transform_one(text)
            if sparse.indices.size:
                out[row] = sparse.values @ weight[sparse.indices].astype(np.float32)
        return out
