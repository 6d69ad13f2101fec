"""The worker's request-plane endpoints.

- `generate`: one `GenerateRequest` in, `GenerateFrame`s out. A request carrying a
  `kv_transfer` handle first pulls the prompt's KV from the prefill worker that holds it
  (`kv_export` there), then decodes without computing the prompt. A `prefill_only`
  request's final frame carries a handle naming this worker's address.
- `kv_export`: a `KvExportRequest` in; a `KvExportHeader` then one `KvLayerChunk` per layer out
  (`transport="direct"`: the header alone, naming the lent block ids; see `kv_transfer.py`).
- `kv_share`, `kv_release`: the direct (same-host) KV path, in `kv_transfer.py`.
- `kv_dump`: one `KvEventBatch` out (a `cleared` event then `stored` events): what a
  router that missed events needs to rebuild its view of this worker. A threaded engine
  (torch) hands out the dump under its step lock, which a long step holds for seconds, so
  the dump is taken and encoded on a thread: the event loop keeps answering pings and
  streaming other requests' frames meanwhile.

Cancelling a stream (client gone) closes the engine's iterator, which aborts the request.

Errors: an engine failure ends the stream with a final frame carrying a typed
`error_code` and a message safe for clients; the details (exception type, torch text)
are logged here with the request id, never sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec
from prometheus_client import CollectorRegistry, Counter

from mixroute.engine.api import Engine, KvExport
from mixroute.engine.kv_transfer.host import host_id as this_host_id
from mixroute.errors import EngineError, OutOfBlocksError, RequestPlaneError, RequestTooLongError
from mixroute.logs import kv
from mixroute.protocol.messages import (
    ERROR_CONTEXT_LENGTH,
    ERROR_INTERNAL,
    ERROR_OVERLOADED,
    GenerateFrame,
    GenerateRequest,
    KvEventBatch,
    KvExportRequest,
    KvLayerChunk,
    KvTransferHandle,
    decoder,
    encode,
)
from mixroute.runtime.requests.base import RequestClient
from mixroute.worker.kv_transfer import (
    KV_EXPORT_ENDPOINT,
    KvLender,
    KvPuller,
    KvTransferCounters,
    TransportMode,
)

log = logging.getLogger(__name__)

__all__ = ["KV_DUMP_ENDPOINT", "KV_EXPORT_ENDPOINT", "WorkerCounters", "WorkerHandlers"]

KV_DUMP_ENDPOINT = "kv_dump"


class WorkerCounters:
    """Prompt-token accounting: computed here, served from the prefix cache, or imported."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "mixroute_worker"
        self.requests = Counter(f"{p}_generate_requests", "generate requests by kind", ["kind"], registry=registry)
        self.prompt_tokens = Counter(f"{p}_prompt_tokens", "prompt tokens of finished requests", registry=registry)
        self.computed_prompt_tokens = Counter(
            f"{p}_computed_prompt_tokens", "prompt tokens this worker ran through the model", registry=registry
        )
        self.cached_prompt_tokens = Counter(
            f"{p}_cached_prompt_tokens", "prompt tokens served from this worker's prefix cache", registry=registry
        )
        self.imported_prompt_tokens = Counter(
            f"{p}_imported_prompt_tokens", "prompt tokens whose KV was imported from a prefill worker", registry=registry
        )
        self.generated_tokens = Counter(f"{p}_generated_tokens", "tokens generated", registry=registry)
        self.kv_exports = Counter(f"{p}_kv_exports", "KV exports served to decode workers", registry=registry)
        self.kv_dumps = Counter(f"{p}_kv_dumps", "KV event dumps served to routers", registry=registry)
        self.cancelled = Counter(
            f"{p}_cancelled_requests", "requests whose caller went away before the end (aborted here)", registry=registry
        )
        self.kv_transfer = KvTransferCounters(registry)


class WorkerHandlers:
    def __init__(
        self,
        engine: Engine,
        client: RequestClient,
        counters: WorkerCounters,
        worker_id: int,
        *,
        is_engine_threaded: bool = True,
        host_id: str | None = None,
        kv_transport: TransportMode = "auto",
    ) -> None:
        self.engine = engine
        self.is_engine_threaded = is_engine_threaded
        """The engine's state lives on its own thread (reads may wait for its step lock)."""
        self.client = client
        self.counters = counters
        self.worker_id = worker_id
        self.address = ""
        """This worker's request-plane address, put in the KV handles it returns."""
        self.host_id = this_host_id() if host_id is None else host_id
        self.kv_puller = KvPuller(engine, client, counters.kv_transfer, host_id=self.host_id, mode=kv_transport)
        self.kv_lender = KvLender(engine, counters.kv_transfer, host_id=self.host_id, mode=kv_transport)
        self.kv_share = self.kv_lender.kv_share
        self.kv_release = self.kv_lender.kv_release
        self._request = decoder(GenerateRequest)
        self._export_request = decoder(KvExportRequest)
        # Only a worker that can lend its blocks names its host: decode workers elsewhere
        # (or of another engine) then go host-staged without asking.
        self._handle_host_id = self.host_id if self.kv_lender.can_lend else ""

    async def generate(self, payload: bytes) -> AsyncIterator[bytes]:
        request = self._request.decode(payload)
        async for frame in self.generate_frames(request):
            yield encode(frame)

    async def generate_frames(self, request: GenerateRequest) -> AsyncIterator[GenerateFrame]:
        """Shared by the request-plane endpoint and the worker's own HTTP API."""
        imported: KvExport | None = None
        kind = "prefill" if request.prefill_only else "both"
        if request.kv_transfer is not None:
            kind = "decode"
            try:
                imported = await self.pull_kv(request.kv_transfer)
            except (RequestPlaneError, EngineError, msgspec.DecodeError) as exc:
                # The prefill worker died or dropped the blocks: computing the prompt here
                # is slower but still answers the request.
                log.warning("kv pull failed; computing the prompt %s", kv(request_id=request.request_id, error=exc))
                request = msgspec.structs.replace(request, kv_transfer=None)
                kind = "decode-fallback"
        self.counters.requests.labels(kind).inc()
        frames = self.engine.generate(request, imported)
        checked = _failures_as_frames(frames, request.request_id)
        try:
            async for frame in checked:
                if frame.kv_transfer is not None:
                    frame.kv_transfer = msgspec.structs.replace(
                        frame.kv_transfer, source_address=self.address, worker_id=self.worker_id,
                        host_id=self._handle_host_id,
                    )
                if frame.usage is not None:
                    self._count(frame)
                yield frame
        except (asyncio.CancelledError, GeneratorExit):
            # Only a caller that went away counts as cancelled (failures end with a frame).
            self.counters.cancelled.inc()
            raise
        finally:
            await checked.aclose()  # type: ignore[attr-defined]
            await frames.aclose()  # type: ignore[attr-defined]

    def _count(self, frame: GenerateFrame) -> None:
        u = frame.usage
        assert u is not None
        c = self.counters
        # `cached_tokens` counts imported tokens too (they are not computed here either).
        not_computed = max(u.cached_tokens, u.imported_tokens)
        c.prompt_tokens.inc(u.prompt_tokens)
        c.cached_prompt_tokens.inc(not_computed - u.imported_tokens)
        c.imported_prompt_tokens.inc(u.imported_tokens)
        c.computed_prompt_tokens.inc(max(u.prompt_tokens - not_computed, 0))
        c.generated_tokens.inc(u.completion_tokens)

    async def pull_kv(self, handle: KvTransferHandle) -> KvExport:
        """Fetch a finished prefill's blocks from the prefill worker that holds them
        (directly when it shares this host, else host-staged: `kv_transfer.py`)."""
        export = await self.kv_puller.pull(handle)
        log.debug("kv imported %s", kv(transfer_id=handle.transfer_id, num_tokens=export.header.num_tokens))
        return export

    async def kv_export(self, payload: bytes) -> AsyncIterator[bytes]:
        request = self._export_request.decode(payload)
        if request.transport == "direct":
            yield await self.kv_lender.lend(request.transfer_id)
            return
        try:
            export = await self.engine.export_kv(request.transfer_id)
        except KeyError:
            raise EngineError(
                f"no held KV for transfer {request.transfer_id!r} (expired or already exported)"
            ) from None
        self.counters.kv_exports.inc()
        yield encode(export.header)
        for layer, data in enumerate(export.layers):
            yield encode(KvLayerChunk(layer=layer, data=data))

    async def kv_dump(self, payload: bytes) -> AsyncIterator[bytes]:
        self.counters.kv_dumps.inc()
        if self.is_engine_threaded:
            yield await asyncio.to_thread(self._dump)
        else:
            yield self._dump()  # the engine runs on this loop: reading it here is safe and cannot block

    def _dump(self) -> bytes:
        return encode(KvEventBatch(worker_id=self.worker_id, events=self.engine.kv_events_dump()))


async def _failures_as_frames(frames: AsyncIterator[GenerateFrame], request_id: str) -> AsyncIterator[GenerateFrame]:
    """The engine's frames, with every failure turned into a final frame with a typed
    `error_code` and a client-safe message; the engine's own text is logged."""
    try:
        async for frame in frames:
            if frame.error is not None and frame.error_code is None:
                log.error("engine failed the request %s", kv(request_id=request_id, error=frame.error))
                frame.error = "the worker failed to process the request"
                frame.error_code = ERROR_INTERNAL
                frame.finish_reason = frame.finish_reason or "error"
            yield frame
    except RequestTooLongError as exc:
        # Our own length check: its message says how to fix the request, nothing internal.
        yield GenerateFrame(finish_reason="error", error=str(exc), error_code=ERROR_CONTEXT_LENGTH)
    except OutOfBlocksError as exc:
        log.warning("engine out of KV blocks %s", kv(request_id=request_id, error=exc))
        yield GenerateFrame(finish_reason="error", error="the worker has no room for the request now", error_code=ERROR_OVERLOADED)
    except Exception as exc:
        log.error("engine raised for a request %s", kv(request_id=request_id, error=repr(exc)), exc_info=not isinstance(exc, EngineError))
        yield GenerateFrame(finish_reason="error", error="the worker failed to process the request", error_code=ERROR_INTERNAL)
