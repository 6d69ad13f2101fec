"""A frontend told to stop (SIGTERM) while streams are running: a stream that ends within
the drain period ends normally, one still running after it ends with an OpenAI-shaped
error chunk and `[DONE]` instead of a cut connection, and the process exits cleanly
(real frontend and mocker worker processes, file discovery, ZeroMQ events)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from mixroute.runtime.infra import free_port
from tests.integration.frontend.procs import models_listed, start, wait_until

pytestmark = pytest.mark.timeout(300)

MODEL = "tiny-mock"
DRAIN_S = 3.0


def _stream(url: str, max_tokens: int, out: dict[str, object]) -> None:
    body = {"model": MODEL, "prompt": "one two three", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    chunks: list[dict[str, object]] = []
    with httpx.Client(timeout=60, trust_env=False) as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
        out["status"] = r.status_code
        for line in r.iter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                chunks.append(json.loads(line[len("data: ") :]))
                out["num_chunks"] = len(chunks)
    out["chunks"] = chunks


def test_a_stopping_frontend_drains_then_ends_streams_with_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    runtime = ["--discovery", f"file://{tmp_path / 'run'}", "--events", "zmq", "--namespace", "drain"]
    # speedup 0.05: a decode step takes ~100 ms.
    worker = start(
        "worker",
        ["worker", "--engine", "mocker", "--model", str(tiny_model_dir), "--served-model-name", MODEL,
         "--speedup-ratio", "0.05", *runtime],
        tmp_path,
    )  # fmt: skip
    port = free_port()
    frontend = start("frontend", ["frontend", "--http-port", str(port), "--drain-timeout-s", str(DRAIN_S), *runtime], tmp_path)
    procs = [worker, frontend]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(models_listed(url, MODEL), "the frontend lists the model", procs)
        short: dict[str, object] = {}
        long: dict[str, object] = {}
        threads = [
            threading.Thread(target=_stream, args=(url, 15, short)),  # ~1.5 s: ends within the drain
            threading.Thread(target=_stream, args=(url, 1000, long)),  # ~100 s: cut by the drain's end
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: int(short.get("num_chunks", 0)) >= 2 and int(long.get("num_chunks", 0)) >= 2, "both streams under way", procs)
        stopped_at = time.monotonic()
        frontend.popen.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert frontend.popen.wait(30) == 0
        took = time.monotonic() - stopped_at
    finally:
        for p in procs:
            p.stop()
    assert DRAIN_S - 0.5 < took < DRAIN_S + 10, took
    for result in (short, long):
        assert result["status"] == 200 and result.get("done"), result
    short_chunks = short["chunks"]
    assert isinstance(short_chunks, list)
    assert not any("error" in c for c in short_chunks)
    assert [c["choices"][0]["finish_reason"] for c in short_chunks if c.get("choices")][-1] == "length"
    long_chunks = long["chunks"]
    assert isinstance(long_chunks, list)
    error = long_chunks[-1]["error"]
    assert error["code"] == "shutting_down" and error["type"] == "service_unavailable", error
    assert len(long_chunks) > 10  # it streamed during the drain
    assert "drain over; requests still running ended with 503 requests=1" in frontend.log()
