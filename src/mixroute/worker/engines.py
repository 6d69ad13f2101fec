"""Engine registry: `--engine torch|mocker`, each imported only when chosen (torch is heavy,
the mocker needs none of it)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Literal

from mixroute.engine.api import Engine
from mixroute.errors import ConfigError


def parse_device(value: str) -> tuple[Literal["cpu", "cuda"], int]:
    """`cpu`, `cuda` or `cuda:N` -> (device, index)."""
    kind, _, index = value.partition(":")
    if kind == "cpu" and not index:
        return "cpu", 0
    if kind == "cuda" and (not index or index.isdigit()):
        return "cuda", int(index or 0)
    raise ConfigError(f"--device {value!r}: use cpu, cuda or cuda:N")


def _torch_engine(args: argparse.Namespace, worker_id: int) -> Engine:
    from pydantic import ValidationError

    from mixroute.engine.async_engine import AsyncEngine
    from mixroute.engine.config import EngineConfig

    device, device_index = parse_device(args.device)
    try:
        config = EngineConfig(
            model_path=args.model,
            served_model_name=args.served_model_name,
            device=device,
            device_index=device_index,
            dtype=args.dtype,
            block_size=args.block_size,
            num_blocks=args.num_blocks,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_num_seqs=args.max_num_seqs or 64,
            # None lets the engine pick its device default (512 on CPU, 2048 on CUDA).
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            enable_prefix_caching=not args.no_prefix_caching,
            worker_id=worker_id,
            seed=args.seed,
            tensor_parallel_size=args.tensor_parallel_size,
            kv_offload_host_blocks=args.kv_offload_host_blocks,
            kv_offload_disk_dir=args.kv_offload_disk_dir,
            kv_offload_disk_blocks=args.kv_offload_disk_blocks,
            enforce_eager=args.enforce_eager,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--{'-'.join(str(p) for p in first['loc']).replace('_', '-')}: {first['msg']}") from exc
    return AsyncEngine.from_config(config)


def _mocker_engine(args: argparse.Namespace, worker_id: int) -> Engine:
    from mixroute.mocker.config import mocker_config_from_args
    from mixroute.mocker.engine import MockerEngine

    return MockerEngine.from_config(mocker_config_from_args(args), worker_id)  # type: ignore[return-value]


ENGINES: dict[str, Callable[[argparse.Namespace, int], Engine]] = {
    "torch": _torch_engine,
    "mocker": _mocker_engine,
}


THREADED_ENGINES = frozenset({"torch"})
"""Engines whose state lives on their own thread: a read such as `kv_events_dump` may wait
for a whole engine step, so the worker makes it from a thread, never from its event loop.
The others (mocker) run on the event loop, where such reads are instant and only safe there."""


def engine_has_failed(engine: Engine) -> bool:
    """True once the engine can no longer make progress: the thread or task it runs on
    ended without `close()`. Uses the engine's `is_alive()` when it has one; otherwise
    looks at the thread (torch) or task (mocker) of the known engines (the proposed
    `is_alive()` method is in /work/team/fixer-notes.md)."""
    probe = getattr(engine, "is_alive", None)
    if callable(probe):
        return not probe()
    if getattr(engine, "_closed", False):
        return False
    thread = getattr(engine, "_thread", None)
    if thread is not None and not thread.is_alive():
        return True
    task = getattr(engine, "_task", None)
    return isinstance(task, asyncio.Task) and task.done()


def build_engine(args: argparse.Namespace, worker_id: int) -> Engine:
    factory = ENGINES.get(args.engine)
    if factory is None:
        raise ConfigError(f"unknown --engine {args.engine!r}; use one of {', '.join(ENGINES)}")
    return factory(args, worker_id)
