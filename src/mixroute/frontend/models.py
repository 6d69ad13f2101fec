"""The served models and their workers, learned from discovery.

Each worker's record (`InstanceInfo` under `v1/instances/{ns}/{backend|prefill}/generate/`)
names its served model and tokenizer directory; the first worker of a model makes the
frontend load that tokenizer, and the model disappears from /v1/models when its last
worker is gone. Each model has a worker selector per pool (`backend`, `prefill`), so KV
overlap is tracked separately for prefill and decode workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from mixroute.errors import DiscoveryError, MixrouteError, NotFoundError
from mixroute.frontend.backend import ModelEntry
from mixroute.frontend.metrics import WorkerLoadSample
from mixroute.frontend.preprocess import ModelTokenizer
from mixroute.frontend.routing.selector import RouterMode, WorkerSelector
from mixroute.logs import kv
from mixroute.protocol.messages import InstanceInfo, decode_json
from mixroute.protocol.names import (
    COMPONENT_BACKEND,
    COMPONENT_PREFILL,
    ENDPOINT_GENERATE,
    instances_prefix,
    parse_instance_key,
)
from mixroute.runtime.discovery.base import Discovery

log = logging.getLogger(__name__)

_DEFAULT_MAX_MODEL_LEN = 8192
_RETRY_S = 1.0


@dataclass(slots=True, frozen=True)
class RouterSettings:
    mode: RouterMode = "kv"
    temperature: float = 0.0
    approx_ttl_s: float = 120.0
    use_kv_events: bool = True
    overlap_weight: float | None = None
    """None: the selector's default (env MIXROUTE_KV_OVERLAP_WEIGHT or DEFAULT_OVERLAP_WEIGHT)."""


@dataclass(slots=True)
class ModelPool:
    entry: ModelEntry
    decode: WorkerSelector
    prefill: WorkerSelector
    workers: dict[int, InstanceInfo] = field(default_factory=dict)
    """Backend (decode or both) workers."""
    prefill_workers: dict[int, InstanceInfo] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.workers and not self.prefill_workers


class ModelRegistry:
    """Owned by the frontend's event loop; `run()` is the one task that edits it."""

    def __init__(
        self,
        namespace: str,
        settings: RouterSettings,
        executor: Executor | None = None,
        on_worker_added: Callable[[WorkerSelector, int], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.settings = settings
        self._executor = executor
        self._pools: dict[str, ModelPool] = {}
        self._tokenizers: dict[str, ModelTokenizer] = {}
        self._by_worker: dict[int, tuple[ModelPool, WorkerSelector, InstanceInfo]] = {}
        self._keys: set[str] = set()
        self.on_worker_added = on_worker_added
        self.ready = asyncio.Event()
        """Set once the initial listing has been processed."""

    # ---- lookups ----

    def entries(self) -> list[ModelEntry]:
        return [p.entry for p in self._pools.values() if p.workers]

    def pool(self, name: str) -> ModelPool:
        pool = self._pools.get(name)
        if pool is None or not pool.workers:
            known = ", ".join(sorted(p.entry.name for p in self._pools.values() if p.workers)) or "none"
            raise NotFoundError(f"the model {name!r} does not exist; served models: {known}", param="model", code="model_not_found")
        return pool

    def worker(self, worker_id: int) -> tuple[ModelPool, WorkerSelector, InstanceInfo] | None:
        return self._by_worker.get(worker_id)

    def selectors(self) -> list[WorkerSelector]:
        return [s for p in self._pools.values() for s in (p.decode, p.prefill)]

    def load_samples(self) -> list[WorkerLoadSample]:
        out = []
        for pool in self._pools.values():
            for selector in (pool.decode, pool.prefill):
                for worker_id, load in selector.loads.items():
                    out.append(
                        WorkerLoadSample(
                            pool.entry.name, selector.name, worker_id, load.active_blocks, load.prefill_tokens, load.num_requests
                        )
                    )
        return out

    # ---- the watch task ----

    async def run(self, discovery: Discovery) -> None:
        """List, then watch; if discovery fails (etcd restarting), keep serving the workers
        already known, and list again to reconcile once it answers."""
        while True:
            try:
                await self._list_and_watch(discovery)
                return
            except DiscoveryError as exc:
                log.warning("discovery failed; retrying %s", kv(error=exc, retry_s=_RETRY_S))
                await asyncio.sleep(_RETRY_S)

    async def _list_and_watch(self, discovery: Discovery) -> None:
        prefix = instances_prefix(self.namespace)
        initial = await discovery.get_prefix(prefix)
        for key in [k for k in self._keys if k not in initial]:
            self._delete(key)  # gone while we were not watching
        for key, value in initial.items():
            await self._put(key, value)
        self.ready.set()
        async for event in discovery.watch_prefix(prefix):
            if event.kind == "put" and event.value is not None:
                await self._put(event.key, event.value)
            else:
                self._delete(event.key)

    async def _put(self, key: str, value: bytes) -> None:
        try:
            _, component, endpoint, worker_id = parse_instance_key(key)
            info = decode_json(value, InstanceInfo)
        except (ValueError, msgspec.DecodeError) as exc:
            log.warning("ignoring a bad instance record %s", kv(key=key, error=exc))
            return
        if endpoint != ENDPOINT_GENERATE or component not in (COMPONENT_BACKEND, COMPONENT_PREFILL):
            return
        if worker_id in self._by_worker:
            return
        try:
            pool = await self._pool_for(info)
        except (MixrouteError, OSError, ValueError) as exc:
            log.error("cannot serve a worker's model %s", kv(worker_id=f"{worker_id:x}", model=info.model, error=exc))
            return
        selector = pool.prefill if component == COMPONENT_PREFILL else pool.decode
        (pool.prefill_workers if component == COMPONENT_PREFILL else pool.workers)[worker_id] = info
        self._by_worker[worker_id] = (pool, selector, info)
        self._keys.add(key)
        selector.add_worker(worker_id)
        log.info("worker added %s", kv(model=info.model, component=component, worker_id=f"{worker_id:x}", address=info.address))
        if self.on_worker_added is not None:
            self.on_worker_added(selector, worker_id)

    def _delete(self, key: str) -> None:
        self._keys.discard(key)
        try:
            _, _, _, worker_id = parse_instance_key(key)
        except ValueError:
            return
        found = self._by_worker.pop(worker_id, None)
        if found is None:
            return
        pool, selector, info = found
        pool.workers.pop(worker_id, None)
        pool.prefill_workers.pop(worker_id, None)
        selector.remove_worker(worker_id)
        log.info("worker removed %s", kv(model=info.model, worker_id=f"{worker_id:x}"))

    async def _pool_for(self, info: InstanceInfo) -> ModelPool:
        pool = self._pools.get(info.model)
        if pool is not None:
            return pool
        path = info.model_path
        tokenizer = self._tokenizers.get(path)
        if tokenizer is None:
            tokenizer = await ModelTokenizer.load(path, self._executor)
            self._tokenizers[path] = tokenizer
        entry = ModelEntry(info.model, tokenizer, info.block_size, _max_model_len(info, path), int(time.time()))
        s = self.settings

        def selector(mode: RouterMode, name: str) -> WorkerSelector:
            return WorkerSelector(
                mode,
                block_size=info.block_size,
                temperature=s.temperature,
                approx_ttl_s=s.approx_ttl_s,
                name=name,
                use_kv_events=s.use_kv_events,
                overlap_weight=s.overlap_weight,
            )

        pool = ModelPool(entry, decode=selector(s.mode, COMPONENT_BACKEND), prefill=selector(s.mode, COMPONENT_PREFILL))
        self._pools[info.model] = pool
        log.info("model added %s", kv(model=info.model, path=path, max_model_len=entry.max_model_len))
        return pool


def _max_model_len(info: InstanceInfo, path: str) -> int:
    if info.max_model_len > 0:
        return info.max_model_len
    try:
        config = json.loads(Path(path, "config.json").read_text())
        return int(min(config.get("max_position_embeddings", _DEFAULT_MAX_MODEL_LEN), _DEFAULT_MAX_MODEL_LEN))
    except (OSError, ValueError):
        return _DEFAULT_MAX_MODEL_LEN
