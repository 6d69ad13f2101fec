"""ML signals for the semantic router: embeddings, category, jailbreak, PII.

Importing this package loads nothing heavy: torch, transformers, Presidio and spaCy
are imported on first use (the static embedder and the heads need numpy and the
`tokenizers` package only). See README.md.
"""

from __future__ import annotations

from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.embedder import EMBEDDING_DIM, Embedder
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.jailbreak import JailbreakClassifier
from mixroute.router.classifiers.minilm import MINILM_DIM, MiniLMEmbedder
from mixroute.router.classifiers.pii import DEFAULT_ENTITIES, PiiDetector, PiiEntity
from mixroute.router.classifiers.signals import Signals, build_signals, load_default_signals

__all__ = [
    "DEFAULT_ENTITIES",
    "EMBEDDING_DIM",
    "MINILM_DIM",
    "CategoryClassifier",
    "Embedder",
    "Featurizer",
    "JailbreakClassifier",
    "MiniLMEmbedder",
    "PiiDetector",
    "PiiEntity",
    "Signals",
    "build_signals",
    "load_default_signals",
]
