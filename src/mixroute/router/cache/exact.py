"""Exact-repeat tier in front of the semantic cache.

A request identical to one already answered (same tenant, same messages and parameters,
same config version) gets the same decision — the signals are deterministic — so its
stored answer and routing headers are replayed without running the signals at all. A
paraphrase misses here and goes through the signals and the semantic index.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

from mixroute.router.cache.base import CachedAnswer
from mixroute.router.request import ChatRequest

# Fields that change how an answer is delivered, not what it is.
_DELIVERY_FIELDS = frozenset({"stream", "stream_options"})


@dataclass(slots=True, frozen=True)
class ExactEntry:
    answer: CachedAnswer
    headers: dict[str, str]
    expires_at: float


def exact_key(request: ChatRequest, tenant: str, config_version: int) -> str:
    body = {k: v for k, v in request.body.items() if k not in _DELIVERY_FIELDS}
    material = json.dumps([tenant, config_version, body], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()


class ExactCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, ExactEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> ExactEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: ExactEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
