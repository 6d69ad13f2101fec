"""Disaggregated serving: prefill on a prefill worker, decode on a decode worker.

1. A prefill worker, chosen by KV overlap among prefill workers, computes the prompt
   (`prefill_only=True`, one sampled token) and answers with a `KvTransferHandle`.
2. A decode worker, chosen by the decode pool's router, gets the request with the handle;
   it pulls the blocks from the prefill worker over the request plane (`kv_export`),
   emits the first token and decodes the rest.

Prompts under `min_prompt_tokens`, or a model with no prefill worker, run aggregated.
If the prefill step fails, the request falls back to aggregated rather than failing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from mixroute.errors import RequestPlaneError, UnavailableError
from mixroute.frontend.preprocess import PreparedPrompt
from mixroute.logs import kv
from mixroute.protocol.messages import GenerateFrame, GenerateRequest, KvTransferHandle

if TYPE_CHECKING:
    from mixroute.frontend.engine_client import RoutedBackend
    from mixroute.frontend.models import ModelPool

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class DisaggSettings:
    min_prompt_tokens: int = 64
    """Shorter prompts are cheaper to prefill in place than to transfer."""
    is_enabled: bool = True


def wants_disagg(pool: ModelPool, num_prompt_tokens: int, settings: DisaggSettings) -> bool:
    return settings.is_enabled and bool(pool.prefill_workers) and num_prompt_tokens >= settings.min_prompt_tokens


async def generate_disaggregated(
    backend: RoutedBackend, pool: ModelPool, request: GenerateRequest, prompt: PreparedPrompt
) -> AsyncIterator[GenerateFrame]:
    handle = await _prefill(backend, pool, request, prompt)
    if handle is None:
        frames = backend.generate_on(pool, pool.decode, pool.workers, request, prompt)
    else:
        decode_request = msgspec.structs.replace(request, kv_transfer=handle, prefill_only=False)
        frames = backend.generate_on(pool, pool.decode, pool.workers, decode_request, prompt)
    try:
        async for frame in frames:
            yield frame
    finally:
        await frames.aclose()  # type: ignore[attr-defined]


async def _prefill(
    backend: RoutedBackend, pool: ModelPool, request: GenerateRequest, prompt: PreparedPrompt
) -> KvTransferHandle | None:
    sampling = msgspec.structs.replace(request.sampling, max_tokens=1, min_tokens=0)
    prefill_request = msgspec.structs.replace(request, sampling=sampling, prefill_only=True, kv_transfer=None)
    handle: KvTransferHandle | None = None
    frames = backend.generate_on(pool, pool.prefill, pool.prefill_workers, prefill_request, prompt)
    try:
        async for frame in frames:
            if frame.error is not None:
                raise RequestPlaneError(f"{frame.error_code}: {frame.error}")
            if frame.kv_transfer is not None:
                handle = frame.kv_transfer
    except (RequestPlaneError, UnavailableError) as exc:
        log.warning("prefill failed; running aggregated %s", kv(request_id=request.request_id, error=exc))
        return None
    finally:
        await frames.aclose()  # type: ignore[attr-defined]
    if handle is None:
        log.warning("prefill returned no KV handle; running aggregated %s", kv(request_id=request.request_id))
    return handle
