"""Domain category of a prompt: one of the 14 MMLU-Pro categories, with a confidence.

The head may be trained on finer labels (the 57 MMLU subjects); its artifact then
maps each label to a category and a category's probability is the sum of its
labels' probabilities. Two optional parts, named in the head's json:
- `neighbours` {artifact, k, temperature, weight}: the category vote of the prompt's
  nearest training questions (`neighbours.py`) is blended in:
  p = (1 - weight) * p_head + weight * p_vote;
- `calibration` {offsets, temperature}: p = softmax((log p + offsets) / temperature),
  per-category offsets tuned for accuracy and a temperature fitted for calibration.

With a `refiner` (`refiner.py`), prompts whose top probability stays below
`refine_below` (default 0: never; None: `decisive_level(w)`) are also read by the
fine-tuned transformer and the two are averaged: p = (1 - w) * p + w * p_refiner, w the
caller's `weight` (default: the refiner's).
Given the caller's confidence `threshold` (under it the router ignores the category),
prompts that even a unanimous refiner could not lift to it, (1 - w) * top + w < threshold,
are not read: the decision would be the same.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.head import ARTIFACTS_DIR, LinearHead, featurize
from mixroute.router.classifiers.neighbours import NeighbourIndex
from mixroute.router.classifiers.refiner import CategoryRefiner, decisive_level


def refined(top: np.ndarray, weight: float, refine_below: float, threshold: float = 0.0) -> np.ndarray:
    """Which rows (head top probability `top`) the refiner reads: under `refine_below`, and
    liftable to `threshold` by a unanimous refiner at `weight`."""
    return (top < refine_below) & ((1.0 - weight) * top + weight >= threshold)


class CategoryClassifier:
    """`predict(texts, embeddings) -> [(category, probability)]`; artifact loaded lazily."""

    def __init__(
        self,
        artifact: Path = ARTIFACTS_DIR / "category",
        featurizer: Featurizer | None = None,
        refiner: CategoryRefiner | None = None,
    ) -> None:
        self.artifact = artifact
        self.featurizer = featurizer or Featurizer()
        self.refiner = refiner
        self._head: LinearHead | None = None
        self._categories: list[str] = []
        self._group: np.ndarray = np.zeros(0, dtype=np.int64)
        self._neighbours: NeighbourIndex | None = None
        self._neighbour_weight = 0.0
        self._offsets: np.ndarray | None = None
        self._temperature = 1.0
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
                self._load_extras(head)
                self._head = head
            return self._head

    def _load_extras(self, head: LinearHead) -> None:
        num = len(self._categories)
        try:
            neighbours = head.meta.get("neighbours")
            if neighbours:
                self._neighbours = NeighbourIndex.load(
                    self.artifact.parent / str(neighbours["artifact"]),
                    num,
                    int(neighbours["k"]),
                    float(neighbours["temperature"]),
                )
                self._neighbour_weight = float(neighbours["weight"])
            calibration = head.meta.get("calibration")
            if calibration:
                offsets = np.asarray(calibration["offsets"], dtype=np.float32)
                if offsets.shape != (num,):
                    raise ConfigError(f"{self.artifact}: calibration needs {num} offsets")
                self._offsets, self._temperature = offsets, float(calibration["temperature"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.artifact}: bad neighbours/calibration entry: {exc}") from exc
        if not 0.0 <= self._neighbour_weight <= 1.0 or self._temperature <= 0:
            raise ConfigError(
                f"{self.artifact}: neighbour weight must be in [0, 1], temperature > 0"
            )

    @property
    def categories(self) -> list[str]:
        self.load()
        return list(self._categories)

    def probabilities(
        self, texts: list[str], embeddings: np.ndarray, refine_below: float | None = 0.0,
        threshold: float = 0.0, weight: float | None = None,
    ) -> np.ndarray:
        """[n, num_categories] probabilities, columns in `categories` order; rows whose top
        probability is below `refine_below` get the refiner's second opinion, unless it
        could not lift them to `threshold`."""
        head = self.load()
        features = featurize(self.featurizer, texts)
        proba = head.probabilities(features, embeddings)
        out: np.ndarray = np.zeros((proba.shape[0], len(self._categories)), dtype=np.float32)
        np.add.at(out.T, self._group, proba.T)
        if self._neighbours is not None and self._neighbour_weight > 0:
            votes = self._neighbours.vote(features)
            out = (1.0 - self._neighbour_weight) * out + self._neighbour_weight * votes
        if self._offsets is not None:
            scaled = (np.log(np.clip(out, 1e-12, 1.0)) + self._offsets) / self._temperature
            scaled -= scaled.max(axis=1, keepdims=True)
            out = np.exp(scaled)
            out /= out.sum(axis=1, keepdims=True)
        if self.refiner is None:
            return out.astype(np.float32)
        weight = self.refiner.weight if weight is None else weight
        if refine_below is None:
            refine_below = decisive_level(weight)
        unsure = np.flatnonzero(refined(out.max(axis=1), weight, refine_below, threshold))
        if len(unsure):
            second = self.refiner.probabilities(
                [texts[i] for i in unsure], self._categories, [features[i].token_ids for i in unsure]
            )
            out[unsure] = (1.0 - weight) * out[unsure] + weight * second
        return out.astype(np.float32)

    def predict(
        self, texts: list[str], embeddings: np.ndarray, refine_below: float | None = 0.0,
        threshold: float = 0.0, weight: float | None = None,
    ) -> list[tuple[str, float]]:
        if not texts:
            return []
        proba = self.probabilities(texts, embeddings, refine_below, threshold, weight)
        best = proba.argmax(axis=1)
        return [(self._categories[k], float(proba[i, k])) for i, k in enumerate(best)]
