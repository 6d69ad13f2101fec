"""The four router signals bundled, loaded once per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from mixroute.errors import ConfigError
from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.embedder import Embedder
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.head import ARTIFACTS_DIR
from mixroute.router.classifiers.jailbreak import JailbreakClassifier
from mixroute.router.classifiers.minilm import MiniLMEmbedder
from mixroute.router.classifiers.pii import PiiDetector

EmbedderKind = Literal["static", "minilm"]
EMBEDDER_KINDS: tuple[str, ...] = ("static", "minilm")


@dataclass(frozen=True, slots=True)
class Signals:
    embedder: Embedder | MiniLMEmbedder
    category: CategoryClassifier
    jailbreak: JailbreakClassifier
    pii: PiiDetector

    def warm_up(self) -> None:
        """Load every model now instead of on the first request."""
        embeddings = self.embedder.encode(["warm up"])
        self.category.predict(["warm up"], embeddings)
        self.jailbreak.predict(["warm up"], embeddings)
        self.pii.detect("warm up John")


def build_signals(embedder: str = "static") -> Signals:
    """A fresh bundle. `static` (default): the MiniLM-distilled static embedder and the
    heads trained on it. `minilm`: the full transformer (~1 ms of CPU per token) with
    heads trained on its vectors (`<head>-minilm` artifacts)."""
    if embedder not in EMBEDDER_KINDS:
        raise ConfigError(f"embedder must be one of {', '.join(EMBEDDER_KINDS)}, got {embedder!r}")
    # One featurizer: the embedder and both heads tokenise each prompt once between them.
    featurizer = Featurizer()
    suffix = "" if embedder == "static" else "-minilm"
    for name in ("category", "jailbreak"):
        stem = ARTIFACTS_DIR / f"{name}{suffix}"
        if not stem.with_suffix(".npz").is_file():
            raise ConfigError(
                f"embedder {embedder!r} needs the head artifact {stem}.npz; train it with "
                "python3 scripts/train_router_classifiers.py"
                + (" --minilm-embeddings DIR" if suffix else "")
            )
    return Signals(
        embedder=Embedder(featurizer=featurizer) if embedder == "static" else MiniLMEmbedder(),
        category=CategoryClassifier(ARTIFACTS_DIR / f"category{suffix}", featurizer),
        jailbreak=JailbreakClassifier(ARTIFACTS_DIR / f"jailbreak{suffix}", featurizer),
        pii=PiiDetector(),
    )


_lock = threading.Lock()
_default: dict[str, Signals] = {}


def load_default_signals(*, warm: bool = True, embedder: str = "static") -> Signals:
    """The process-wide `Signals` of the packaged models for one embedder kind, built once;
    thread-safe.

    With `warm=True` (default) every model is loaded before returning, so the
    first request does not pay for it; call it off the event loop thread.
    """
    with _lock:
        signals = _default.get(embedder)
        if signals is None:
            signals = build_signals(embedder)
            if warm:
                signals.warm_up()
            _default[embedder] = signals
        return signals
