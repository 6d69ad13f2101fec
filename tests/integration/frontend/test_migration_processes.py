"""A worker killed (SIGKILL) in the middle of a streamed completion: the frontend moves the
request to the other worker and the client's stream completes with every token (real
frontend and mocker worker processes, file discovery, ZeroMQ events)."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest

from mixroute.runtime.infra import free_port
from tests.integration.frontend.procs import (
    Proc,
    http_get,
    metric,
    models_listed,
    start,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

MODEL = "tiny-mock"
MAX_TOKENS = 40


def _worker_id(proc: Proc) -> str:
    m = re.search(r"worker ready worker_id=([0-9a-f]+)", proc.log())
    assert m is not None, proc.log()[-2000:]
    return m.group(1)


def test_stream_survives_its_worker_being_killed(tiny_model_dir: Path, tmp_path: Path) -> None:
    runtime = ["--discovery", f"file://{tmp_path / 'run'}", "--events", "zmq", "--namespace", "migrate"]
    # speedup 0.05: a decode step takes ~100 ms, so the stream is long enough to kill mid-way.
    worker = ["worker", "--engine", "mocker", "--model", str(tiny_model_dir), "--served-model-name", MODEL,
              "--speedup-ratio", "0.05", *runtime]
    port = free_port()
    workers = [start("worker-a", worker, tmp_path), start("worker-b", worker, tmp_path)]
    frontend = start("frontend", ["frontend", "--http-port", str(port), "--router-mode", "round-robin", *runtime], tmp_path)
    procs = [*workers, frontend]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(models_listed(url, MODEL), "the frontend lists the model", procs)
        wait_until(lambda: frontend.log().count("worker added") >= 2, "the frontend sees both workers", procs)
        wait_until(lambda: all("worker ready" in w.log() for w in workers), "both workers ready", procs)
        by_id = {_worker_id(w): w for w in workers}

        body = {"model": MODEL, "prompt": "one two three four five", "max_tokens": MAX_TOKENS, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        texts: list[str] = []
        finish: list[str] = []
        usage: dict[str, int] = {}
        killed: Proc | None = None
        with httpx.Client(timeout=60, trust_env=False) as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
            assert r.status_code == 200
            serving = by_id[r.headers["x-mixroute-worker-id"]]
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                assert "error" not in chunk, chunk
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        texts.append(choice["text"])
                    if choice.get("finish_reason"):
                        finish.append(choice["finish_reason"])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if killed is None and len(texts) >= 5:
                    serving.popen.send_signal(signal.SIGKILL)
                    serving.popen.wait(10)
                    killed = serving
        assert killed is not None, "the stream ended before a worker could be killed"
        assert finish == ["length"]
        assert usage["completion_tokens"] == MAX_TOKENS
        assert usage["prompt_tokens"] < MAX_TOKENS  # the original prompt, not prompt + moved tokens
        survivor = next(w for w in workers if w is not killed)
        assert survivor.popen.poll() is None
        moved = re.search(r"worker gone mid-stream; migrating .*generated=(\d+)", frontend.log())
        assert moved is not None, frontend.log()[-3000:]
        assert 5 <= int(moved.group(1)) < MAX_TOKENS  # the survivor generated the rest
        status, text = http_get(f"{url}/metrics")
        assert status == 200
        assert metric(text.replace(f'{{model="{MODEL}"}}', ""), "mixroute_frontend_request_migrations_total") == 1
        # The next request is served by the survivor (the dead worker's lease/key is gone or skipped).
        with httpx.Client(timeout=60, trust_env=False) as client:
            r2 = client.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 3})
        assert r2.status_code == 200, r2.text
        assert r2.json()["usage"]["completion_tokens"] == 3
    finally:
        for p in procs:
            p.stop()
