"""Jailbreak / prompt-injection probability of a prompt, with the artifact's threshold.

The linear head's probability can be blended with a vote of the prompt's nearest
labelled training prompts (`neighbours.py`; named in the head's json as `neighbours`
{artifact, k, temperature, weight}): p = (1 - weight) * p_head + weight * p_vote. Attack
corpora are full of templates and near-copies; the vote says "this prompt is a near copy
of those attacks (or of those benign prompts)", which a linear model over n-grams only
approximates. A prompt sharing no indexed n-gram with any row keeps p_head.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.head import ARTIFACTS_DIR, LinearHead, featurize
from mixroute.router.classifiers.neighbours import NeighbourIndex


class JailbreakClassifier:
    """`predict(texts, embeddings) -> [probability]`; `threshold` comes with the artifact
    (chosen on validation data only; the rule is in the artifact's json)."""

    def __init__(
        self, artifact: Path = ARTIFACTS_DIR / "jailbreak", featurizer: Featurizer | None = None
    ) -> None:
        self.artifact = artifact
        self.featurizer = featurizer or Featurizer()
        self._head: LinearHead | None = None
        self._neighbours: NeighbourIndex | None = None
        self._neighbour_weight = 0.0
        self._lock = threading.Lock()

    def load(self) -> LinearHead:
        with self._lock:
            if self._head is None:
                head = LinearHead.load(self.artifact)
                self._load_neighbours(head)
                self._head = head
            return self._head

    def _load_neighbours(self, head: LinearHead) -> None:
        entry = head.meta.get("neighbours")
        if not entry:
            return
        try:
            index = NeighbourIndex.load(
                self.artifact.parent / str(entry["artifact"]),
                2,
                int(entry["k"]),
                float(entry["temperature"]),
            )
            weight = float(entry["weight"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.artifact}: bad neighbours entry: {exc}") from exc
        if not 0.0 <= weight <= 1.0 or index.temperature <= 0 or index.k < 1:
            raise ConfigError(f"{self.artifact}: neighbour weight must be in [0, 1], k >= 1, temperature > 0")
        self._neighbours, self._neighbour_weight = index, weight

    @property
    def threshold(self) -> float:
        return float(self.load().meta["threshold"])

    def predict(self, texts: list[str], embeddings: np.ndarray) -> list[float]:
        if not texts:
            return []
        head = self.load()
        features = featurize(self.featurizer, texts)
        proba = head.probabilities(features, embeddings)[:, 0]
        if self._neighbours is not None and self._neighbour_weight > 0:
            votes = self._neighbours.vote_or(features, np.stack([1.0 - proba, proba], axis=1))
            proba = (1.0 - self._neighbour_weight) * proba + self._neighbour_weight * votes[:, 1]
        return [float(p) for p in proba]

    def is_jailbreak(self, texts: list[str], embeddings: np.ndarray) -> list[bool]:
        threshold = self.threshold
        return [p > threshold for p in self.predict(texts, embeddings)]
