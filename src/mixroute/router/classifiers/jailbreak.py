"""Jailbreak / prompt-injection probability of a prompt, with the artifact's threshold."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.head import ARTIFACTS_DIR, LinearHead, featurize


class JailbreakClassifier:
    """`predict(texts, embeddings) -> [probability]`; `threshold` comes with the artifact
    (chosen on the validation splits for a false-positive rate under 2%)."""

    def __init__(
        self, artifact: Path = ARTIFACTS_DIR / "jailbreak", featurizer: Featurizer | None = None
    ) -> None:
        self.artifact = artifact
        self.featurizer = featurizer or Featurizer()
        self._head: LinearHead | None = None
        self._lock = threading.Lock()

    def load(self) -> LinearHead:
        with self._lock:
            if self._head is None:
                self._head = LinearHead.load(self.artifact)
            return self._head

    @property
    def threshold(self) -> float:
        return float(self.load().meta["threshold"])

    def predict(self, texts: list[str], embeddings: np.ndarray) -> list[float]:
        if not texts:
            return []
        proba = self.load().probabilities(featurize(self.featurizer, texts), embeddings)
        return [float(p) for p in proba[:, 0]]

    def is_jailbreak(self, texts: list[str], embeddings: np.ndarray) -> list[bool]:
        threshold = self.threshold
        return [p > threshold for p in self.predict(texts, embeddings)]
