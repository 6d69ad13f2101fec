"""Admission limits (413, 429) and per-request timeouts of the OpenAI API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from mixroute.errors import UnavailableError
from mixroute.frontend.admission import ApiLimits
from mixroute.frontend.app import create_app
from mixroute.frontend.backend import ModelEntry
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.preprocess import ModelTokenizer, PreparedPrompt
from mixroute.protocol.messages import GenerateFrame, GenerateRequest

from .test_app import CHAT, ScriptedBackend


def _client(backend: object, limits: ApiLimits, metrics: ApiMetrics | None = None) -> httpx.AsyncClient:
    app = create_app(backend, metrics or ApiMetrics(), limits=limits)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


@pytest.fixture
def backend(tokenizer: ModelTokenizer) -> ScriptedBackend:
    return ScriptedBackend(ModelEntry("tiny", tokenizer, 16, 128), "Paris is the capital of France.")


async def test_a_body_over_the_limit_is_413(backend: ScriptedBackend) -> None:
    async with _client(backend, ApiLimits(max_request_bytes=1024)) as client:
        big = dict(CHAT, messages=[{"role": "user", "content": "x" * 2000}])
        r = await client.post("/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "invalid_request_error" and "1024 bytes" in r.json()["error"]["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: checked while reading
            body = json.dumps(big).encode()
            for i in range(0, len(body), 256):
                yield body[i : i + 256]

        r = await client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert backend.requests and len(backend.requests) == 1


async def test_requests_over_the_inflight_limit_are_429_until_one_finishes(backend: ScriptedBackend) -> None:
    backend.delay_s = 0.05
    metrics = ApiMetrics()
    async with _client(backend, ApiLimits(max_inflight_requests=1), metrics) as client:
        first = asyncio.ensure_future(client.post("/v1/chat/completions", json=dict(CHAT, stream=True)))
        for _ in range(500):
            if backend.requests:
                break
            await asyncio.sleep(0.01)
        assert metrics.registry.get_sample_value("mixroute_frontend_requests_in_flight") == 1
        r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "q"})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        done = await asyncio.wait_for(first, 20)
        assert done.status_code == 200 and done.text.rstrip().endswith("data: [DONE]")
        # The slot is free again once the (streamed) answer has ended.
        assert metrics.registry.get_sample_value("mixroute_frontend_requests_in_flight") == 0
        assert (await client.post("/v1/completions", json={"model": "tiny", "prompt": "q", "max_tokens": 2})).status_code == 200
        assert (await client.get("/health")).status_code == 200  # not a generation route: never limited
    assert metrics.registry.get_sample_value("mixroute_frontend_requests_rejected_total", {"status": "429"}) == 1


class StuckBackend(ScriptedBackend):
    """Sends `num_tokens` tokens `delay_s` apart, then goes silent forever."""

    def __init__(self, entry: ModelEntry, num_tokens: int, delay_s: float = 0.0) -> None:
        super().__init__(entry, "Paris is the capital of France.", delay_s)
        self.num_tokens = num_tokens

    async def generate(self, model: ModelEntry, request: GenerateRequest, prompt: PreparedPrompt) -> AsyncIterator[GenerateFrame]:
        self.requests.append(request)
        try:
            for token in self.reply_ids[: self.num_tokens]:
                await asyncio.sleep(self.delay_s)
                yield GenerateFrame(token_ids=[token])
            await asyncio.Event().wait()
        finally:
            self.closed.append(request.request_id)


async def test_a_silent_worker_ends_the_request_with_503_and_cancels_it(tokenizer: ModelTokenizer) -> None:
    backend = StuckBackend(ModelEntry("tiny", tokenizer, 16, 128), num_tokens=0)
    async with _client(backend, ApiLimits(request_idle_timeout_s=0.3)) as client:
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=CHAT), 20)
    assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
    assert backend.closed == [backend.requests[0].request_id]


async def test_a_stream_that_stalls_midway_ends_with_an_error_chunk(tokenizer: ModelTokenizer) -> None:
    backend = StuckBackend(ModelEntry("tiny", tokenizer, 16, 128), num_tokens=2)
    async with (
        _client(backend, ApiLimits(request_idle_timeout_s=0.3)) as client,
        client.stream("POST", "/v1/chat/completions", json=dict(CHAT, stream=True)) as r,
    ):
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"timeout"' in lines[-2]
    assert backend.closed == [backend.requests[0].request_id]


async def test_the_total_timeout_ends_a_request_that_keeps_streaming(tokenizer: ModelTokenizer) -> None:
    backend = StuckBackend(ModelEntry("tiny", tokenizer, 16, 128), num_tokens=1000, delay_s=0.05)
    backend.reply_ids = backend.reply_ids * 200
    async with _client(backend, ApiLimits(request_idle_timeout_s=5, request_timeout_s=0.5)) as client:
        r = await asyncio.wait_for(client.post("/v1/completions", json={"model": "tiny", "prompt": "q", "max_tokens": 100}), 20)
    assert r.status_code == 503 and "total timeout" in r.json()["error"]["message"]


async def test_ending_the_requests_in_flight_answers_503_and_cancels_them(tokenizer: ModelTokenizer) -> None:
    """What a stopping frontend does when its drain period is over (no timeouts set, so the
    untimed wait is the one interrupted)."""
    backend = StuckBackend(ModelEntry("tiny", tokenizer, 16, 128), num_tokens=2)
    app = create_app(backend, ApiMetrics(), limits=ApiLimits(request_idle_timeout_s=0))  # type: ignore[arg-type]
    inflight = app.state.inflight
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as client:

        async def stream() -> list[str]:
            async with client.stream("POST", "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
                assert r.status_code == 200
                return [line async for line in r.aiter_lines() if line.startswith("data: ")]

        streamed = asyncio.ensure_future(stream())
        whole = asyncio.ensure_future(client.post("/v1/completions", json={"model": "tiny", "prompt": "q", "max_tokens": 5}))
        for _ in range(500):
            if len(inflight) == 2 and len(backend.requests) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # both past their two tokens, waiting on a silent worker
        assert not streamed.done() and not whole.done()
        assert inflight.end_all() == 2
        lines = await asyncio.wait_for(streamed, 10)
        r = await asyncio.wait_for(whole, 10)
        late = await client.post("/v1/completions", json={"model": "tiny", "prompt": "q", "max_tokens": 5})
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["error"]["code"] == "shutting_down"
    assert len(lines) > 3  # the tokens sent before the end reached the client
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    assert sorted(backend.closed) == sorted(q.request_id for q in backend.requests)
    assert len(inflight) == 0


async def test_a_timeout_firing_right_after_the_drain_ends_a_request_keeps_the_shutdown_reason() -> None:
    """The idle timer and the drain's end in the same loop turn: one cancel, reported as the
    shutdown (a second cancel would surface as a bare cancellation, not a 503)."""
    from mixroute.frontend.completion import InflightRequests, _FrameWaits

    async def silent() -> AsyncIterator[GenerateFrame]:
        await asyncio.Event().wait()
        yield GenerateFrame(token_ids=[1])  # never reached

    inflight = InflightRequests()
    waits = _FrameWaits(silent(), ApiLimits(request_idle_timeout_s=0.001), "r1", inflight)
    waiting = asyncio.ensure_future(waits.next())
    await asyncio.sleep(0)  # the wait has begun
    inflight.end_all()
    waits._wait_started -= 1.0  # the idle timeout is past too
    waits._check()
    with pytest.raises(UnavailableError) as caught:
        await waiting
    assert caught.value.code == "shutting_down"
    waits.close()
