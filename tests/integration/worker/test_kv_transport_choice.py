"""Which transport a decode worker uses, and the fallback: real torch engines (tiny model)
behind real request-plane servers in one process. Direct when both workers report the
same host; host-staged when the hosts differ or the prefill does not lend; a direct copy
that fails is retried host-staged for the same request, with identical tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from mixroute.engine.async_engine import AsyncEngine
from mixroute.engine.config import EngineConfig
from mixroute.engine.kv_transfer.peer_kv import PeerKv
from mixroute.protocol.messages import (
    GenerateFrame,
    GenerateRequest,
    KvTransferHandle,
    SamplingParams,
)
from mixroute.runtime.requests import (
    TcpRequestClient,
    TcpRequestServer,
    open_request_client,
    start_request_server,
)
from mixroute.worker.handlers import KV_EXPORT_ENDPOINT, WorkerCounters, WorkerHandlers
from mixroute.worker.kv_transfer import KV_RELEASE_ENDPOINT, KV_SHARE_ENDPOINT, TransportMode

pytestmark = pytest.mark.timeout(120)

PROMPT = list(range(20, 61))
MAX_TOKENS = 6


@dataclass
class Worker:
    engine: AsyncEngine
    handlers: WorkerHandlers
    server: TcpRequestServer
    client: TcpRequestClient
    registry: CollectorRegistry

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def close(self) -> None:
        await self.server.stop()
        await self.client.close()
        await self.engine.close()


async def _worker(model: Path, host_id: str, mode: TransportMode = "auto") -> Worker:
    engine = AsyncEngine.from_config(EngineConfig(model_path=str(model), num_blocks=64))
    client = open_request_client()
    registry = CollectorRegistry()
    handlers = WorkerHandlers(engine, client, WorkerCounters(registry), 1, host_id=host_id, kv_transport=mode)
    server = await start_request_server(endpoints={
        "generate": handlers.generate, KV_EXPORT_ENDPOINT: handlers.kv_export,
        KV_SHARE_ENDPOINT: handlers.kv_share, KV_RELEASE_ENDPOINT: handlers.kv_release,
    })
    handlers.address = server.address
    return Worker(engine, handlers, server, client, registry)


async def _tokens(frames: AsyncIterator[GenerateFrame]) -> tuple[list[int], GenerateFrame]:
    tokens: list[int] = []
    last = GenerateFrame()
    async for frame in frames:
        tokens.extend(frame.token_ids)
        last = frame
    return tokens, last


async def _disaggregated(prefill: Worker, decode: Worker, request_id: str) -> tuple[list[int], KvTransferHandle]:
    sampling = SamplingParams(max_tokens=MAX_TOKENS)
    _, last = await _tokens(prefill.handlers.generate_frames(
        GenerateRequest(request_id=request_id, token_ids=PROMPT, sampling=sampling, prefill_only=True)))
    handle = last.kv_transfer
    assert handle is not None
    tokens, final = await _tokens(decode.handlers.generate_frames(
        GenerateRequest(request_id=request_id, token_ids=PROMPT, sampling=sampling, kv_transfer=handle)))
    assert final.usage is not None and final.usage.imported_tokens == len(PROMPT)
    return tokens, handle


async def _scenarios(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefill = await _worker(model, "host-a")
    decode = await _worker(model, "host-a")
    elsewhere = await _worker(model, "host-b")
    lender_off = await _worker(model, "host-a", mode="host")
    try:
        expected, _ = await _tokens(decode.handlers.generate_frames(GenerateRequest(
            request_id="agg", token_ids=PROMPT, sampling=SamplingParams(max_tokens=MAX_TOKENS), cache_salt="agg")))

        # Same host: direct, and the prefill's blocks come back once released.
        tokens, handle = await _disaggregated(prefill, decode, "r1")
        assert tokens == expected and handle.host_id == "host-a"
        assert decode.value("mixroute_worker_kv_imports_total", transport="direct") == 1
        assert prefill.value("mixroute_worker_kv_lends_total") == 1
        assert prefill.engine.engine.pool.num_active == 0

        # Another host: host-staged without asking for a share.
        tokens, _ = await _disaggregated(prefill, elsewhere, "r2")
        assert tokens == expected
        assert elsewhere.value("mixroute_worker_kv_imports_total", transport="host") == 1
        assert prefill.value("mixroute_worker_kv_lends_total") == 1

        # A prefill with --kv-transport host names no host: staged.
        tokens, handle = await _disaggregated(lender_off, decode, "r3")
        assert tokens == expected and handle.host_id == ""
        assert decode.value("mixroute_worker_kv_imports_total", transport="host") == 1

        # The direct copy fails mid-way: the same request is pulled host-staged (the lent
        # blocks are taken back by the staged export), same tokens, nothing leaks.
        def broken(self: PeerKv, block_ids: list[int], device: torch.device) -> torch.Tensor:
            raise RuntimeError("CUDA error: peer access is not supported between these two devices")

        monkeypatch.setattr(PeerKv, "copy_blocks", broken)
        tokens, _ = await _disaggregated(prefill, decode, "r4")
        assert tokens == expected
        assert decode.value("mixroute_worker_kv_direct_fallbacks_total") == 1
        assert decode.value("mixroute_worker_kv_imports_total", transport="host") == 2
        assert decode.value("mixroute_worker_kv_imports_total", transport="direct") == 1
        assert decode.value("mixroute_worker_generate_requests_total", kind="decode-fallback") == 0
        await asyncio.sleep(0)
        assert prefill.engine.engine.pool.num_active == 0
        assert len(prefill.engine.engine.loans) == 0
    finally:
        for w in (prefill, decode, elsewhere, lender_off):
            await w.close()


def test_transport_choice_and_fallback(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    asyncio.run(_scenarios(tiny_model_dir, monkeypatch))
