"""What the router needs from the ML signals (provided by `mixroute.router.classifiers`).

These Protocols mirror the classifiers package's interface so the router's core can be
unit-tested with fakes; `SignalModels` is the bundle the router holds.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class PiiEntityLike(Protocol):
    entity_type: str
    start: int
    end: int
    score: float


class EmbedderLike(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


class CategoryClassifierLike(Protocol):
    def predict(
        self, texts: list[str], embeddings: np.ndarray, refine_below: float | None = 0.0
    ) -> list[tuple[str, float]]: ...


class JailbreakClassifierLike(Protocol):
    def predict(self, texts: list[str], embeddings: np.ndarray, *, scan_sentences: bool = True) -> list[float]: ...

    @property
    def threshold(self) -> float:
        """The probability at which the trained head calls a prompt a jailbreak."""
        ...


class PiiDetectorLike(Protocol):
    """A detector that also has an `entities` attribute (the types it knows) is asked only
    for the types the config can act on; one without it is asked for everything."""

    def detect(self, text: str, entities: Collection[str] | None = None) -> list[Any]: ...


@dataclass(slots=True, frozen=True)
class SignalModels:
    embedder: EmbedderLike
    category: CategoryClassifierLike
    jailbreak: JailbreakClassifierLike
    pii: PiiDetectorLike


def load_signal_models(load_pii: bool = True) -> SignalModels:
    """Load the real classifiers once (seconds: MiniLM, heads, Presidio + spaCy). With
    `load_pii=False` the PII detector (~650 MB with its name lists) loads on first use
    instead: a router whose PII detection runs in a child process needs it only while
    that child is down."""
    from mixroute.router import classifiers

    bundle = classifiers.load_default_signals(warm_pii=load_pii)
    return SignalModels(
        embedder=bundle.embedder,
        category=bundle.category,
        jailbreak=bundle.jailbreak,
        pii=bundle.pii,
    )
