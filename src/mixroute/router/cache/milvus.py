"""Semantic cache in Milvus via pymilvus: a milvus-lite file (`*.db`) or a server URI.

One collection, inner-product metric on unit vectors (= cosine). Scope and expiry are
scalar fields used in the search filter, so a hit never crosses scopes and never
returns an expired answer. Eviction when over `max_entries` drops expired entries, then
the least recently used (`lru`, default) or the oldest (`fifo`). Milvus has no cheap
"touch", so the time of an entry's last hit is kept in this process (a map bounded by the
collection's size); entries not hit since this process started count from their
creation. Every call blocks: the SemanticCache runs them in a thread.
"""

from __future__ import annotations

import threading
from typing import Literal

import numpy as np

from mixroute.errors import ConfigError
from mixroute.router.cache.base import CachedAnswer, CacheHit


class MilvusCacheStore:
    is_blocking = True

    def __init__(
        self, uri: str, collection: str, max_entries: int, eviction: Literal["lru", "fifo"] = "lru",
        dim: int | None = None,
    ) -> None:
        try:
            from pymilvus import MilvusClient
            from pymilvus.exceptions import MilvusException
        except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
            raise ConfigError(f"cache.backend milvus needs pymilvus: {exc}") from None
        try:
            self._client = MilvusClient(uri=uri)
        except (MilvusException, OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cache.milvus.uri {uri!r}: cannot open Milvus: {exc}") from None
        self.collection = collection
        self.max_entries = max_entries
        self.eviction = eviction
        self._last_hit: dict[int, float] = {}
        self._lock = threading.Lock()  # milvus-lite's client is not safe across threads
        self._has_collection = self._client.has_collection(collection)
        self._num_entries = self._count() if self._has_collection else 0
        if self._has_collection and dim is not None:
            stored = self._vector_dim()
            if stored != dim:
                self._client.close()
                raise ConfigError(
                    f"cache.milvus collection {collection!r} at {uri} holds {stored}-d vectors but the router's "
                    f"embedder makes {dim}-d ones (the embedder changed): set another cache.milvus.collection "
                    "or drop this one"
                )

    def _vector_dim(self) -> int | None:
        info = self._client.describe_collection(self.collection)
        for field in info.get("fields", []):
            if field.get("name") == "vector":
                return int(field.get("params", {}).get("dim", 0)) or None
        return None

    def __len__(self) -> int:
        return self._num_entries

    def _count(self) -> int:
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _ensure_collection(self, dim: int) -> None:
        if self._has_collection:
            return
        self._client.create_collection(
            self.collection, dimension=dim, primary_field_name="id", id_type="int",
            vector_field_name="vector", metric_type="IP", auto_id=True,
        )
        self._has_collection = True

    def lookup(self, scope: str, vector: np.ndarray, threshold: float, now: float) -> CacheHit | None:
        with self._lock:
            if not self._has_collection:
                return None
            results = self._client.search(
                self.collection, data=[vector.astype(np.float32).tolist()], limit=1,
                filter=f'scope == "{scope}" and expires_at > {now!r}',
                output_fields=["content", "model", "finish_reason"],
            )
        hits = results[0] if results else []
        if not hits or float(hits[0]["distance"]) < threshold:
            return None
        entity = hits[0]["entity"]
        if self.eviction == "lru":
            with self._lock:
                self._last_hit[int(hits[0]["id"])] = now
        answer = CachedAnswer(
            content=entity["content"], model=entity["model"], finish_reason=entity["finish_reason"]
        )
        return CacheHit(answer, float(hits[0]["distance"]))

    def store(self, scope: str, vector: np.ndarray, answer: CachedAnswer, now: float, ttl: float) -> None:
        row = {
            "vector": vector.astype(np.float32).tolist(), "scope": scope, "created_at": now,
            "expires_at": now + ttl, "content": answer.content, "model": answer.model,
            "finish_reason": answer.finish_reason,
        }
        with self._lock:
            self._ensure_collection(len(row["vector"]))
            self._client.insert(self.collection, [row])
            self._num_entries += 1
            if self._num_entries > self.max_entries:
                self._evict(now)

    def _evict(self, now: float) -> None:
        self._client.delete(self.collection, filter=f"expires_at <= {now!r}")
        self._num_entries = self._count()
        excess = self._num_entries - self.max_entries
        if excess <= 0:
            return
        rows = self._client.query(self.collection, filter="id >= 0", output_fields=["id", "created_at"])
        live = {int(r["id"]) for r in rows}
        self._last_hit = {i: t for i, t in self._last_hit.items() if i in live}

        def last_used(row: dict[str, float]) -> float:
            return max(row["created_at"], self._last_hit.get(int(row["id"]), 0.0))

        victims = [int(r["id"]) for r in sorted(rows, key=last_used)[:excess]]
        self._client.delete(self.collection, ids=victims)
        for victim in victims:
            self._last_hit.pop(victim, None)
        self._num_entries -= len(victims)

    def close(self) -> None:
        with self._lock:
            self._client.close()


