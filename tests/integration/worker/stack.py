"""A real 1 prefill + 1 decode + frontend stack (file discovery, ZeroMQ events) for the
KV-transfer tests; the same helper runs on CPU (shared memory) and on GPUs (CUDA IPC)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mixroute.runtime.infra import free_port
from tests.integration.frontend.procs import (
    Proc,
    http_get,
    http_post,
    metric,
    models_listed,
    start,
    wait_until,
)

MODEL = "tiny"
PROMPTS = [
    "What is the capital of France? Paris is the capital of France. Tell me more about it.",
    "Explain neural networks in simple terms: layers of weighted sums and nonlinearities.",
    "List three prime numbers greater than one hundred and say why each of them is prime.",
]


@dataclass
class DisaggStack:
    url: str
    decode_http: str
    procs: list[Proc]

    def decode_metric(self, name: str) -> float:
        status, text = http_get(f"{self.decode_http}/metrics")
        assert status == 200, text
        try:
            return metric(text, name)
        except AssertionError:
            return 0.0  # a labelled counter not yet incremented


@contextmanager
def disagg_stack(
    model_dir: Path, logs: Path, *, prefill_args: list[str] = (), decode_args: list[str] = (),  # type: ignore[assignment]
    common_args: list[str] = (),  # type: ignore[assignment]
) -> Iterator[DisaggStack]:
    runtime = ["--discovery", f"file://{logs / 'discovery'}", "--namespace", f"kv{uuid.uuid4().hex[:8]}"]
    worker = ["worker", "--model", str(model_dir), "--served-model-name", MODEL, *common_args, *runtime]
    port, decode_port = free_port(), free_port()
    procs = [
        start("prefill", [*worker, "--is-prefill-worker", *prefill_args], logs),
        start("decode", [*worker, "--worker-type", "decode", "--http-port", str(decode_port), *decode_args], logs),
        start("frontend", ["frontend", "--http-port", str(port), "--disagg-min-prompt-tokens", "16", *runtime], logs),
    ]
    try:
        stack = DisaggStack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{decode_port}", procs)
        wait_until(models_listed(stack.url, MODEL), "the frontend lists the model", procs)
        wait_until(lambda: "component=prefill" in procs[2].log(), "the frontend sees the prefill worker", procs)
        yield stack
    finally:
        for p in procs:
            p.stop()


def chat(content: str, max_tokens: int = 8, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def run_disaggregated(stack: DisaggStack, prompts: list[str]) -> tuple[list[str], int]:
    """Completions through the frontend (disaggregated) and their prompt tokens in total."""
    out, prompt_tokens = [], 0
    for text in prompts:
        status, body = http_post(f"{stack.url}/v1/chat/completions", chat(text))
        assert status == 200, body
        out.append(body["choices"][0]["message"]["content"])  # type: ignore[index]
        prompt_tokens += body["usage"]["prompt_tokens"]  # type: ignore[index]
    return out, prompt_tokens


def run_aggregated(stack: DisaggStack, prompts: list[str]) -> list[str]:
    """The decode worker alone, salted so its prefix cache (holding the imported blocks) is
    not used: it computes the prompt itself."""
    out = []
    for text in prompts:
        status, body = http_post(f"{stack.decode_http}/v1/chat/completions", chat(text, cache_salt="aggregated"))
        assert status == 200, body
        out.append(body["choices"][0]["message"]["content"])  # type: ignore[index]
    return out
