"""The engine interface the worker uses. Implemented by the PyTorch engine
(`mixroute.engine.async_engine.AsyncEngine`) and by the mocker (`mixroute.mocker`).

Rules:
- `generate` yields `GenerateFrame`s as tokens are produced; the last frame has
  `finish_reason` and `usage`. Closing the iterator early aborts the request.
- `prefill_only=True`: the engine computes the prompt, samples the first token, and
  returns it in a final frame whose `kv_transfer` handle names the held blocks
  (`transfer_id`); they stay referenced until `export_kv` or `release_kv`, or until
  `kv_hold_timeout_s` passes (then they are freed, so a dead decode worker leaks nothing).
- `imported`: the decode side passes the `KvExport` it pulled; the engine copies those
  blocks into its cache (registering their hashes for prefix caching) and decodes
  without computing the prompt; `usage.imported_tokens` counts them.
- KV events come out through `next_kv_events()` (waits for at least one) in event-id
  order; `kv_events_dump()` returns a `cleared` event followed by `stored` events that
  rebuild the current cached set (for a subscriber that saw a gap).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from mixroute.protocol.messages import (
    GenerateFrame,
    GenerateRequest,
    KvEvent,
    KvExportHeader,
    LoadMetrics,
)


@dataclass(slots=True)
class KvExport:
    header: KvExportHeader
    layers: list[bytes] = field(default_factory=list)
    """One entry per layer, as in `KvLayerChunk.data`."""


class Engine(Protocol):
    model_name: str
    block_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]

    def generate(self, request: GenerateRequest, imported: KvExport | None = None) -> AsyncIterator[GenerateFrame]: ...

    async def abort(self, request_id: str) -> None: ...

    async def export_kv(self, transfer_id: str) -> KvExport:
        """The held blocks of a finished prefill; frees them. KeyError if unknown/expired."""

    async def release_kv(self, transfer_id: str) -> None: ...

    async def next_kv_events(self) -> list[KvEvent]: ...

    def kv_events_dump(self) -> list[KvEvent]: ...

    def load_metrics(self) -> LoadMetrics: ...

    async def close(self) -> None: ...
