"""The four router signals bundled, loaded once per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.embedder import Embedder
from mixroute.router.classifiers.jailbreak import JailbreakClassifier
from mixroute.router.classifiers.pii import PiiDetector


@dataclass(frozen=True, slots=True)
class Signals:
    embedder: Embedder
    category: CategoryClassifier
    jailbreak: JailbreakClassifier
    pii: PiiDetector

    def warm_up(self) -> None:
        """Load every model now (seconds) instead of on the first request."""
        embeddings = self.embedder.encode(["warm up"])
        self.category.predict(["warm up"], embeddings)
        self.jailbreak.predict(["warm up"], embeddings)
        self.pii.detect("warm up John")


_lock = threading.Lock()
_default: Signals | None = None


def load_default_signals(*, warm: bool = True) -> Signals:
    """The process-wide default `Signals` (packaged models), built once; thread-safe.

    With `warm=True` (default) every model is loaded before returning, so the
    first request does not pay for it; call it off the event loop thread.
    """
    global _default
    with _lock:
        if _default is None:
            signals = Signals(
                embedder=Embedder(),
                category=CategoryClassifier(),
                jailbreak=JailbreakClassifier(),
                pii=PiiDetector(),
            )
            if warm:
                signals.warm_up()
            _default = signals
        return _default
