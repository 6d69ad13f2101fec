"""Runs the signals of one request off the event loop, in one hand-off to a worker thread.

The worker runs PII detection over every message (history included) and one embedding
batch (the last user turn first, then earlier user turns) whose vectors feed the
category head, the jailbreak head and the semantic cache — the text is embedded once.
Both are mostly Python/numpy work holding the GIL, so two threads of this process would
only take turns: with a `ScreenProcess` (`mixroute router --screen-process`, on where the
host has two cores or more) the worker hands the PII texts and the jailbreak sentence scan
to that child process first, runs the embedding signals meanwhile, then collects the
child's answers, taking the scan back if the child has not begun it yet (it is still on
the PII); without a child (or while it is down) all of it runs on the worker. Keyword
rules are regexes and run inline. PII is looked for only among the types some model's
policy forbids (`pii_scope.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mixroute.errors import ConfigError, PayloadTooLargeError
from mixroute.router.config import KeywordRule, RouterConfig
from mixroute.router.request import ChatRequest
from mixroute.router.signals.keywords import match_rules
from mixroute.router.signals.memo import LruMemo
from mixroute.router.signals.models import SignalModels
from mixroute.router.signals.pii_scope import actionable_pii_types
from mixroute.router.signals.screen_process import ScreenProcess, detect_texts

# Earlier user turns screened for jailbreaks besides the last one (bounds the embedding cost).
MAX_JAILBREAK_HISTORY = 3
# PII over more text than this is cut into pieces of about this size, each its own hand-off
# to the worker threads: another request's signals then run between the pieces instead of
# waiting behind the whole of a long one (the detector runs one call at a time; PII-dense
# text costs ~4 ms per 1,000 characters here).
PII_PIECE_CHARS = 8000
# Pieces overlap by this much; an entity counts in the piece where it starts in the first
# half of the overlap or before, so each one is seen whole with context on both sides.
PII_OVERLAP_CHARS = 400
# Texts longer than this are memoised by digest, not kept as keys.
_MEMO_TEXT_CHARS = 1024

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
    jailbreak_scan: bool
    refine_below: float | None
    category_threshold: float
    refiner_weight: float


@dataclass(slots=True)
class _PiiJob:
    """PII of some texts in progress: memo hits known, the rest with the child or done here."""

    types: frozenset[str] | None
    keys: list[tuple[frozenset[str] | None, str | bytes]]
    known: list[list[tuple[str, float]] | None]
    """(type, score) of each text, from the memo; None where it is not known yet."""
    missing: list[str]
    future: Future[tuple[list[list[Any]], float]] | None = None
    entities: list[list[Any]] = field(default_factory=list)
    """The entities of each `missing` text, once detected."""
    seconds: float = 0.0


class SignalRunner:
    def __init__(
        self, models: SignalModels, num_threads: int = 2, screen_process: ScreenProcess | None = None
    ) -> None:
        self.models = models
        self.screen_process = screen_process
        """Where PII detection and the sentence scan run beside the embedding signals (None:
        on the worker thread)."""
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="router-signals")
        # Keyed by (types looked for, text): a reload that changes the policies changes the key.
        self._pii_memo: LruMemo[tuple[frozenset[str] | None, str | bytes], list[tuple[str, float]]] = LruMemo()
        self._pii_entity_memo: LruMemo[tuple[frozenset[str] | None, str | bytes], list[Any]] = LruMemo(256)
        # Keyed by (sentence scan on, text): a reload that turns the scan on or off changes the key.
        self._jailbreak_memo: LruMemo[tuple[bool, str], float] = LruMemo()
        self._known_pii: Collection[str] | None = getattr(models.pii, "entities", None)
        self._scope_of: tuple[RouterConfig | None, frozenset[str] | None] = (None, None)
        self._refiner_failed = False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.screen_process is not None:
            self.screen_process.close()

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
        if pii_types is None or pii_types:
            check_screened_size(request, config)
        needs_embedding = bool(config.categories) or config.jailbreak.enabled or config.cache.enabled
        history = request.texts("user")[:-1][-MAX_JAILBREAK_HISTORY:] if query else []
        work = _Work(
            pii_texts=request.texts() if pii_types is None or pii_types else [],
            pii_types=pii_types,
            pii_threshold=config.pii.threshold,
            embed_texts=[query, *history] if query and needs_embedding else [],
            with_jailbreak=config.jailbreak.enabled,
            jailbreak_scan=config.jailbreak.scan_sentences,
            refine_below=self.refine_below(request, config, results),
            category_threshold=config.classifier.category_threshold,
            refiner_weight=config.classifier.category_refiner_weight,
        )
        if self.screen_process is not None and (work.pii_texts or (work.jailbreak_scan and work.with_jailbreak)):
            self.screen_process.start_soon()  # where the config at start needed no screening
        if sum(len(t) for t in work.pii_texts) > PII_PIECE_CHARS:
            start = time.perf_counter()
            results.pii_types = await self._pii_in_turns(work)
            results.latency_ms["pii"] = (time.perf_counter() - start) * 1e3
            work.pii_texts = []
        if not work.pii_texts and not work.embed_texts:
            return results
        await asyncio.get_running_loop().run_in_executor(self._pool, self._compute, work, results)
        return results

    async def _pii_in_turns(self, work: _Work) -> list[str]:
        """PII types of a request with more than PII_PIECE_CHARS of text, in several turns on
        the worker threads: messages batched up to that size, longer ones cut in pieces."""
        loop = asyncio.get_running_loop()
        types: set[str] = set()
        batch: list[str] = []
        size = 0
        for text in [*(t for t in work.pii_texts if len(t) <= PII_PIECE_CHARS), ""]:
            if batch and (not text or size + len(text) > PII_PIECE_CHARS):
                found = await loop.run_in_executor(
                    self._pool, self._detect_pii, batch, work.pii_types, work.pii_threshold
                )
                types.update(found)
                batch, size = [], 0
            if text:
                batch.append(text)
                size += len(text)
        long = [t for t in work.pii_texts if len(t) > PII_PIECE_CHARS]
        for entities in await self._pieces_pii(long, work.pii_types):
            types.update(e.entity_type for e in entities if e.score >= work.pii_threshold)
        return sorted(types)

    async def _pieces_pii(self, texts: list[str], pii_types: frozenset[str] | None) -> list[list[Any]]:
        """Entities of each text (offsets in that text), found piece by piece, one worker
        hand-off per PII_PIECE_CHARS of text; memoised per text."""
        loop = asyncio.get_running_loop()
        out: list[list[Any]] = []
        for text in texts:
            key = (pii_types, _memo_text(text))
            found = self._pii_entity_memo.get(key)
            if found is None:
                found, low = [], 0
                for offset, piece, keep_below in pii_pieces(text):
                    entities = await loop.run_in_executor(self._pool, self._detect, piece, pii_types)
                    found += [
                        _shifted(e, offset) for e in entities if low <= offset + e.start < keep_below
                    ]
                    low = keep_below
                self._pii_entity_memo.put(key, found)
            out.append(found)
        return out

    def _detect(self, text: str, pii_types: frozenset[str] | None) -> list[Any]:
        future = None if self.screen_process is None else self.screen_process.submit("pii", [text], pii_types)
        if future is not None:
            with contextlib.suppress(Exception):  # the child died or failed: detect here instead
                return future.result()[0][0]
        return detect_texts(self.models.pii, [text], pii_types)[0]

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
        pii = self._pii_begin(work.pii_texts, work.pii_types) if work.pii_texts else None
        if work.embed_texts:
            start = time.perf_counter()
            self._embed_and_classify(work, results)
            results.latency_ms["embed_classify"] = (time.perf_counter() - start) * 1e3
        if pii is not None:
            results.pii_types = self._pii_end(pii, work.pii_threshold)
            results.latency_ms["pii"] = pii.seconds * 1e3

    def _detect_pii(self, texts: list[str], pii_types: frozenset[str] | None, threshold: float) -> list[str]:
        return self._pii_end(self._pii_begin(texts, pii_types), threshold)

    def _pii_begin(self, texts: list[str], pii_types: frozenset[str] | None) -> _PiiJob:
        """Memo hits, and the other texts handed to the child process, or detected here now."""
        keys = [(pii_types, _memo_text(text)) for text in texts]
        known = [self._pii_memo.get(key) for key in keys]
        missing = [text for text, found in zip(texts, known) if found is None]
        job = _PiiJob(pii_types, keys, known, missing)
        if missing and self.screen_process is not None:
            job.future = self.screen_process.submit("pii", missing, pii_types)
        if missing and job.future is None:
            self._detect_missing_here(job)
        return job

    def _detect_missing_here(self, job: _PiiJob) -> None:
        start = time.perf_counter()
        job.entities = detect_texts(self.models.pii, job.missing, job.types)
        job.seconds = time.perf_counter() - start

    def _pii_end(self, job: _PiiJob, threshold: float) -> list[str]:
        """The PII types (score >= threshold) of the job's texts; a child that died or failed
        meanwhile is made up for here."""
        if job.future is not None:
            try:
                job.entities, job.seconds = job.future.result()
            except Exception:  # noqa: BLE001 - the child died or failed: detect here instead
                self._detect_missing_here(job)
        entities = iter(job.entities)
        types: set[str] = set()
        for key, found in zip(job.keys, job.known):
            if found is None:
                found = [(e.entity_type, float(e.score)) for e in next(entities)]
                self._pii_memo.put(key, found)
            types.update(t for t, score in found if score >= threshold)
        return sorted(types)

    def _embed_and_classify(self, work: _Work, results: SignalResults) -> None:
        texts, with_jailbreak, scan = work.embed_texts, work.with_jailbreak, work.jailbreak_scan
        # Earlier turns already scored (they were the query of an earlier request) are not re-embedded.
        known = [self._jailbreak_memo.get((scan, t)) for t in texts[1:]] if with_jailbreak else []
        fresh = [texts[0], *(t for t, p in zip(texts[1:], known) if p is None)]
        scan_there = None
        if with_jailbreak and scan and self.screen_process is not None and hasattr(self.models.jailbreak, "sentence_scores"):
            scan_there = self.screen_process.submit("scan", fresh)
        vectors = np.asarray(self.models.embedder.encode(fresh), dtype=np.float32)
        category, confidence = self._categorise(
            fresh[0], vectors[:1], work.refine_below, work.category_threshold, work.refiner_weight
        )
        results.embedding = vectors[0]
        results.category, results.category_confidence = category, float(confidence)
        if with_jailbreak:
            jailbreak = self.models.jailbreak
            scores = [float(s) for s in jailbreak.predict(fresh, vectors, scan_sentences=scan and scan_there is None)]
            if scan_there is not None:
                if not scan_there.done():
                    # Still queued behind PII (the longer share, with the name lists): this
                    # thread is free now, so it takes the scan back and runs it itself.
                    self.screen_process.withdraw(scan_there)  # type: ignore[union-attr]
                try:
                    scanned, seconds = scan_there.result()
                    results.latency_ms["scan"] = seconds * 1e3
                except Exception:  # noqa: BLE001 - withdrawn, or the child died or failed: scan here
                    scanned = jailbreak.sentence_scores(fresh)  # type: ignore[attr-defined]
                scores = [max(p, float(s)) for p, s in zip(scores, scanned)]
            for text, score in zip(fresh, scores):
                self._jailbreak_memo.put((scan, text), score)
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

    async def classify_jailbreak(self, text: str, scan_sentences: bool = True) -> float:
        def work() -> float:
            vectors = np.asarray(self.models.embedder.encode([text]), dtype=np.float32)
            return float(self.models.jailbreak.predict([text], vectors, scan_sentences=scan_sentences)[0])

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    async def detect_pii(self, text: str) -> list[Any]:
        """Every PII type in `text`, piece by piece like a request's (see PII_PIECE_CHARS)."""
        return (await self._pieces_pii([text], None))[0]


def check_screened_size(request: ChatRequest, config: RouterConfig) -> None:
    """PayloadTooLargeError where the request's messages hold more text than PII screening
    reads (`pii.max_chars`): its cost grows with the text, the other signals' does not."""
    size = sum(len(text) for text in request.texts())
    if size > config.pii.max_chars:
        raise PayloadTooLargeError(
            f"messages hold {size} characters of text; PII screening reads at most "
            f"{config.pii.max_chars} per request (pii.max_chars in the router config)",
            param="messages",
        )


def pii_pieces(
    text: str, size: int = PII_PIECE_CHARS, overlap: int = PII_OVERLAP_CHARS
) -> list[tuple[int, str, int]]:
    """(offset, piece, keep_below) covering `text`: pieces of at most `size` characters, cut
    and started at whitespace where there is some, each overlapping the previous one by
    about `overlap`; an entity is counted in the piece whose `keep_below` (an offset in
    `text`) its start is under and the previous piece's is not."""
    if len(text) <= size:
        return [(0, text, len(text) + 1)]
    pieces: list[tuple[int, str, int]] = []
    start = 0
    while True:
        end = min(start + size, len(text))
        if end < len(text):
            cut = max(text.rfind(c, start + size // 2, end) for c in " \n\t")
            end = cut if cut > start else end
        if end >= len(text):
            pieces.append((start, text[start:], len(text) + 1))
            return pieces
        nxt = end - overlap
        space = max(text.rfind(c, start + 1, nxt) for c in " \n\t")
        nxt = space + 1 if space > start else nxt
        pieces.append((start, text[start:end], nxt + (end - nxt) // 2))
        start = nxt


def _shifted(entity: Any, offset: int) -> Any:
    return replace(entity, start=entity.start + offset, end=entity.end + offset) if offset else entity


def _memo_text(text: str) -> str | bytes:
    if len(text) <= _MEMO_TEXT_CHARS:
        return text
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
