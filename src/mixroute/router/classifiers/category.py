"""Domain category of a prompt: one of the 14 MMLU-Pro categories, with a confidence."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mixroute.router.classifiers.head import ARTIFACTS_DIR, LinearHead


class CategoryClassifier:
    """`predict(texts, embeddings) -> [(category, probability)]`; artifact loaded lazily."""

    def __init__(self, artifact: Path = ARTIFACTS_DIR / "category") -> None:
        self.artifact = artifact
        self._head: LinearHead | None = None
        self._lock = threading.Lock()

    def load(self) -> LinearHead:
        with self._lock:
            if self._head is None:
                self._head = LinearHead.load(self.artifact)
            return self._head

    @property
    def categories(self) -> list[str]:
        return list(self.load().labels)

    def probabilities(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        """[n, 14] probabilities, columns in `categories` order."""
        return self.load().probabilities(texts, embeddings)

    def predict(self, texts: list[str], embeddings: np.ndarray) -> list[tuple[str, float]]:
        if not texts:
            return []
        head = self.load()
        proba = head.probabilities(texts, embeddings)
        best = proba.argmax(axis=1)
        return [(head.labels[k], float(proba[i, k])) for i, k in enumerate(best)]
