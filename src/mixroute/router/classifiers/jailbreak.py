"""Jailbreak / prompt-injection probability of a prompt, with the artifact's threshold.

The linear head's probability can be blended with a vote of the prompt's nearest
labelled training prompts (`neighbours.py`; named in the head's json as `neighbours`
{artifact, k, temperature, weight}): p = (1 - weight) * p_head + weight * p_vote. Attack
corpora are full of templates and near-copies; the vote says "this prompt is a near copy
of those attacks (or of those benign prompts)", which a linear model over n-grams only
approximates. A prompt sharing no indexed n-gram with any row keeps p_head.

Sentence scan: a whole-prompt score hides a short attack inside longer benign text (a
one-line injection after an exam question scores like the question). So a prompt of
several sentences is also scored sentence by sentence by a second head
(`jailbreak_sentences`, trained with the sentences of benign prompts as benign), and the
most suspicious sentence counts: its score s is mapped onto the whole-prompt scale so
that its own threshold t_s lands on the prompt threshold t (piecewise linear, s = t_s ->
t), and the prompt's probability is max(p, mapped s). Both thresholds were chosen
together on validation data (jailbreak_training.train_sentence_head).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.classifiers.featurizer import Featurizer, batch_keys, clip_text
from mixroute.router.classifiers.head import ARTIFACTS_DIR, LinearHead, featurize
from mixroute.router.classifiers.neighbours import NeighbourIndex

SENTENCES_ARTIFACT = "jailbreak_sentences"
SENTENCE_MAX_CHARS = 300
_SENTENCE_BATCH = 8192  # sentences featurised in one batch (batch_keys takes at most 65535)
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n+")


def sentences(text: str, max_chars: int = SENTENCE_MAX_CHARS) -> list[str]:
    """The text's sentences: split after . ! ? : ; followed by a space, and at line breaks;
    a longer piece is cut at a space before `max_chars` (or at `max_chars`)."""
    out = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip()
        while len(piece) > max_chars:
            cut = piece.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            out.append(piece[:cut])
            piece = piece[cut:].strip()
        if piece:
            out.append(piece)
    return out


def onto_prompt_scale(score: np.ndarray, sentence_threshold: float, threshold: float) -> np.ndarray:
    """Piecewise-linear, increasing map of [0, 1] onto itself taking `sentence_threshold` to
    `threshold`: a sentence is flagged exactly when its mapped score passes the prompt's."""
    low = score * (threshold / sentence_threshold)
    high = threshold + (score - sentence_threshold) * ((1.0 - threshold) / (1.0 - sentence_threshold))
    return np.where(score <= sentence_threshold, low, high)


def sentence_maxima(head: LinearHead, texts: list[str], featurizer: Featurizer, embedder: Any) -> np.ndarray:
    """Per text, the sentence head's highest probability over its sentences; 0 for a text
    of one sentence (its whole-prompt score already is that sentence's). A text over
    `featurizer.MAX_CHARS` is scanned in its head and tail, as the prompt score reads it:
    the cost grows with the text (~60 us a sentence here) up to that bound."""
    out = np.zeros(len(texts))
    pieces: list[str] = []
    owners: list[int] = []

    def score() -> None:
        ids = featurizer.token_ids(pieces)
        scores = head.batch_probabilities(batch_keys(pieces, ids), embedder.encode_ids(ids))[:, 0]
        np.maximum.at(out, np.array(owners), scores)
        pieces.clear()
        owners.clear()

    for row, text in enumerate(texts):
        split = sentences(clip_text(text))  # the whole-prompt score's bound on cost, too
        if len(split) > 1:
            pieces += split
            owners += [row] * len(split)
            if len(pieces) >= _SENTENCE_BATCH:
                score()
    if pieces:
        score()
    return out


class JailbreakClassifier:
    """`predict(texts, embeddings) -> [probability]`; `threshold` comes with the artifact
    (chosen on validation data only; the rule is in the artifact's json)."""

    def __init__(
        self,
        artifact: Path = ARTIFACTS_DIR / "jailbreak",
        featurizer: Featurizer | None = None,
        embedder: Any = None,
        *,
        scan_sentences: bool = True,
    ) -> None:
        self.artifact = artifact
        self.featurizer = featurizer or Featurizer()
        self.embedder = embedder
        """Embeds the sentences of the scan (the static `Embedder`; made on first use if None)."""
        self._head: LinearHead | None = None
        self._scan_sentences = scan_sentences
        self._sentence_head: LinearHead | None = None
        self._neighbours: NeighbourIndex | None = None
        self._neighbour_weight = 0.0
        self._lock = threading.Lock()

    def load(self) -> LinearHead:
        with self._lock:
            if self._head is None:
                head = LinearHead.load(self.artifact)
                self._load_neighbours(head)
                self._load_sentence_head(head)
                self._head = head
            return self._head

    def _load_sentence_head(self, head: LinearHead) -> None:
        stem = self.artifact.parent / SENTENCES_ARTIFACT
        if not self._scan_sentences or not stem.with_suffix(".json").is_file():
            return  # an artifact set without the scan (older, or a test's)
        sentence_head = LinearHead.load(stem)
        if not 0.0 < float(sentence_head.meta["threshold"]) < 1.0:
            raise ConfigError(f"{stem}.json: the sentence threshold must be strictly between 0 and 1")
        calibrated_for = float(sentence_head.meta["prompt_threshold"])
        if abs(calibrated_for - float(head.meta["threshold"])) > 1e-9:
            raise ConfigError(
                f"{stem}.json was calibrated for a jailbreak threshold of {calibrated_for}, but "
                f"{self.artifact}.json has {head.meta['threshold']}; re-run "
                "python3 scripts/train_router_classifiers.py --only jailbreak-sentences"
            )
        if self.embedder is None:
            from mixroute.router.classifiers.embedder import Embedder

            self.embedder = Embedder(featurizer=self.featurizer)
        self._sentence_head = sentence_head

    @property
    def scans_sentences(self) -> bool:
        self.load()
        return self._sentence_head is not None
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

    def predict(self, texts: list[str], embeddings: np.ndarray, *, scan_sentences: bool = True) -> list[float]:
        """Probability of an attack per text; `scan_sentences=False` skips the sentence scan
        (the whole-prompt score alone)."""
        if not texts:
            return []
        head = self.load()
        features = featurize(self.featurizer, texts)
        proba = head.probabilities(features, embeddings)[:, 0]
        if self._neighbours is not None and self._neighbour_weight > 0:
            votes = self._neighbours.vote_or(features, np.stack([1.0 - proba, proba], axis=1))
            proba = (1.0 - self._neighbour_weight) * proba + self._neighbour_weight * votes[:, 1]
        if scan_sentences:
            proba = np.maximum(proba, self.sentence_scores(texts))
        return [float(p) for p in proba]

    def sentence_scores(self, texts: list[str]) -> np.ndarray:
        """Per text, its most suspicious sentence's score on the prompt scale (0 for a text of
        one sentence: the whole-prompt score is that sentence's; 0 for every text without a
        sentence head). `predict` is the higher of this and `predict(scan_sentences=False)`:
        the router may run the two in different processes."""
        head = self.load()
        sentence_head = self._sentence_head
        if sentence_head is None:
            return np.zeros(len(texts))
        out = sentence_maxima(sentence_head, texts, self.featurizer, self.embedder)
        sentence_threshold = float(sentence_head.meta["threshold"])
        return np.where(out > 0, onto_prompt_scale(out, sentence_threshold, float(head.meta["threshold"])), 0.0)

    def is_jailbreak(self, texts: list[str], embeddings: np.ndarray) -> list[bool]:
        threshold = self.threshold
        return [p > threshold for p in self.predict(texts, embeddings)]
