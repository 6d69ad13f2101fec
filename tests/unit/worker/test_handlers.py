from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from mixroute.engine.api import KvExport
from mixroute.errors import RemoteHandlerError
from mixroute.protocol.messages import (
    GenerateFrame,
    GenerateRequest,
    KvCleared,
    KvEvent,
    KvEventBatch,
    KvExportHeader,
    KvTransferHandle,
    LoadMetrics,
    SamplingParams,
    Usage,
    decoder,
    encode,
)
from mixroute.runtime.requests import open_request_client, start_request_server
from mixroute.worker.handlers import (
    KV_DUMP_ENDPOINT,
    KV_EXPORT_ENDPOINT,
    WorkerCounters,
    WorkerHandlers,
)


class FakeEngine:
    """Prefill: holds a 2-layer export under transfer "t1". Decode: echoes what it imported."""

    model_name = "fake"
    block_size = 4
    max_model_len = 64
    eos_token_ids = (0,)

    def __init__(self) -> None:
        self.held: dict[str, KvExport] = {}
        self.imported: list[KvExport] = []

    async def generate(self, request: GenerateRequest, imported: KvExport | None = None) -> AsyncIterator[GenerateFrame]:
        n = len(request.token_ids)
        if request.prefill_only:
            header = KvExportHeader(
                transfer_id="t1", token_ids=request.token_ids, num_tokens=n, block_size=4, num_blocks=2,
                num_layers=2, num_kv_heads=1, head_dim=2, dtype="float32", first_token_id=7,
            )  # fmt: skip
            self.held["t1"] = KvExport(header, [b"layer0", b"layer1"])
            handle = KvTransferHandle(source_address="", worker_id=0, transfer_id="t1", block_ids=(0, 1), num_tokens=n, first_token_id=7)
            yield GenerateFrame(token_ids=[7], finish_reason="length", usage=Usage(prompt_tokens=n, completion_tokens=1), kv_transfer=handle)
            return
        if imported is not None:
            self.imported.append(imported)
            yield GenerateFrame(token_ids=[7, 8], finish_reason="length", usage=Usage(prompt_tokens=n, completion_tokens=2, cached_tokens=n, imported_tokens=n))
            return
        yield GenerateFrame(token_ids=[5], finish_reason="stop", usage=Usage(prompt_tokens=n, completion_tokens=1, cached_tokens=4))

    async def abort(self, request_id: str) -> None: ...

    async def export_kv(self, transfer_id: str) -> KvExport:
        return self.held.pop(transfer_id)

    async def release_kv(self, transfer_id: str) -> None: ...

    async def next_kv_events(self) -> list[KvEvent]:
        raise NotImplementedError

    def kv_events_dump(self) -> list[KvEvent]:
        return [KvEvent(worker_id=1, event_id=3, data=KvCleared())]

    def load_metrics(self) -> LoadMetrics:
        return LoadMetrics(worker_id=1, num_active_blocks=0, num_total_blocks=10, num_running=0, num_waiting=0)

    async def close(self) -> None: ...


async def _worker(engine: FakeEngine, worker_id: int):  # type: ignore[no-untyped-def]
    client = open_request_client()
    registry = CollectorRegistry()
    handlers = WorkerHandlers(engine, client, WorkerCounters(registry), worker_id)  # type: ignore[arg-type]
    server = await start_request_server(
        endpoints={"generate": handlers.generate, KV_EXPORT_ENDPOINT: handlers.kv_export, KV_DUMP_ENDPOINT: handlers.kv_dump}
    )
    handlers.address = server.address
    return handlers, server, client, registry


async def test_prefill_then_decode_pulls_kv_over_request_plane() -> None:
    prefill_engine, decode_engine = FakeEngine(), FakeEngine()
    _p_handlers, p_server, p_client, _ = await _worker(prefill_engine, 0xA)
    d_handlers, d_server, d_client, d_registry = await _worker(decode_engine, 0xB)
    frame_decoder = decoder(GenerateFrame)
    try:
        prompt = list(range(8))
        req = GenerateRequest(request_id="r", token_ids=prompt, sampling=SamplingParams(max_tokens=1), prefill_only=True)
        frames = [frame_decoder.decode(p) async for p in p_client.stream(p_server.address, "generate", encode(req))]
        handle = frames[-1].kv_transfer
        assert handle is not None and handle.source_address == p_server.address and handle.worker_id == 0xA
        decode_req = GenerateRequest(request_id="r", token_ids=prompt, kv_transfer=handle)
        frames = [frame_decoder.decode(p) async for p in d_client.stream(d_server.address, "generate", encode(decode_req))]
        assert frames[-1].token_ids == [7, 8]
        assert decode_engine.imported[0].layers == [b"layer0", b"layer1"]
        assert d_registry.get_sample_value("mixroute_worker_imported_prompt_tokens_total") == 8
        assert d_registry.get_sample_value("mixroute_worker_computed_prompt_tokens_total") == 0
        # Exported once: a second pull names an unknown transfer and fails cleanly.
        with pytest.raises(RemoteHandlerError, match="no held KV"):
            await d_handlers.pull_kv(handle)
    finally:
        for s in (p_server, d_server):
            await s.stop()
        for c in (p_client, d_client):
            await c.close()


async def test_kv_dump_and_counters() -> None:
    engine = FakeEngine()
    _, server, client, registry = await _worker(engine, 0xC)
    try:
        payloads = [p async for p in client.stream(server.address, KV_DUMP_ENDPOINT, b"")]
        batch = decoder(KvEventBatch).decode(payloads[0])
        assert batch.worker_id == 0xC and isinstance(batch.events[0].data, KvCleared)
        req = GenerateRequest(request_id="x", token_ids=list(range(6)))
        [p async for p in client.stream(server.address, "generate", encode(req))]
        assert registry.get_sample_value("mixroute_worker_computed_prompt_tokens_total") == 2
        assert registry.get_sample_value("mixroute_worker_cached_prompt_tokens_total") == 4
    finally:
        await server.stop()
        await client.close()


async def test_decode_computes_the_prompt_when_the_kv_pull_fails() -> None:
    engine = FakeEngine()
    _, server, client, registry = await _worker(engine, 0xD)
    try:
        gone = KvTransferHandle(source_address="tcp://127.0.0.1:1", worker_id=1, transfer_id="t9", block_ids=(0,), num_tokens=4)
        req = GenerateRequest(request_id="f", token_ids=list(range(4)), kv_transfer=gone)
        frames = [decoder(GenerateFrame).decode(p) async for p in client.stream(server.address, "generate", encode(req))]
        assert frames[-1].finish_reason == "stop" and engine.imported == []
        assert registry.get_sample_value("mixroute_worker_generate_requests_total", {"kind": "decode-fallback"}) == 1
    finally:
        await server.stop()
        await client.close()
