"""KV transfer between a prefill and a decode worker: transport choice, the direct
(same-host) path, and the fallback to the host-staged stream.

Transports:
- `host` (always works, any two hosts): the decode worker calls the prefill's `kv_export`,
  which streams a `KvExportHeader` and one `KvLayerChunk` per layer over the request plane
  (GPU -> host memory -> socket -> host memory -> GPU), then frees the blocks.
- `direct` (same host, torch engines): once per prefill peer the decode worker asks for its
  KV cache (`kv_share` -> `KvShareInfo`: a CUDA IPC handle, or a named shared-memory
  segment on the CPU) and maps it. Per request it asks `kv_export` with
  `transport="direct"`, which answers with a header naming the held block ids and lends
  them; the decode worker copies those blocks straight into its own device memory (GPU to
  GPU over NVLink/PCIe, or within one GPU), then calls `kv_release`.

Choice: a prefill worker whose engine can share its cache stamps its `host_id` on the
`KvTransferHandle`. A decode worker with `--kv-transport auto` goes direct when that
host id equals its own and its engine can import a device tensor; anything that fails on
the direct path (peer refuses, GPU not visible, IPC error, mapping stale) is logged and
the same request is pulled host-staged instead (the blocks are still held: a failed
direct copy never frees them). A peer whose cache cannot be mapped at all is remembered
and not tried again. `--kv-transport host` never goes direct.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec
from prometheus_client import CollectorRegistry, Counter

from mixroute.engine.api import KvExport
from mixroute.errors import EngineError, RequestPlaneError
from mixroute.logs import kv
from mixroute.protocol.messages import (
    KvExportHeader,
    KvExportRequest,
    KvLayerChunk,
    KvReleaseRequest,
    KvShareInfo,
    KvShareRequest,
    KvTransferHandle,
    decoder,
    encode,
)
from mixroute.runtime.requests.base import RequestClient

if TYPE_CHECKING:
    from mixroute.engine.kv_transfer.peer_kv import PeerKv

log = logging.getLogger(__name__)

KV_EXPORT_ENDPOINT = "kv_export"
KV_SHARE_ENDPOINT = "kv_share"
KV_RELEASE_ENDPOINT = "kv_release"

TransportMode = Literal["auto", "host"]
TRANSPORT_MODES: tuple[TransportMode, ...] = ("auto", "host")


@runtime_checkable
class DirectKvEngine(Protocol):
    """What an engine offers for the direct path (the torch `AsyncEngine` does; the mocker does not)."""

    kv_device: Any
    """torch.device of the KV cache."""
    supports_direct_kv: bool
    """False for a tensor-parallel engine (its cache is split over processes)."""

    async def share_kv(self, host_id: str) -> KvShareInfo: ...

    async def lend_kv(self, transfer_id: str) -> KvExportHeader: ...

    async def release_kv(self, transfer_id: str) -> None: ...


class KvTransferCounters:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "mixroute_worker_kv"
        self.imports = Counter(f"{p}_imports", "KV imports by transport", ["transport"], registry=registry)
        self.import_bytes = Counter(f"{p}_import_bytes", "KV bytes imported, by transport", ["transport"], registry=registry)
        self.import_seconds = Counter(
            f"{p}_import_seconds", "time spent pulling KV (request to data on this device), by transport",
            ["transport"], registry=registry,
        )
        self.direct_fallbacks = Counter(
            f"{p}_direct_fallbacks", "direct KV pulls that failed and went host-staged instead", registry=registry
        )
        self.lends = Counter(f"{p}_lends", "held KV lent to a same-host decode worker (direct export)", registry=registry)


def _direct(engine: object, mode: TransportMode) -> DirectKvEngine | None:
    if mode == "auto" and isinstance(engine, DirectKvEngine) and engine.supports_direct_kv:
        return engine
    return None


def _nbytes_staged(export: KvExport) -> int:
    return sum(len(layer) for layer in export.layers)


class KvPuller:
    """The decode side: fetch a finished prefill's blocks by the best transport that works."""

    def __init__(
        self, engine: object, client: RequestClient, counters: KvTransferCounters, *, host_id: str,
        mode: TransportMode = "auto",
    ) -> None:
        self.client = client
        self.counters = counters
        self.host_id = host_id
        self.direct_engine = _direct(engine, mode)
        self._peers: dict[str, PeerKv] = {}
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self._unusable: set[str] = set()
        """Peers whose cache could not be mapped: not tried again."""
        self._header = decoder(KvExportHeader)
        self._chunk = decoder(KvLayerChunk)
        self._share = decoder(KvShareInfo)

    def goes_direct(self, handle: KvTransferHandle) -> bool:
        return (
            self.direct_engine is not None
            and bool(handle.host_id)
            and handle.host_id == self.host_id
            and handle.source_address not in self._unusable
        )

    async def pull(self, handle: KvTransferHandle) -> KvExport:
        if self.goes_direct(handle):
            try:
                return await self.pull_direct(handle)
            except (RequestPlaneError, EngineError, RuntimeError, OSError, msgspec.DecodeError) as exc:
                # RuntimeError: torch's CUDA errors (IPC not permitted, peer access, ...).
                log.warning("direct kv pull failed; pulling host-staged %s",
                            kv(transfer_id=handle.transfer_id, source=handle.source_address, error=exc))
                self.counters.direct_fallbacks.inc()
                self._peers.pop(handle.source_address, None)
        return await self.pull_staged(handle)

    async def pull_staged(self, handle: KvTransferHandle) -> KvExport:
        started = time.perf_counter()
        request = encode(KvExportRequest(transfer_id=handle.transfer_id))
        stream = self.client.stream(handle.source_address, KV_EXPORT_ENDPOINT, request)
        export: KvExport | None = None
        try:
            async for payload in stream:
                if export is None:
                    export = KvExport(self._header.decode(payload))
                else:
                    chunk = self._chunk.decode(payload)
                    if chunk.layer != len(export.layers):
                        raise EngineError(f"KV export out of order: layer {chunk.layer}, expected {len(export.layers)}")
                    export.layers.append(chunk.data)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        if export is None or len(export.layers) != export.header.num_layers:
            got = 0 if export is None else len(export.layers)
            raise RequestPlaneError(f"incomplete KV export from {handle.source_address}: {got} layers")
        self._count("host", _nbytes_staged(export), started)
        return export

    async def pull_direct(self, handle: KvTransferHandle) -> KvExport:
        from mixroute.engine.kv_transfer.peer_kv import DirectKvExport

        assert self.direct_engine is not None
        started = time.perf_counter()
        address = handle.source_address
        peer = await self._peer(address)
        header = await self._lend(handle)
        if header.transport != "direct" or not header.block_ids:
            raise EngineError("the prefill worker answered a direct export without block ids")
        if header.share_id != peer.share_id:
            # The engine behind the address changed since we mapped it.
            self._peers.pop(address, None)
            peer = await self._peer(address)
            if header.share_id != peer.share_id:
                raise EngineError("the prefill worker's KV share changed during the transfer")
        device = self.direct_engine.kv_device
        blocks = await asyncio.to_thread(peer.copy_blocks, list(header.block_ids), device)
        await self._release(handle)
        self._count("direct", blocks.numel() * blocks.element_size(), started)
        return DirectKvExport(header=header, blocks=blocks)

    def _count(self, transport: str, nbytes: int, started: float) -> None:
        self.counters.imports.labels(transport).inc()
        self.counters.import_bytes.labels(transport).inc(nbytes)
        self.counters.import_seconds.labels(transport).inc(time.perf_counter() - started)

    async def _peer(self, address: str) -> PeerKv:
        from mixroute.engine.kv_transfer.peer_kv import PeerKv

        lock = self._peer_locks.setdefault(address, asyncio.Lock())
        async with lock:
            peer = self._peers.get(address)
            if peer is not None:
                return peer
            info = self._share.decode(await _one(self.client.stream(
                address, KV_SHARE_ENDPOINT, encode(KvShareRequest(host_id=self.host_id))
            )))
            if info.host_id != self.host_id:
                self._unusable.add(address)
                raise EngineError(f"the prefill worker is on host {info.host_id!r}, not this one")
            try:
                peer = await asyncio.to_thread(PeerKv, info)
            except (EngineError, RuntimeError, OSError):
                self._unusable.add(address)
                raise
            log.info("kv peer mapped %s", kv(source=address, device=info.device, shape=info.shape))
            self._peers[address] = peer
            return peer

    async def _lend(self, handle: KvTransferHandle) -> KvExportHeader:
        request = KvExportRequest(transfer_id=handle.transfer_id, transport="direct")
        return self._header.decode(
            await _one(self.client.stream(handle.source_address, KV_EXPORT_ENDPOINT, encode(request)))
        )

    async def _release(self, handle: KvTransferHandle) -> None:
        """Tell the prefill the blocks are copied. A failure here costs nothing but the
        prefill's hold timeout: the data is already ours."""
        try:
            request = encode(KvReleaseRequest(transfer_id=handle.transfer_id))
            await _drain(self.client.stream(handle.source_address, KV_RELEASE_ENDPOINT, request))
        except RequestPlaneError as exc:
            log.warning("kv release failed %s", kv(transfer_id=handle.transfer_id, error=exc))

    def close(self) -> None:
        self._peers.clear()


async def _one(stream: AsyncIterator[bytes]) -> bytes:
    try:
        async for payload in stream:
            return payload
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    raise RequestPlaneError("the peer ended the stream without an answer")


async def _drain(stream: AsyncIterator[bytes]) -> None:
    try:
        async for _ in stream:
            pass
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


class KvLender:
    """The prefill side: the `kv_share` and `kv_release` endpoints and direct exports."""

    def __init__(self, engine: object, counters: KvTransferCounters, *, host_id: str, mode: TransportMode = "auto") -> None:
        self.engine = _direct(engine, mode)
        self.counters = counters
        self.host_id = host_id
        self._share_request = decoder(KvShareRequest)
        self._release_request = decoder(KvReleaseRequest)

    @property
    def can_lend(self) -> bool:
        return self.engine is not None

    async def kv_share(self, payload: bytes) -> AsyncIterator[bytes]:
        request = self._share_request.decode(payload)
        if self.engine is None:
            raise EngineError("this worker does not share its KV cache (engine or --kv-transport host)")
        if request.host_id != self.host_id:
            raise EngineError("KV sharing is only for workers on the same host")
        yield encode(await self.engine.share_kv(self.host_id))

    async def lend(self, transfer_id: str) -> bytes:
        """A direct export's one frame: the header naming the lent block ids."""
        if self.engine is None:
            raise EngineError("this worker does not lend KV blocks (engine or --kv-transport host)")
        try:
            header = await self.engine.lend_kv(transfer_id)
        except KeyError:
            raise EngineError(f"no held KV for transfer {transfer_id!r} (expired or already exported)") from None
        self.counters.lends.inc()
        return encode(header)

    async def kv_release(self, payload: bytes) -> AsyncIterator[bytes]:
        request = self._release_request.decode(payload)
        if self.engine is not None:
            await self.engine.release_kv(request.transfer_id)
        yield b""  # an empty frame acknowledges
