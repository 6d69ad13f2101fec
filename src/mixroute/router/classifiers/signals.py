"""The four router signals bundled, loaded once per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.embedder import Embedder
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.jailbreak import JailbreakClassifier
from mixroute.router.classifiers.pii import PiiDetector
from mixroute.router.classifiers.refiner import CategoryRefiner


@dataclass(frozen=True, slots=True)
class Signals:
    embedder: Embedder
    category: CategoryClassifier
    jailbreak: JailbreakClassifier
    pii: PiiDetector

    def warm_up(self, pii: bool = True) -> None:
        """Load every model now instead of on the first request (PII's only with `pii`)."""
        embeddings = self.embedder.encode(["warm up"])
        self.category.predict(["warm up"], embeddings)  # the refiner (off by default) loads on first use
        self.jailbreak.predict(["warm up"], embeddings)
        if pii:
            self.pii.detect("warm up John")


def build_signals() -> Signals:
    """A fresh bundle of the packaged models (nothing loaded until first use).

    The heads are trained on the static embedder's vectors, so the embedder is not
    swappable here: the full transformer (`MiniLMEmbedder`) would need heads trained on
    its own 384-d vectors, at ~100x the CPU per prompt."""
    # One featurizer: the embedder and both heads tokenise each prompt once between them.
    featurizer = Featurizer()
    embedder = Embedder(featurizer=featurizer)
    return Signals(
        embedder=embedder,
        category=CategoryClassifier(featurizer=featurizer, refiner=CategoryRefiner()),
        jailbreak=JailbreakClassifier(featurizer=featurizer, embedder=embedder),
        pii=PiiDetector(),
    )


_lock = threading.Lock()
_default: Signals | None = None


def load_default_signals(*, warm: bool = True, warm_pii: bool = True) -> Signals:
    """The process-wide `Signals` of the packaged models, built once; thread-safe.

    With `warm=True` (default) every model is loaded before returning, so the
    first request does not pay for it (the PII detector only with `warm_pii`); call it
    off the event loop thread.
    """
    global _default
    with _lock:
        if _default is None:
            signals = build_signals()
            if warm:
                signals.warm_up(pii=warm_pii)
            _default = signals
        return _default
