"""1 prefill + 1 decode worker behind a frontend, over real etcd and NATS: disaggregated
greedy output equals aggregated output, the decode worker imports rather than computes
the prompt, and the discovery keys / NATS connections are where operators expect them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mixroute.runtime.infra import free_port
from tests.integration.frontend.procs import (
    Proc,
    decisions,
    http_get,
    http_post,
    metric,
    models_listed,
    start,
    wait_until,
)

pytestmark = pytest.mark.timeout(400)

MODEL = "tiny"
NS = "dtest"
PROMPTS = [
    "What is the capital of France? Paris is the capital of France. Tell me more about it.",
    "Explain neural networks in simple terms: layers of weighted sums and nonlinearities.",
]


@dataclass
class Stack:
    url: str
    decode_http: str
    frontend: Proc
    procs: list[Proc]
    etcd: Any
    nats: Any


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, etcd_server: Any, nats_server: Any) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    runtime = ["--discovery", etcd_server.url, "--events", nats_server.url, "--namespace", NS]
    worker = ["worker", "--model", str(tiny_model_dir), "--served-model-name", MODEL, "--num-blocks", "256", *runtime]
    port, decode_port = free_port(), free_port()
    procs = [
        start("prefill", [*worker, "--is-prefill-worker"], logs),
        start("decode", [*worker, "--worker-type", "decode", "--http-port", str(decode_port)], logs),
        start("frontend", ["frontend", "--http-port", str(port), "--disagg-min-prompt-tokens", "16", *runtime], logs),
    ]
    try:
        s = Stack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{decode_port}", procs[2], procs, etcd_server, nats_server)
        wait_until(models_listed(s.url, MODEL), "the frontend lists the model", procs)
        wait_until(lambda: "component=prefill" in s.frontend.log(), "the frontend sees the prefill worker", procs)
        yield s
    finally:
        for p in procs:
            p.stop()


def _chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0, **extra}


def test_disaggregated_output_equals_aggregated_and_prompt_is_imported(stack: Stack) -> None:
    before = http_get(f"{stack.decode_http}/metrics")[1]
    computed0 = metric(before, "mixroute_worker_computed_prompt_tokens_total")
    imported0 = metric(before, "mixroute_worker_imported_prompt_tokens_total")
    disagg = []
    prompt_tokens = 0
    for text in PROMPTS:
        status, body = http_post(f"{stack.url}/v1/chat/completions", _chat(text))
        assert status == 200, body
        disagg.append(body["choices"][0]["message"]["content"])  # type: ignore[index]
        prompt_tokens += body["usage"]["prompt_tokens"]  # type: ignore[index]
        assert decisions(stack.frontend, "prefill").get(str(body["id"])) is not None  # went through prefill
    after = http_get(f"{stack.decode_http}/metrics")[1]
    assert metric(after, "mixroute_worker_imported_prompt_tokens_total") - imported0 == prompt_tokens
    assert metric(after, "mixroute_worker_computed_prompt_tokens_total") == computed0
    # Aggregated reference: the decode worker's own API, salted so its prefix cache (now
    # holding the imported blocks) is not used and it computes the prompt itself.
    for text, expected in zip(PROMPTS, disagg):
        status, body = http_post(f"{stack.decode_http}/v1/chat/completions", _chat(text, cache_salt="aggregated"))
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == expected  # type: ignore[index]
    final = http_get(f"{stack.decode_http}/metrics")[1]
    assert metric(final, "mixroute_worker_computed_prompt_tokens_total") > computed0


def test_short_prompts_run_aggregated(stack: Stack) -> None:
    status, body = http_post(f"{stack.url}/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert status == 200, body
    assert str(body["id"]) in decisions(stack.frontend, "backend")
    assert str(body["id"]) not in decisions(stack.frontend, "prefill")


def test_etcd_keys_and_nats_connections(stack: Stack) -> None:
    from mixroute.runtime.discovery import open_discovery

    async def keys() -> list[str]:
        d = await open_discovery(stack.etcd.url)
        try:
            return list(await d.get_prefix("v1/"))
        finally:
            await d.close()

    found = asyncio.run(keys())
    assert any(re.fullmatch(rf"v1/instances/{NS}/prefill/generate/[0-9a-f]+", k) for k in found), found
    assert any(re.fullmatch(rf"v1/instances/{NS}/backend/generate/[0-9a-f]+", k) for k in found), found
    assert any(k.startswith(f"v1/kv_routers/{NS}/") for k in found), found
    names = [c.get("name", "") for c in stack.nats.connz()["connections"]]  # type: ignore[union-attr]
    assert any(n.startswith("mixroute-frontend-") for n in names), names
    assert any(n.startswith("mixroute-worker-prefill-") for n in names), names
    assert any(n.startswith("mixroute-worker-decode-") for n in names), names


def test_client_disconnect_aborts_on_the_worker(stack: Stack) -> None:
    import httpx

    before = metric(http_get(f"{stack.decode_http}/metrics")[1], "mixroute_worker_cancelled_requests_total")
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{stack.url}/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk seen: hang up mid-generation
    wait_until(
        lambda: metric(http_get(f"{stack.decode_http}/metrics")[1], "mixroute_worker_cancelled_requests_total") > before,
        "the worker to abort the abandoned request",
        stack.procs,
        timeout_s=30,
    )
