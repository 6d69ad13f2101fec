"""Runs the signals of one request off the event loop, in one hand-off to a worker thread.

The worker runs PII detection over every message (history included) and then one
embedding batch (the last user turn first, then earlier user turns) whose vectors feed
the category head, the jailbreak head and the semantic cache — the text is embedded
once. The two run one after the other rather than on two threads: both are mostly
Python/numpy work holding the GIL, so on a small host two threads only add hand-offs
and contention. Keyword rules are regexes and run inline. PII is looked for only among
the types some model's policy forbids (`pii_scope.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.config import KeywordRule, RouterConfig
from mixroute.router.request import ChatRequest
from mixroute.router.signals.keywords import match_rules
from mixroute.router.signals.memo import LruMemo
from mixroute.router.signals.models import SignalModels
from mixroute.router.signals.pii_scope import actionable_pii_types

# Earlier user turns screened for jailbreaks besides the last one (bounds the embedding cost).
MAX_JAILBREAK_HISTORY = 3

log = logging.getLogger("mixroute.router")


@dataclass(slots=True)
class SignalResults:
    embedding: np.ndarray | None
    """Unit vector of the last user turn (the semantic-cache key); None if nothing to embed."""
    category: str | None = None
    category_confidence: float = 0.0
    jailbreak_probability: float = 0.0
    jailbreak_threshold: float = 1.0
    """The threshold in force: the config's, else the classifier's calibrated one."""
    pii_types: list[str] = field(default_factory=list)
    keyword_rules: list[KeywordRule] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Work:
    """What one request asks of the worker thread."""

    pii_texts: list[str]
    pii_types: frozenset[str] | None
    pii_threshold: float
    embed_texts: list[str]
    with_jailbreak: bool
    refine_below: float | None
    category_threshold: float
    refiner_weight: float


class SignalRunner:
    def __init__(self, models: SignalModels, num_threads: int = 2) -> None:
        self.models = models
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="router-signals")
        # Keyed by (types looked for, text): a reload that changes the policies changes the key.
        self._pii_memo: LruMemo[tuple[frozenset[str] | None, str], list[tuple[str, float]]] = LruMemo()
        self._jailbreak_memo: LruMemo[str, float] = LruMemo()
        self._known_pii: Collection[str] | None = getattr(models.pii, "entities", None)
        self._scope_of: tuple[RouterConfig | None, frozenset[str] | None] = (None, None)
        self._refiner_failed = False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def pii_types(self, config: RouterConfig) -> frozenset[str] | None:
        """The PII types to look for under `config`; None: all the detector knows (it does
        not say which those are, e.g. a test fake)."""
        if self._known_pii is None:
            return None
        last_config, types = self._scope_of
        if config is not last_config:
            types = actionable_pii_types(config, self._known_pii)
            self._scope_of = (config, types)
        return types

    async def run(self, request: ChatRequest, config: RouterConfig) -> SignalResults:
        query = request.last_user_text()
        results = SignalResults(
            embedding=None, keyword_rules=match_rules(config.keyword_rules, query),
            jailbreak_threshold=self.jailbreak_threshold(config),
        )
        pii_types = self.pii_types(config) if config.pii.enabled else frozenset()
        needs_embedding = bool(config.categories) or config.jailbreak.enabled or config.cache.enabled
        history = request.texts("user")[:-1][-MAX_JAILBREAK_HISTORY:] if query else []
        work = _Work(
            pii_texts=request.texts() if pii_types is None or pii_types else [],
            pii_types=pii_types,
            pii_threshold=config.pii.threshold,
            embed_texts=[query, *history] if query and needs_embedding else [],
            with_jailbreak=config.jailbreak.enabled,
            refine_below=self.refine_below(request, config, results),
            category_threshold=config.classifier.category_threshold,
            refiner_weight=config.classifier.category_refiner_weight,
        )
        if not work.pii_texts and not work.embed_texts:
            return results
        await asyncio.get_running_loop().run_in_executor(self._pool, self._compute, work, results)
        return results

    @staticmethod
    def refine_below(request: ChatRequest, config: RouterConfig, results: SignalResults) -> float | None:
        """The refiner's level for this request; 0 (never) where the category routes nothing:
        an explicit model name, or a keyword rule that names the category."""
        if not config.is_auto(request.model) or any(r.category is not None for r in results.keyword_rules):
            return 0.0
        return config.classifier.refine_below()

    def jailbreak_threshold(self, config: RouterConfig) -> float:
        if config.jailbreak.threshold is not None:
            return config.jailbreak.threshold
        return float(self.models.jailbreak.threshold)

    def _compute(self, work: _Work, results: SignalResults) -> None:
        """Runs on the worker thread; fills `results` (the event loop does not touch it meanwhile)."""
        if work.pii_texts:
            start = time.perf_counter()
            results.pii_types = self._detect_pii(work.pii_texts, work.pii_types, work.pii_threshold)
            results.latency_ms["pii"] = (time.perf_counter() - start) * 1e3
        if work.embed_texts:
            start = time.perf_counter()
            self._embed_and_classify(work, results)
            results.latency_ms["embed_classify"] = (time.perf_counter() - start) * 1e3

    def _detect_pii(self, texts: list[str], pii_types: frozenset[str] | None, threshold: float) -> list[str]:
        types: set[str] = set()
        for text in texts:
            found = self._pii_memo.get((pii_types, text))
            if found is None:
                entities = self.models.pii.detect(text) if pii_types is None else self.models.pii.detect(
                    text, pii_types
                )
                found = [(e.entity_type, float(e.score)) for e in entities]
                self._pii_memo.put((pii_types, text), found)
            types.update(t for t, score in found if score >= threshold)
        return sorted(types)

    def _embed_and_classify(self, work: _Work, results: SignalResults) -> None:
        texts, with_jailbreak = work.embed_texts, work.with_jailbreak
        # Earlier turns already scored (they were the query of an earlier request) are not re-embedded.
        known = [self._jailbreak_memo.get(t) for t in texts[1:]] if with_jailbreak else []
        fresh = [texts[0], *(t for t, p in zip(texts[1:], known) if p is None)]
        vectors = np.asarray(self.models.embedder.encode(fresh), dtype=np.float32)
        category, confidence = self._categorise(
            fresh[0], vectors[:1], work.refine_below, work.category_threshold, work.refiner_weight
        )
        results.embedding = vectors[0]
        results.category, results.category_confidence = category, float(confidence)
        if with_jailbreak:
            scores = [float(s) for s in self.models.jailbreak.predict(fresh, vectors)]
            for text, score in zip(fresh, scores):
                self._jailbreak_memo.put(text, score)
            results.jailbreak_probability = max([*scores, *(p for p in known if p is not None)])

    def _categorise(
        self, text: str, vectors: np.ndarray, refine_below: float | None, threshold: float = 0.0,
        weight: float | None = None,
    ) -> tuple[str, float]:
        """The category; when the refiner cannot load (a reload turned it on and its artifact
        is missing), the head alone from then on, with one error in the log, rather than
        failing requests (a restart tries again; at start a missing refiner stops it)."""
        if refine_below != 0.0 and not self._refiner_failed:
            try:
                return self.models.category.predict([text], vectors, refine_below, threshold, weight)[0]
            except ConfigError as exc:
                self._refiner_failed = True
                log.error("category refiner unavailable, routing with the head alone: %s", exc)
        return self.models.category.predict([text], vectors, 0.0)[0]

    # Single-text classification for the /api/v1/classify/* endpoints.

    async def classify_intent(
        self, text: str, refine_below: float | None, weight: float | None = None
    ) -> tuple[str, float]:
        def work() -> tuple[str, float]:
            vectors = np.asarray(self.models.embedder.encode([text]), dtype=np.float32)
            name, confidence = self._categorise(text, vectors, refine_below, weight=weight)
            return name, float(confidence)

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def classify_jailbreak(self, text: str) -> float:
        def work() -> float:
            vectors = np.asarray(self.models.embedder.encode([text]), dtype=np.float32)
            return float(self.models.jailbreak.predict([text], vectors)[0])

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def detect_pii(self, text: str) -> list[object]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.models.pii.detect, text)
