"""Runs the signals of one request concurrently, off the event loop.

Two pieces of work go to the thread pool at once: PII detection over every message
(history included), and one embedding batch (the last user turn first, then earlier
user turns) whose vectors feed the category head, the jailbreak head and the semantic
cache — the text is embedded once. Keyword rules are regexes and run inline.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from mixroute.router.config import KeywordRule, RouterConfig
from mixroute.router.request import ChatRequest
from mixroute.router.signals.keywords import match_rules
from mixroute.router.signals.memo import LruMemo
from mixroute.router.signals.models import SignalModels

# Earlier user turns screened for jailbreaks besides the last one (bounds the embedding cost).
MAX_JAILBREAK_HISTORY = 3


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


class SignalRunner:
    def __init__(self, models: SignalModels, num_threads: int = 4) -> None:
        self.models = models
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="router-signals")
        self._pii_memo: LruMemo[str, list[tuple[str, float]]] = LruMemo()
        self._jailbreak_memo: LruMemo[str, float] = LruMemo()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, request: ChatRequest, config: RouterConfig) -> SignalResults:
        loop = asyncio.get_running_loop()
        query = request.last_user_text()
        history = request.texts("user")[:-1][-MAX_JAILBREAK_HISTORY:] if query else []
        pii_future = None
        if config.pii.enabled:
            pii_future = loop.run_in_executor(self._pool, self._detect_pii, request.texts(), config.pii.threshold)
        embed_future = None
        needs_embedding = bool(config.categories) or config.jailbreak.enabled or config.cache.enabled
        if query and needs_embedding:
            embed_future = loop.run_in_executor(
                self._pool, self._embed_and_classify, [query, *history], config.jailbreak.enabled
            )
        results = SignalResults(
            embedding=None, keyword_rules=match_rules(config.keyword_rules, query),
            jailbreak_threshold=self.jailbreak_threshold(config),
        )
        if embed_future is not None:
            embedding, category, jailbreak, embed_ms = await embed_future
            results.embedding = embedding
            results.category, results.category_confidence = category
            results.jailbreak_probability = jailbreak
            results.latency_ms["embed_classify"] = embed_ms
        if pii_future is not None:
            results.pii_types, results.latency_ms["pii"] = await pii_future
        return results

    def jailbreak_threshold(self, config: RouterConfig) -> float:
        if config.jailbreak.threshold is not None:
            return config.jailbreak.threshold
        return float(self.models.jailbreak.threshold)

    def _detect_pii(self, texts: list[str], threshold: float) -> tuple[list[str], float]:
        start = time.perf_counter()
        types: set[str] = set()
        for text in texts:
            found = self._pii_memo.get(text)
            if found is None:
                found = [(e.entity_type, float(e.score)) for e in self.models.pii.detect(text)]
                self._pii_memo.put(text, found)
            types.update(t for t, score in found if score >= threshold)
        return sorted(types), (time.perf_counter() - start) * 1e3

    def _embed_and_classify(
        self, texts: list[str], with_jailbreak: bool
    ) -> tuple[np.ndarray, tuple[str, float], float, float]:
        start = time.perf_counter()
        # Earlier turns already scored (they were the query of an earlier request) are not re-embedded.
        known = [self._jailbreak_memo.get(t) for t in texts[1:]] if with_jailbreak else []
        fresh = [texts[0], *(t for t, p in zip(texts[1:], known) if p is None)]
        vectors = np.asarray(self.models.embedder.encode(fresh), dtype=np.float32)
        category, confidence = self.models.category.predict(fresh[:1], vectors[:1])[0]
        jailbreak = 0.0
        if with_jailbreak:
            scores = [float(s) for s in self.models.jailbreak.predict(fresh, vectors)]
            for text, score in zip(fresh, scores):
                self._jailbreak_memo.put(text, score)
            jailbreak = max([*scores, *(p for p in known if p is not None)])
        elapsed = (time.perf_counter() - start) * 1e3
        return vectors[0], (category, float(confidence)), jailbreak, elapsed

    # Single-text classification for the /api/v1/classify/* endpoints.

    async def classify_intent(self, text: str) -> tuple[str, float]:
        def work() -> tuple[str, float]:
            vectors = np.asarray(self.models.embedder.encode([text]), dtype=np.float32)
            name, confidence = self.models.category.predict([text], vectors)[0]
            return name, float(confidence)

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def classify_jailbreak(self, text: str) -> float:
        def work() -> float:
            vectors = np.asarray(self.models.embedder.encode([text]), dtype=np.float32)
            return float(self.models.jailbreak.predict([text], vectors)[0])

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def detect_pii(self, text: str) -> list[object]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.models.pii.detect, text)
