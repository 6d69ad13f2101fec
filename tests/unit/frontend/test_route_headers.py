"""The `x-mixroute-*` response headers: which worker the router chose and how long the
choice took, on streaming and non-streaming responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mixroute.frontend.app import create_app
from mixroute.frontend.disagg import DisaggSettings
from mixroute.frontend.engine_client import RoutedBackend
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.models import ModelRegistry, RouterSettings
from mixroute.frontend.routing.note import (
    CACHED_BLOCKS_HEADER,
    PREFILL_WORKER_ID_HEADER,
    ROUTE_US_HEADER,
    WORKER_ID_HEADER,
    RouteNote,
)
from mixroute.protocol.messages import encode_json
from mixroute.protocol.names import instance_key

from .test_registry_feed_backend import NS, FakeClient, FakeDiscovery, _eventually, _info


@pytest.fixture
async def routed(tokenizer_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClient]]:
    discovery, client = FakeDiscovery(), FakeClient()
    registry = ModelRegistry(NS, RouterSettings("round-robin"))
    task = asyncio.create_task(registry.run(discovery))  # type: ignore[arg-type]
    for w in (0xA1, 0xB2):
        await discovery.put(instance_key(NS, "backend", "generate", w), encode_json(_info(w, "alpha", tokenizer_dir)))
    await _eventually(lambda: bool(registry.entries()) and len(registry.pool("alpha").workers) == 2)
    backend = RoutedBackend(registry, client, ApiMetrics(), DisaggSettings())  # type: ignore[arg-type]
    app = create_app(backend, ApiMetrics())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http, client
    task.cancel()


def _last_worker(client: FakeClient) -> str:
    address = [a for a, endpoint in client.calls if endpoint == "generate"][-1]
    return address.removeprefix("tcp://w").removesuffix(":1")


@pytest.mark.parametrize("stream", [False, True])
async def test_headers_name_the_chosen_worker_and_the_choice_time(routed, stream: bool) -> None:  # type: ignore[no-untyped-def]
    http, client = routed
    seen = set()
    for _ in range(2):  # round-robin: both workers in turn
        body = {"model": "alpha", "prompt": "hello there", "max_tokens": 1, "stream": stream}
        async with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            payload = await r.aread()
        assert r.headers[WORKER_ID_HEADER] == _last_worker(client)
        assert 0 < float(r.headers[ROUTE_US_HEADER]) < 1e6
        assert r.headers[CACHED_BLOCKS_HEADER] == "0"
        assert PREFILL_WORKER_ID_HEADER not in r.headers
        if stream:
            assert payload.rstrip().endswith(b"data: [DONE]")
        else:
            assert json.loads(payload)["choices"][0]["finish_reason"] == "length"
        seen.add(r.headers[WORKER_ID_HEADER])
    assert seen == {"a1", "b2"}


async def test_errors_before_routing_carry_no_worker_header(routed) -> None:  # type: ignore[no-untyped-def]
    http, _ = routed
    r = await http.post("/v1/completions", json={"model": "alpha", "prompt": "", "max_tokens": 1})
    assert r.status_code == 400
    assert WORKER_ID_HEADER not in r.headers


def test_note_keeps_prefill_and_decode_choices_apart_and_sums_their_time() -> None:
    note = RouteNote()
    assert note.headers() == {}  # nothing routed (a worker's own HTTP API): no headers
    note.record("prefill", 0x10, 40.0, 3)
    note.record("backend", 0x20, 60.5, 7)
    assert note.headers() == {
        WORKER_ID_HEADER: "20",
        PREFILL_WORKER_ID_HEADER: "10",
        ROUTE_US_HEADER: "100.5",
        CACHED_BLOCKS_HEADER: "7",
    }
