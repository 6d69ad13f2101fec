"""The semantic cache as the router uses it: scoping, TTL, and answer capture.

A cache key is (scope, embedding of the last user turn). The scope combines the user or
tenant (a request header, else the OpenAI `user` field, else "anonymous"), the model
the client asked for, the routing outcome (selected model, reasoning on/off), and a digest of the conversation before the last user turn, so an
answer never crosses users and never leaks into a different conversation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from mixroute.router.cache.base import CachedAnswer, CacheHit, CacheStore
from mixroute.router.cache.exact import ExactCache
from mixroute.router.cache.memory import MemoryCacheStore
from mixroute.router.config import CacheConfig
from mixroute.router.request import ChatRequest


def make_store(config: CacheConfig, dim: int | None = None) -> CacheStore:
    """`dim`: the embedder's vector size, checked against an existing Milvus collection."""
    if config.backend == "milvus":
        from mixroute.router.cache.milvus import MilvusCacheStore

        return MilvusCacheStore(
            config.milvus.uri, config.milvus.collection, config.max_entries, config.eviction, dim
        )
    return MemoryCacheStore(config.max_entries, config.eviction)


def cache_tenant(config: CacheConfig, request: ChatRequest, headers: Mapping[str, str]) -> str:
    tenant = None
    if config.scope.header:
        tenant = headers.get(config.scope.header.lower())
    if not tenant and config.scope.use_user_field:
        tenant = request.user
    return tenant or "anonymous"


def cache_scope(
    config: CacheConfig, request: ChatRequest, headers: Mapping[str, str], route: str = ""
) -> str:
    """`route` names the routing outcome (model, reasoning) so answers of different
    models or reasoning modes are never shared."""
    tenant = cache_tenant(config, request, headers)
    context = list(request.messages[:-1])
    material = json.dumps([tenant, request.model, route, context], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


class SemanticCache:
    def __init__(self, config: CacheConfig, dim: int | None = None) -> None:
        self.store = make_store(config, dim)
        self.backend = config.backend
        self.exact = ExactCache(config.max_entries)

    async def lookup(self, config: CacheConfig, scope: str, vector: np.ndarray) -> CacheHit | None:
        args = (scope, vector, config.similarity_threshold, time.time())
        if self.store.is_blocking:
            return await asyncio.to_thread(self.store.lookup, *args)
        return self.store.lookup(*args)

    async def save(self, config: CacheConfig, scope: str, vector: np.ndarray, answer: CachedAnswer) -> None:
        # A reload may change the bound; it applies from the next store on.
        self.exact.max_entries = config.max_entries
        self.store.max_entries = config.max_entries
        args = (scope, vector, answer, time.time(), config.ttl_seconds)
        if self.store.is_blocking:
            await asyncio.to_thread(self.store.store, *args)
        else:
            self.store.store(*args)

    def close(self) -> None:
        self.store.close()


def answer_from_json(body: bytes) -> CachedAnswer | None:
    """The cacheable part of a non-streamed chat completion (None if it is not plain text)."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, str) or choice.get("finish_reason") not in ("stop", "length"):
        return None
    return CachedAnswer(content=content, model=str(data.get("model", "")), finish_reason=choice["finish_reason"])


class StreamRecorder:
    """Assembles a relayed SSE stream into a CachedAnswer without delaying any chunk."""

    def __init__(self) -> None:
        self._buffer = b""
        self._parts: list[str] = []
        self._model = ""
        self._finish_reason: str | None = None
        self._is_valid = True

    def feed(self, chunk: bytes) -> None:
        if not self._is_valid:
            return
        self._buffer += chunk
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            for line in event.splitlines():
                if line.startswith(b"data:"):
                    self._on_data(line[5:].strip())

    def _on_data(self, data: bytes) -> None:
        if data == b"[DONE]":
            return
        try:
            payload: dict[str, Any] = json.loads(data)
            choice = payload["choices"][0] if payload.get("choices") else None
        except (ValueError, KeyError, TypeError):
            self._is_valid = False
            return
        self._model = payload.get("model") or self._model
        if choice is None:
            return
        delta = choice.get("delta") or {}
        if delta.get("tool_calls"):
            self._is_valid = False
        if isinstance(delta.get("content"), str):
            self._parts.append(delta["content"])
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]

    def answer(self) -> CachedAnswer | None:
        if not self._is_valid or self._finish_reason not in ("stop", "length"):
            return None
        return CachedAnswer(content="".join(self._parts), model=self._model, finish_reason=self._finish_reason)
