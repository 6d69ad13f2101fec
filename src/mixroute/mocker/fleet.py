"""Several mocker engines in one process, each its own worker instance."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from mixroute.engine.api import Engine
from mixroute.errors import ConfigError
from mixroute.mocker.config import MockerConfig
from mixroute.mocker.engine import MockerEngine

ServeOne = Callable[[Engine, int], Coroutine[Any, Any, None]]


def new_worker_id() -> int:
    """A random 63-bit instance id (positive as a signed int64, like Dynamo's lease ids)."""
    return secrets.randbits(63) or 1


def build_mockers(
    config: MockerConfig, num_workers: int, worker_ids: list[int] | None = None
) -> list[MockerEngine]:
    if num_workers < 1:
        raise ConfigError(f"--num-workers must be >= 1, got {num_workers}")
    if worker_ids is not None and len(worker_ids) != num_workers:
        raise ConfigError(f"got {len(worker_ids)} worker ids for {num_workers} workers")
    ids = worker_ids or [new_worker_id() for _ in range(num_workers)]
    # Different seeds so the workers' pseudo-random outputs differ.
    return [
        MockerEngine.from_config(config.with_seed(config.seed + i), worker_id=w)
        for i, w in enumerate(ids)
    ]


async def run_mockers(
    config: MockerConfig, num_workers: int, serve_one: ServeOne, worker_ids: list[int] | None = None
) -> None:
    """Run `serve_one(engine, worker_id)` for each of `num_workers` mockers concurrently.

    `serve_one` registers and serves one instance (instance id = worker_id) until it is
    cancelled or returns. If one fails, the others are cancelled; every engine is closed."""
    engines = build_mockers(config, num_workers, worker_ids)
    try:
        async with asyncio.TaskGroup() as tg:
            for engine in engines:
                tg.create_task(
                    serve_one(engine, engine.worker_id), name=f"mocker-serve-{engine.worker_id:x}"
                )
    finally:
        await asyncio.gather(*(asyncio.shield(e.close()) for e in engines), return_exceptions=True)
