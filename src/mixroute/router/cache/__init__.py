"""Semantic cache: backends (memory, milvus) behind CacheStore, the exact-repeat tier, and
the router-facing SemanticCache."""

from __future__ import annotations

from mixroute.router.cache.base import CachedAnswer, CacheHit, CacheStore
from mixroute.router.cache.exact import ExactEntry, exact_key
from mixroute.router.cache.semantic import (
    SemanticCache,
    StreamRecorder,
    answer_from_json,
    cache_scope,
    cache_tenant,
    is_cacheable,
)

__all__ = [
    "CacheHit", "CacheStore", "CachedAnswer", "ExactEntry", "SemanticCache", "StreamRecorder",
    "answer_from_json", "cache_scope", "cache_tenant", "exact_key", "is_cacheable",
]
