"""What a semantic-cache backend stores and the small interface every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import msgspec
import numpy as np


class CachedAnswer(msgspec.Struct, kw_only=True):
    """An upstream answer reduced to what a replay needs (JSON or SSE, whatever the client asks)."""

    content: str
    model: str
    finish_reason: str = "stop"


@dataclass(slots=True)
class CacheHit:
    answer: CachedAnswer
    similarity: float


class CacheStore(Protocol):
    """A vector index of answers, partitioned by scope. Calls may block (run them off the loop
    when `is_blocking`). `scope` is an opaque hex string chosen by the caller."""

    is_blocking: bool
    max_entries: int

    def lookup(self, scope: str, vector: np.ndarray, threshold: float, now: float) -> CacheHit | None: ...

    def store(self, scope: str, vector: np.ndarray, answer: CachedAnswer, now: float, ttl: float) -> None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...
