"""Fake signal models for unit tests (the real ones are exercised in tests/integration/router)."""

from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mixroute.router.request import ChatRequest, parse_chat_request
from mixroute.router.signals import SignalModels

DIM = 384


class FakeEmbedder:
    """Bag of hashed words: same words -> same unit vector; disjoint words -> orthogonal-ish."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % DIM] += 1.0
            norm = np.linalg.norm(out[i])
            if norm:
                out[i] /= norm
        return out


class FakeCategory:
    RULES: ClassVar[dict[str, str]] = {"integral": "math", "derivative": "math", "contract": "law", "cell": "biology", "vague": "other"}

    def predict(
        self, texts: list[str], embeddings: np.ndarray, refine_below: float | None = 0.0, threshold: float = 0.0,
        weight: float | None = None,
    ) -> list[tuple[str, float]]:
        out = []
        for text in texts:
            hit = next((c for w, c in self.RULES.items() if w in text.lower()), None)
            out.append((hit, 0.2 if hit == "other" else 0.9) if hit else ("other", 0.3))
        return out


class FakeJailbreak:
    """Flags "ignore previous instructions"; with the sentence scan, also a message whose
    sentence after the first says "ignore the above"."""

    threshold = 0.6

    def predict(self, texts: list[str], embeddings: np.ndarray, *, scan_sentences: bool = True) -> list[float]:
        def score(text: str) -> float:
            lowered = text.lower()
            if "ignore previous instructions" in lowered:
                return 0.99
            return 0.95 if scan_sentences and ". ignore the above" in lowered else 0.01

        return [score(t) for t in texts]

    def sentence_scores(self, texts: list[str]) -> list[float]:
        """The scan's part of `predict` (a screening child process runs it apart)."""
        return [0.95 if ". ignore the above" in t.lower() else 0.0 for t in texts]


@dataclass
class FakeEntity:
    entity_type: str
    start: int
    end: int
    score: float


class FakePii:
    PATTERNS: ClassVar[dict[str, str]] = {"US_SSN": r"\b\d{3}-\d{2}-\d{4}\b", "EMAIL_ADDRESS": r"\b\S+@\S+\.\w+\b"}

    def detect(self, text: str) -> list[FakeEntity]:
        return [FakeEntity(t, m.start(), m.end(), 0.85)
                for t, p in self.PATTERNS.items() for m in re.finditer(p, text)]


class CountingPii(FakePii):
    """Records the texts it was asked about."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def detect(self, text: str) -> list[FakeEntity]:
        self.texts.append(text)
        return super().detect(text)


def chat_request(*turns: tuple[str, str]) -> ChatRequest:
    """A parsed auto-routed chat request of (role, content) turns."""
    body = {"model": "MoM", "messages": [{"role": r, "content": c} for r, c in turns]}
    return parse_chat_request(json.dumps(body).encode())


def fake_models() -> SignalModels:
    return SignalModels(embedder=FakeEmbedder(), category=FakeCategory(), jailbreak=FakeJailbreak(), pii=FakePii())


CONFIG_YAML = """
default_model: small
default_endpoint: http://127.0.0.1:9
models:
  small:
    pii_policy: {allow_by_default: false, pii_types_allowed: [EMAIL_ADDRESS]}
  big:
    reasoning_family: qwen3
    pii_policy: {allow_by_default: true}
  effort:
    endpoint: http://127.0.0.1:10
    reasoning_family: gpt-oss
    pii_policy: {allow_by_default: false}
reasoning_families:
  qwen3: {type: chat_template_kwargs, parameter: enable_thinking}
  gpt-oss: {type: reasoning_effort, parameter: reasoning_effort}
categories:
  - name: math
    system_prompt: "You are a math expert."
    system_prompt_mode: replace
    model_scores: [{model: big, score: 0.9, use_reasoning: true}, {model: small, score: 0.5}]
  - name: law
    system_prompt: "You are a lawyer."
    system_prompt_mode: insert
    reasoning_effort: high
    model_scores: [{model: effort, score: 0.8, use_reasoning: true}]
  - name: biology
    system_prompt: "You are a biologist."
    model_scores: [{model: effort, score: 0.8, use_reasoning: false}, {model: small, score: 0.2}]
  - name: other
    model_scores: [{model: small, score: 1.0}]
keyword_rules:
  - {name: think, keywords: [think, step by step], use_reasoning: true}
  - {name: lawyer, keywords: [attorney], category: law}
cache: {similarity_threshold: 0.9, ttl_seconds: 60, max_entries: 10}
"""


def fake_screen_signals():
    """A `ScreenProcess` factory ("tests.unit.router.fakes:fake_screen_signals"): runs in the child."""
    from mixroute.router.signals.screen_process import ScreenSignals

    return ScreenSignals(FakePii(), FakeJailbreak())


class SlowPii(FakePii):
    def detect(self, text: str) -> list[FakeEntity]:
        time.sleep(0.5)
        return super().detect(text)


def slow_pii_screen_signals():
    """A child whose PII takes 0.5 s a text: the scan queued behind it waits."""
    from mixroute.router.signals.screen_process import ScreenSignals

    return ScreenSignals(SlowPii(), FakeJailbreak())


def failing_screen_signals():
    raise RuntimeError("no models in this child")
