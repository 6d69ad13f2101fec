"""Worker and request-plane failures reach HTTP clients as typed OpenAI errors with
generic messages: no peer addresses, exception types or engine text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from mixroute.errors import PeerGoneError, RemoteHandlerError
from mixroute.frontend.app import create_app
from mixroute.frontend.backend import ModelEntry
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.preprocess import ModelTokenizer, PreparedPrompt
from mixroute.protocol.messages import (
    ERROR_BAD_REQUEST,
    ERROR_CONTEXT_LENGTH,
    ERROR_INTERNAL,
    ERROR_OVERLOADED,
    GenerateFrame,
    GenerateRequest,
)

SECRET = "tcp://10.9.8.7:9100: EngineError: CUDA error: device-side assert at 0x7fdead"


class FailingBackend:
    def __init__(self, entry: ModelEntry) -> None:
        self.entry = entry
        self.failure: BaseException | None = None
        self.frame: GenerateFrame | None = None
        self.after_tokens = False

    def model_entries(self) -> list[ModelEntry]:
        return [self.entry]

    def model(self, name: str) -> ModelEntry:
        return self.entry

    def is_ready(self) -> bool:
        return True

    async def generate(self, model: ModelEntry, request: GenerateRequest, prompt: PreparedPrompt) -> AsyncIterator[GenerateFrame]:
        if self.after_tokens:
            yield GenerateFrame(token_ids=[5])
        if self.failure is not None:
            raise self.failure
        assert self.frame is not None
        yield self.frame


@pytest.fixture
def backend(tokenizer: ModelTokenizer) -> FailingBackend:
    return FailingBackend(ModelEntry("tiny", tokenizer, 16, 128))


@pytest.fixture
async def client(backend: FailingBackend) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(backend, ApiMetrics())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


BODY = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


def _assert_clean(message: str) -> None:
    for leak in ("10.9.8.7", "tcp://", "EngineError", "CUDA", "0x7fdead", "Traceback"):
        assert leak not in message


@pytest.mark.parametrize(
    ("failure", "frame", "status"),
    [
        (RemoteHandlerError(SECRET), None, 503),
        (PeerGoneError(SECRET), None, 503),
        (RuntimeError(SECRET), None, 500),
        (None, GenerateFrame(finish_reason="error", error=SECRET, error_code=ERROR_INTERNAL), 503),
        (None, GenerateFrame(finish_reason="error", error=SECRET), 503),
        (None, GenerateFrame(finish_reason="error", error=SECRET, error_code="some-future-code"), 503),
        (None, GenerateFrame(finish_reason="error", error=SECRET, error_code=ERROR_OVERLOADED), 429),
        (None, GenerateFrame(finish_reason="abort", usage=None), 503),
    ],
)
async def test_worker_failures_are_typed_and_generic(
    client: httpx.AsyncClient, backend: FailingBackend, failure: BaseException | None, frame: GenerateFrame | None, status: int
) -> None:
    backend.failure, backend.frame = failure, frame
    r = await client.post("/v1/completions", json=BODY)
    assert r.status_code == status, r.text
    _assert_clean(r.json()["error"]["message"])


async def test_client_error_codes_keep_their_message(client: httpx.AsyncClient, backend: FailingBackend) -> None:
    backend.frame = GenerateFrame(finish_reason="error", error="prompt + max_tokens exceed 64 tokens", error_code=ERROR_CONTEXT_LENGTH)
    r = await client.post("/v1/completions", json=BODY)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "exceed 64" in r.json()["error"]["message"]
    backend.frame = GenerateFrame(finish_reason="error", error="the context is fine but X is bad", error_code=ERROR_BAD_REQUEST)
    r = await client.post("/v1/completions", json=BODY)
    assert r.status_code == 400 and "X is bad" in r.json()["error"]["message"]


async def test_internal_message_mentioning_context_is_not_a_client_error(client: httpx.AsyncClient, backend: FailingBackend) -> None:
    # Classification is by code, never by searching the text.
    backend.frame = GenerateFrame(finish_reason="error", error="CUDA context lost; too long a kernel", error_code=ERROR_INTERNAL)
    r = await client.post("/v1/completions", json=BODY)
    assert r.status_code == 503


@pytest.mark.parametrize("failure", [RemoteHandlerError(SECRET), RuntimeError(SECRET)])
async def test_mid_stream_failures_end_sse_with_an_error_chunk_and_done(
    client: httpx.AsyncClient, backend: FailingBackend, failure: BaseException
) -> None:
    backend.failure, backend.after_tokens = failure, True
    async with client.stream("POST", "/v1/completions", json=dict(BODY, stream=True)) as r:
        assert r.status_code == 200
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2]
    _assert_clean(lines[-2])
