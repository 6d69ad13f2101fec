"""Semantic cache: backends (memory, milvus) behind CacheStore, and the router-facing SemanticCache."""

from __future__ import annotations

from mixroute.router.cache.base import CachedAnswer, CacheHit, CacheStore
from mixroute.router.cache.semantic import (
    SemanticCache,
    StreamRecorder,
    answer_from_json,
    cache_scope,
)

__all__ = [
    "CacheHit", "CacheStore", "CachedAnswer", "SemanticCache", "StreamRecorder",
    "answer_from_json", "cache_scope",
]
