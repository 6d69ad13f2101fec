from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from mixroute.errors import NotFoundError
from mixroute.frontend.app import create_app
from mixroute.frontend.backend import ModelEntry
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.preprocess import ModelTokenizer, PreparedPrompt
from mixroute.protocol.messages import GenerateFrame, GenerateRequest, Usage


class ScriptedBackend:
    """Answers every request with the tokens of `reply`, one frame per token."""

    def __init__(self, entry: ModelEntry, reply: str, delay_s: float = 0.0) -> None:
        self.entry = entry
        self.reply_ids = entry.tokenizer.encode_sync(reply)
        self.delay_s = delay_s
        self.requests: list[GenerateRequest] = []
        self.closed: list[str] = []

    def model_entries(self) -> list[ModelEntry]:
        return [self.entry]

    def model(self, name: str) -> ModelEntry:
        if name != self.entry.name:
            raise NotFoundError(f"the model {name!r} does not exist", param="model")
        return self.entry

    def is_ready(self) -> bool:
        return True

    async def generate(self, model: ModelEntry, request: GenerateRequest, prompt: PreparedPrompt) -> AsyncIterator[GenerateFrame]:
        self.requests.append(request)
        ids = self.reply_ids[: request.sampling.max_tokens]
        try:
            for n, token in enumerate(ids, 1):
                await asyncio.sleep(self.delay_s)
                last = n == len(ids)
                yield GenerateFrame(
                    token_ids=[token],
                    finish_reason=("length" if len(ids) == request.sampling.max_tokens else "stop") if last else None,
                    usage=Usage(prompt_tokens=len(request.token_ids), completion_tokens=n, cached_tokens=16) if last else None,
                )
        finally:
            self.closed.append(request.request_id)


@pytest.fixture
def backend(tokenizer: ModelTokenizer) -> ScriptedBackend:
    return ScriptedBackend(ModelEntry("tiny", tokenizer, 16, 128), "Paris is the capital of France.")


@pytest.fixture
async def client(backend: ScriptedBackend) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(backend, ApiMetrics())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "capital of France?"}], "max_tokens": 50}


async def test_chat_completion_with_usage(client: httpx.AsyncClient, backend: ScriptedBackend) -> None:
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Paris is the capital of France."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 16
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert backend.requests[0].sampling.max_tokens == 50


async def test_chat_streaming_sse(client: httpx.AsyncClient) -> None:
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Paris is the capital of France."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_completions_stop_string_and_max_tokens(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "q", "stop": [" capital"], "max_tokens": 40})
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("Paris is the", "stop")
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 2})
    assert r.json()["choices"][0]["finish_reason"] == "length"
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "q", "echo": True})
    assert r.status_code == 400 and "echo" in r.json()["error"]["message"]
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x " * 300})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"model": "tiny"}).encode(), 400, "messages"),
        (json.dumps(dict(CHAT, max_tokens=-1)).encode(), 400, "max_tokens"),
        (json.dumps(dict(CHAT, model="nope")).encode(), 404, "nope"),
        (json.dumps(dict(CHAT, messages=[{"role": "user", "content": "x " * 300}])).encode(), 400, "context"),
        (json.dumps(dict(CHAT, max_tokens=120)).encode(), 400, "max_tokens"),
        (json.dumps(dict(CHAT, temperature=9)).encode(), 400, "temperature"),
        (b"[1, 2]", 400, "object"),
        (json.dumps(dict(CHAT, logprobs=True)).encode(), 400, "logprobs"),
        (json.dumps(dict(CHAT, n=3)).encode(), 400, "n"),
        # past what the wire to the workers carries (int64 / uint64): 400, not a 500
        (json.dumps(dict(CHAT, seed=2**64)).encode(), 400, "seed"),
        (json.dumps(dict(CHAT, seed=-(2**63) - 1)).encode(), 400, "seed"),
        (json.dumps(dict(CHAT, top_k=2**70)).encode(), 400, "top_k"),
        (json.dumps(dict(CHAT, min_tokens=2**70)).encode(), 400, "min_tokens"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi ' + b"\xff\xfe" + b' bad"}]}',
         400, "UTF-8"),
        # options this server cannot honour: a 400 rather than an answer that ignores them
        (json.dumps(dict(CHAT, response_format={"type": "json_object"})).encode(), 400, "response_format"),
        (json.dumps(dict(CHAT, presence_penalty=0.5)).encode(), 400, "presence_penalty"),
        (json.dumps(dict(CHAT, best_of=2)).encode(), 400, "best_of"),
        (json.dumps(dict(CHAT, logit_bias={"5": 10})).encode(), 400, "logit_bias"),
    ],
)
async def test_bad_requests_get_openai_errors(client: httpx.AsyncClient, body: bytes, status: int, needle: str) -> None:
    r = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] in ("invalid_request_error", "not_found_error")


async def test_a_prompt_far_past_the_context_is_refused_without_tokenizing(
    client: httpx.AsyncClient, tokenizer: ModelTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tokenizing(*args: object) -> None:
        raise AssertionError("tokenized a prompt that cannot fit")

    monkeypatch.setattr(tokenizer, "encode_batch_sync", no_tokenizing)
    huge = "x" * (tokenizer.max_token_chars * 5000)
    r = await client.post("/v1/chat/completions", json=dict(CHAT, messages=[{"role": "user", "content": huge}]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": huge})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


async def test_no_op_values_of_unsupported_options_are_accepted(client: httpx.AsyncClient) -> None:
    body = dict(CHAT, response_format={"type": "text"}, presence_penalty=0, frequency_penalty=0.0, best_of=1,
                logit_bias={}, max_tokens=2)
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


async def test_models_health_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models")).json()["data"][0]["id"] == "tiny"
    assert (await client.get("/health")).json()["status"] == "ok"
    await client.post("/v1/chat/completions", json=CHAT)
    text = (await client.get("/metrics")).text
    assert 'mixroute_frontend_cached_tokens_total{model="tiny"} 16.0' in text
    assert "mixroute_frontend_time_to_first_token_seconds_bucket" in text
    assert (await client.get("/nope")).status_code == 404


async def test_stream_consumer_leaving_closes_backend(client: httpx.AsyncClient, backend: ScriptedBackend) -> None:
    backend.delay_s = 0.05
    async with client.stream("POST", "/v1/chat/completions", json=dict(CHAT, stream=True)) as r:
        async for line in r.aiter_lines():
            if '"content":"Paris"' in line or "Paris" in line:
                break
    for _ in range(100):
        if backend.closed:
            break
        await asyncio.sleep(0.01)
    assert backend.closed == [backend.requests[0].request_id]


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ([-1], "token id -1 at position 0"),
        ([2**33], f"token id {2**33}"),
        ("VOCAB", "prompt[1] = "),
        ([1.5], "integers only"),
        ([True], "integers only"),
        ([[3, -2]], "token id -2 at position 1"),
        (["a", 1], "one prompt"),
    ],
)
async def test_bad_token_id_prompts_are_400(client: httpx.AsyncClient, backend: ScriptedBackend, prompt: object, needle: str) -> None:
    if prompt == "VOCAB":
        prompt = [1, backend.entry.tokenizer.vocab_size]
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "prompt" in err["message"] and needle in err["message"]
    assert backend.requests == []


async def test_bad_stop_token_ids_are_400(client: httpx.AsyncClient, backend: ScriptedBackend) -> None:
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [1], "stop_token_ids": [backend.entry.tokenizer.vocab_size]})
    assert r.status_code == 400 and "stop_token_ids" in r.json()["error"]["message"]
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [1], "stop_token_ids": [-3]})
    assert r.status_code == 400 and "stop_token_ids" in r.json()["error"]["message"]


async def test_token_ids_at_the_vocabulary_edge_are_accepted(client: httpx.AsyncClient, backend: ScriptedBackend) -> None:
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": [0, backend.entry.tokenizer.vocab_size - 1], "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert backend.requests[0].token_ids == [0, backend.entry.tokenizer.vocab_size - 1]
