"""The frontend moves its start-up objects out of the cyclic collector once its first
models are loaded, so later full collections do not walk them (bench/results/routing.md)."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

from mixroute.frontend.main import _freeze_when_ready


async def test_start_up_objects_are_frozen_once_the_registry_is_ready() -> None:
    registry = SimpleNamespace(ready=asyncio.Event())
    gc.unfreeze()
    task = asyncio.create_task(_freeze_when_ready(registry))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)
        assert not task.done() and gc.get_freeze_count() == 0  # nothing before the models
        registry.ready.set()
        await asyncio.wait_for(task, 5.0)
        assert gc.get_freeze_count() > 1000
    finally:
        task.cancel()
        gc.unfreeze()
