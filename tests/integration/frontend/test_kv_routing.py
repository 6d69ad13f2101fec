"""2 aggregated workers behind a KV-routing frontend and a round-robin frontend (file
discovery, ZeroMQ events, real processes, tiny random model)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mixroute.runtime.infra import free_port
from tests.integration.frontend.procs import (
    Proc,
    decisions,
    http_get,
    http_post,
    kv_event_batches,
    models_listed,
    start,
    wait_until,
)

pytestmark = pytest.mark.timeout(400)

MODEL = "tiny"
MOCK_MODEL = "tiny-mock"


@dataclass
class Stack:
    kv_url: str
    rr_url: str
    kv: Proc
    rr: Proc
    workers: list[Proc]


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("run")
    logs = tmp_path_factory.mktemp("logs")
    runtime = ["--discovery", f"file://{run_dir}", "--events", "zmq", "--namespace", "itest"]
    worker_args = ["worker", "--model", str(tiny_model_dir), "--served-model-name", MODEL, "--num-blocks", "256", *runtime]
    kv_port, rr_port = free_port(), free_port()
    procs = [
        start("worker-a", worker_args, logs),
        start("worker-b", worker_args, logs),
        start("frontend-kv", ["frontend", "--http-port", str(kv_port), "--router-mode", "kv", *runtime], logs),
        start("frontend-rr", ["frontend", "--http-port", str(rr_port), "--router-mode", "round-robin", *runtime], logs),
        # A second model, served by a simulated engine: the frontends serve both at once.
        start("worker-mock", ["worker", "--engine", "mocker", "--model", str(tiny_model_dir), "--served-model-name", MOCK_MODEL, "--speedup-ratio", "100", *runtime], logs),
    ]
    try:
        s = Stack(f"http://127.0.0.1:{kv_port}", f"http://127.0.0.1:{rr_port}", procs[2], procs[3], procs[:2])
        for url, fe in ((s.kv_url, s.kv), (s.rr_url, s.rr)):
            wait_until(models_listed(url, MODEL), f"{fe.name} lists the model", procs)
            wait_until(lambda fe=fe: fe.log().count("worker added") >= 3, f"{fe.name} sees all workers", procs)
        yield s
    finally:
        for p in procs:
            p.stop()


def _chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **extra}


def test_openai_client_streaming_and_not(stack: Stack) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{stack.kv_url}/v1", api_key="unused")
    assert sorted(m.id for m in client.models.list().data) == [MODEL, MOCK_MODEL]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # greedy: same answer streamed or not
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    done = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=3, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens == 3


def test_same_request_goes_to_the_worker_that_cached_it(stack: Stack) -> None:
    body = _chat("What is the capital of France? Explain neural networks in simple terms, step by step.")
    batches = kv_event_batches(stack.kv_url)
    status, first = http_post(f"{stack.kv_url}/v1/chat/completions", body)
    assert status == 200, first
    # The worker's KV events for the first request must reach the frontend first: wait
    # for them (a loaded CI box may take a while) instead of sleeping a fixed time.
    wait_until(lambda: kv_event_batches(stack.kv_url) > batches, "KV events reach the frontend", [stack.kv], timeout_s=30)
    status, second = http_post(f"{stack.kv_url}/v1/chat/completions", body)
    assert status == 200, second
    routed = decisions(stack.kv)
    w1, cached1 = routed[str(first["id"])]
    w2, cached2 = routed[str(second["id"])]
    assert w1 == w2
    assert (cached1, cached2 > 0) == (0, True)
    usage = second["usage"]
    assert isinstance(usage, dict) and usage["prompt_tokens_details"]["cached_tokens"] > 0
    assert "cached blocks: 0" in stack.kv.log()


def test_round_robin_alternates(stack: Stack) -> None:
    ids = []
    for i in range(4):
        status, body = http_post(f"{stack.rr_url}/v1/chat/completions", _chat(f"round robin {i}"))
        assert status == 200, body
        ids.append(str(body["id"]))
    routed = decisions(stack.rr)
    workers = [routed[i][0] for i in ids]
    assert len(set(workers)) == 2
    assert all(a != b for a, b in itertools.pairwise(workers))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{oops", 400),
        ({"model": MODEL}, 400),
        (_chat("x", max_tokens=-3), 400),
        (_chat("x", model="no-such-model"), 404),
        (_chat("word " * 2100), 400),
    ],
)
def test_bad_requests_are_openai_4xx(stack: Stack, body: bytes | dict[str, object], status: int) -> None:
    got, answer = http_post(f"{stack.kv_url}/v1/chat/completions", body)
    assert got == status, answer
    error = answer["error"]
    assert isinstance(error, dict) and error["message"] and error["type"]


def test_metrics_and_health(stack: Stack) -> None:
    status, text = http_get(f"{stack.kv_url}/metrics")
    assert status == 200
    assert "mixroute_frontend_time_to_first_token_seconds_count" in text
    assert "mixroute_frontend_worker_active_blocks" in text
    assert "mixroute_frontend_cached_tokens_total" in text
    assert http_get(f"{stack.kv_url}/health")[0] == 200


def test_requests_are_routed_by_model(stack: Stack) -> None:
    workers = {}
    for model in (MODEL, MOCK_MODEL):
        status, body = http_post(f"{stack.kv_url}/v1/chat/completions", dict(_chat("which model?"), model=model))
        assert status == 200, body
        assert body["model"] == model
        workers[model] = decisions(stack.kv)[str(body["id"])][0]
    mock_id = re.search(r"worker added model=tiny-mock component=backend worker_id=([0-9a-f]+)", stack.kv.log())
    assert mock_id is not None and workers[MOCK_MODEL] == mock_id.group(1)
    assert workers[MODEL] != workers[MOCK_MODEL]
