"""In-process semantic cache: one numpy matrix per scope, exact cosine search.

Eviction is global across scopes (`max_entries`): least recently used (a hit refreshes
the entry) or first in, first out. Expired entries never match and are dropped on the
next store. Owned by the event-loop thread; a lookup over a few thousand 384-d rows is
a single matrix-vector product (tens of microseconds).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mixroute.router.cache.base import CachedAnswer, CacheHit


@dataclass(slots=True)
class _Entry:
    scope: str
    vector: np.ndarray
    answer: CachedAnswer
    expires_at: float


@dataclass(slots=True)
class _ScopeIndex:
    entry_ids: list[int] = field(default_factory=list)
    matrix: np.ndarray | None = None
    """Rows of `entry_ids`' vectors; rebuilt lazily after a change (None = stale)."""


class MemoryCacheStore:
    is_blocking = False

    def __init__(self, max_entries: int, eviction: Literal["lru", "fifo"] = "lru") -> None:
        self.max_entries = max_entries
        self.eviction = eviction
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._scopes: dict[str, _ScopeIndex] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, scope: str, vector: np.ndarray, threshold: float, now: float) -> CacheHit | None:
        index = self._scopes.get(scope)
        if index is None or not index.entry_ids:
            return None
        if index.matrix is None:
            index.matrix = np.stack([self._entries[i].vector for i in index.entry_ids])
        sims = index.matrix @ vector
        for row in np.argsort(-sims):
            similarity = float(sims[row])
            if similarity < threshold:
                return None
            entry_id = index.entry_ids[row]
            entry = self._entries[entry_id]
            if entry.expires_at > now:
                if self.eviction == "lru":
                    self._entries.move_to_end(entry_id)
                return CacheHit(entry.answer, similarity)
        return None

    def store(self, scope: str, vector: np.ndarray, answer: CachedAnswer, now: float, ttl: float) -> None:
        if len(self._entries) >= self.max_entries:
            self._drop_expired(now)
        entry_id = self._next_id
        self._next_id += 1
        self._entries[entry_id] = _Entry(scope, np.asarray(vector, dtype=np.float32), answer, now + ttl)
        index = self._scopes.setdefault(scope, _ScopeIndex())
        index.entry_ids.append(entry_id)
        index.matrix = None
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._remove(oldest)

    def close(self) -> None:
        self._entries.clear()
        self._scopes.clear()

    def _drop_expired(self, now: float) -> None:
        for entry_id in [i for i, e in self._entries.items() if e.expires_at <= now]:
            self._remove(entry_id)

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        index = self._scopes[entry.scope]
        index.entry_ids.remove(entry_id)
        index.matrix = None
        if not index.entry_ids:
            del self._scopes[entry.scope]
