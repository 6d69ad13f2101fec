"""The semantic cache as the router uses it: scoping, TTL, and answer capture.

A cache key is (scope, embedding of the last user turn). The scope is a digest of
everything else that can change the answer: the user or tenant (a request header, else
the OpenAI `user` field, else "anonymous"), the model the client asked for, and the body
the upstream is sent (routed model, injected system prompt, reasoning switch, every
other message, images and other non-text parts of the last user turn, generation
parameters, tools) minus the last user turn's text, plus the numbers in that text. So an
answer never crosses users, conversations, settings or a changed system prompt, and
"17 * 23" never answers "17 * 24" however close their embeddings are. Requests whose
answer the cache could not reproduce (`n` > 1, log-probabilities) do not use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from mixroute.router.cache.base import CachedAnswer, CacheHit, CacheStore
from mixroute.router.cache.exact import ExactCache
from mixroute.router.cache.memory import MemoryCacheStore
from mixroute.router.config import CacheConfig
from mixroute.router.request import ChatRequest, message_text


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


# Body fields that say how the answer is delivered, or who asks (the tenant is keyed apart).
_DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user"})
_NUMBER = re.compile(r"\d+")


def is_cacheable(request: ChatRequest) -> bool:
    """False where a stored answer (one choice of plain text) would not be what was asked:
    several choices, or token log-probabilities."""
    body = request.body
    return body.get("n") in (None, 1) and not body.get("logprobs")


def cache_scope(
    config: CacheConfig, request: ChatRequest, headers: Mapping[str, str], forwarded: Mapping[str, Any]
) -> str:
    """Digest of everything but the last user turn's text (see the module docstring);
    `forwarded` is the body as the upstream receives it."""
    body = {k: v for k, v in forwarded.items() if k not in _DELIVERY_FIELDS}
    messages = list(body.get("messages") or [])
    last = _last_user_index(messages)
    if last is not None:
        messages[last] = _without_text(messages[last])
    body["messages"] = messages
    numbers = _NUMBER.findall(request.last_user_text())
    material = json.dumps(
        [cache_tenant(config, request, headers), request.model, numbers, body], sort_keys=True, default=str
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _last_user_index(messages: list[Any]) -> int | None:
    """The message `ChatRequest.last_user_text` reads: the last user turn with text."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, dict) and message.get("role") == "user" and message_text(message):
            return i
    return None


def _without_text(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        kept = [p for p in content if not (isinstance(p, dict) and p.get("type") == "text")]
        return {**message, "content": kept}
    return {**message, "content": ""}


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
