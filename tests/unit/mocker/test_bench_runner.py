"""bench/runner.py and bench/report.py against a fake OpenAI stream (httpx.MockTransport)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import report
import runner
import workloads as w


def _sse(chunks: list[dict]) -> bytes:  # type: ignore[type-arg]
    return (
        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )


def _handler(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if body["max_tokens"] > 100:
        return httpx.Response(429, json={"error": {"message": "overloaded", "type": "overloaded"}})
    n = body["max_tokens"]
    chunks = [{"id": "cmpl-1", "choices": [{"index": 0, "text": f" t{i}"}]} for i in range(n)]
    usage = {
        "prompt_tokens": 64,
        "completion_tokens": n,
        "prompt_tokens_details": {"cached_tokens": 48},
    }
    chunks.append({"id": "cmpl-1", "choices": [], "usage": usage})
    return httpx.Response(
        200,
        content=_sse(chunks),
        headers={"x-mixroute-worker-id": "ab12", "x-mixroute-route-us": "35"},
    )


def _client() -> runner.Client:
    client = runner.Client("http://fake", "bench")
    client.http = httpx.AsyncClient(transport=httpx.MockTransport(_handler))
    return client


async def test_records_ttft_usage_worker_and_errors(tmp_path: Path) -> None:
    wl = w.shared_prefix(
        num_requests=6,
        num_groups=2,
        prefix_ratio=0.75,
        isl=w.LengthDist("fixed", 64),
        osl=w.LengthDist("fixed", 5),
    )
    wl.sessions[0].requests[0].max_tokens = 500  # the fake server answers 429
    client = _client()
    result = await runner.run_workload(client, wl, w.Arrival("closed", 3), "fake")
    await client.close()
    ok = [r for r in result.records if r.ok]
    bad = [r for r in result.records if not r.ok]
    assert len(ok) == 5 and len(bad) == 1 and bad[0].status == 429 and "overloaded" in bad[0].error
    for r in ok:
        assert r.ttft_s is not None and r.e2e_s is not None and r.e2e_s >= r.ttft_s
        assert r.completion_tokens == 5 and len(r.itl_s) == 4
        assert (
            r.cached_tokens == 48
            and r.worker_id == "ab12"
            and r.route_us == 35.0
            and r.response_id == "cmpl-1"
        )
    s = runner.summarize(result)
    assert s["num_ok"] == 5 and s["num_errors"] == 1
    assert (
        s["cache_hit_ratio"] == 48 / 64 and s["num_workers_seen"] == 1 and s["route_us_p50"] == 35.0
    )

    path = tmp_path / "run.jsonl"
    result.save(path)
    loaded = runner.RunResult.load(path)
    assert loaded.label == "fake" and [r.request_id for r in loaded.records] == [
        r.request_id for r in result.records
    ]
    table = report.markdown_table([loaded])
    assert "| fake | 3 | 5/6 |" in table and "75.0%" in table
    png = report.plot_ttft_cdf([loaded], tmp_path / "cdf.png")
    assert png.stat().st_size > 1000


def test_percentile_interpolates() -> None:
    assert runner.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert runner.percentile([5.0], 99) == 5.0
    assert math.isnan(runner.percentile([], 50))
