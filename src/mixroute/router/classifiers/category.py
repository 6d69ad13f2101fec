"""Domain category of a prompt: one of the 14 MMLU-Pro categories, with a confidence.

The head may be trained on finer labels (the 57 MMLU subjects); its artifact then
maps each label to a category and a category's probability is the sum of its
labels' probabilities.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.head import ARTIFACTS_DIR, LinearHead, featurize


class CategoryClassifier:
    """`predict(texts, embeddings) -> [(category, probability)]`; artifact loaded lazily."""

    def __init__(
        self, artifact: Path = ARTIFACTS_DIR / "category", featurizer: Featurizer | None = None
    ) -> None:
        self.artifact = artifact
        self.featurizer = featurizer or Featurizer()
        self._head: LinearHead | None = None
        self._categories: list[str] = []
        self._group: np.ndarray = np.zeros(0, dtype=np.int64)
        self._lock = threading.Lock()

    def load(self) -> LinearHead:
        with self._lock:
            if self._head is None:
                head = LinearHead.load(self.artifact)
                categories = list(head.meta.get("categories", head.labels))
                mapping = head.meta.get("label_to_category", {c: c for c in head.labels})
                try:
                    group = [categories.index(mapping[label]) for label in head.labels]
                except (KeyError, ValueError) as exc:
                    raise ConfigError(f"{self.artifact}: label without a category: {exc}") from exc
                self._categories, self._group = categories, np.array(group, dtype=np.int64)
                self._head = head
            return self._head

    @property
    def categories(self) -> list[str]:
        self.load()
        return list(self._categories)

    def probabilities(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        """[n, num_categories] probabilities, columns in `categories` order."""
        head = self.load()
        proba = head.probabilities(featurize(self.featurizer, texts), embeddings)
        out = np.zeros((proba.shape[0], len(self._categories)), dtype=np.float32)
        np.add.at(out.T, self._group, proba.T)
        return out

    def predict(self, texts: list[str], embeddings: np.ndarray) -> list[tuple[str, float]]:
        if not texts:
            return []
        proba = self.probabilities(texts, embeddings)
        best = proba.argmax(axis=1)
        return [(self._categories[k], float(proba[i, k])) for i, k in enumerate(best)]
