"""Async load generator: sends a workload's requests as OpenAI streaming completions and
records per-request TTFT, inter-token latency, end-to-end latency, cached tokens and the
worker that served each request.

    python bench/runner.py --url http://127.0.0.1:8000 --model bench \
        --num-requests 256 --concurrency 32 --out /tmp/run.jsonl

The chosen worker comes from the `x-mixroute-worker-id` response header (our frontend);
routers that do not say leave it empty. Cached tokens come from the final usage chunk
(`usage.prompt_tokens_details.cached_tokens`), requested with
`stream_options.include_usage`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import (
    Arrival,
    BenchRequest,
    LengthDist,
    Workload,
    multi_turn,
    prompt_text,
    shared_prefix,
)

WORKER_HEADER = "x-mixroute-worker-id"
PEER_WORKER_HEADERS = ("x-smg-routed-worker-id",)
"""Headers other routers use to name the chosen worker."""
ROUTE_US_HEADER = "x-mixroute-route-us"
T = TypeVar("T")


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    group: int
    turn: int
    prompt_tokens: int
    max_tokens: int
    start_s: float = 0.0
    """Seconds since the run started."""
    start_unix: float = 0.0
    """Wall clock at send (to line records up with server logs)."""
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    """Gaps between consecutive content chunks."""
    completion_tokens: int = 0
    cached_tokens: int | None = None
    usage_prompt_tokens: int | None = None
    worker_id: str = ""
    response_id: str = ""
    """The server's completion id (lets a log line name the worker when no header does)."""
    route_us: float | None = None
    status: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.ttft_s is not None


@dataclass(slots=True)
class RunResult:
    label: str
    records: list[RequestRecord]
    duration_s: float
    concurrency: int
    meta: dict[str, object] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            head = {
                "label": self.label,
                "duration_s": self.duration_s,
                "concurrency": self.concurrency,
                "meta": self.meta,
            }
            f.write(json.dumps(head, default=str) + "\n")
            for r in self.records:
                f.write(json.dumps(asdict(r)) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        lines = Path(path).read_text().splitlines()
        head = json.loads(lines[0])
        records = [RequestRecord(**json.loads(line)) for line in lines[1:] if line.strip()]
        return cls(
            head["label"], records, head["duration_s"], head["concurrency"], head.get("meta", {})
        )


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop when installed: the client's own event loop costs less CPU,
    which on a small machine is CPU taken from the system under test."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


class Client:
    """Sends one request at a time per call; share one instance across tasks.

    `timeout_s` bounds each whole request (one timer per request); httpx's own per-read
    timeout is off, because it arms a timer around every chunk of every stream."""

    def __init__(
        self, url: str, model: str, *, prompt_format: str = "text", timeout_s: float = 300.0
    ) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.model = model
        self.prompt_format = prompt_format
        self.timeout_s = timeout_s
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
        timeout = httpx.Timeout(connect=10.0, read=None, write=30.0, pool=None)
        self.http = httpx.AsyncClient(timeout=timeout, limits=limits)

    async def close(self) -> None:
        await self.http.aclose()

    async def warm_up(self) -> None:
        """One `GET /v1/models` before the timed requests, answered or not.

        The first request a client process sends costs it ~45 ms (httpx and h11 set up
        on first use, the first connection); without this the first system of a run had
        its cold-start burst sent that much more slowly than the systems after it. It
        does not touch any KV cache."""
        with contextlib.suppress(httpx.HTTPError):
            await self.http.get(self.url.removesuffix("/completions") + "/models", timeout=10.0)

    def body(self, req: BenchRequest) -> dict[str, object]:
        prompt: object = (
            prompt_text(req.token_ids) if self.prompt_format == "text" else req.token_ids
        )
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": req.max_tokens,
            "min_tokens": req.max_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def send(self, req: BenchRequest, t0: float) -> RequestRecord:
        rec = RequestRecord(req.request_id, req.group, req.turn, len(req.token_ids), req.max_tokens)
        start = time.perf_counter()
        rec.start_s = start - t0
        rec.start_unix = time.time()
        last = start
        try:
            async with asyncio.timeout(self.timeout_s), self.http.stream("POST", self.url, json=self.body(req)) as resp:
                rec.status = resp.status_code
                rec.worker_id = resp.headers.get(WORKER_HEADER, "")
                for name in PEER_WORKER_HEADERS:
                    rec.worker_id = rec.worker_id or resp.headers.get(name, "")
                if ROUTE_US_HEADER in resp.headers:
                    rec.route_us = float(resp.headers[ROUTE_US_HEADER])
                if resp.status_code != 200:
                    rec.error = (await resp.aread()).decode(errors="replace")[:500]
                    return rec
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    now = time.perf_counter()
                    if not rec.response_id and chunk.get("id"):
                        rec.response_id = str(chunk["id"])
                    if "error" in chunk:
                        rec.error = json.dumps(chunk["error"])[:500]
                        break
                    if any(c.get("text") for c in chunk.get("choices") or []):
                        if rec.ttft_s is None:
                            rec.ttft_s = now - start
                        else:
                            rec.itl_s.append(now - last)
                        last = now
                    usage = chunk.get("usage")
                    if usage:
                        rec.completion_tokens = int(usage.get("completion_tokens") or 0)
                        rec.usage_prompt_tokens = usage.get("prompt_tokens")
                        details = usage.get("prompt_tokens_details") or {}
                        if details.get("cached_tokens") is not None:
                            rec.cached_tokens = int(details["cached_tokens"])
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            rec.error = f"{type(e).__name__}: {e}"[:500]
        except TimeoutError:
            rec.error = f"TimeoutError: no complete answer within {self.timeout_s:g} s"
        rec.e2e_s = time.perf_counter() - start
        return rec


async def run_workload(
    client: Client,
    workload: Workload,
    arrival: Arrival,
    label: str = "",
    warmup: list[BenchRequest] | None = None,
) -> RunResult:
    """Runs every session of `workload`; turns of a session go one after the other."""
    for req in warmup or []:
        await client.send(req, time.perf_counter())
    records: list[RequestRecord] = []
    t0 = time.perf_counter()

    async def run_session(idx: int) -> None:
        session = workload.sessions[idx]
        for k, req in enumerate(session.requests):
            if k and session.think_time_s:
                await asyncio.sleep(session.think_time_s)
            records.append(await client.send(req, t0))

    offsets = arrival.start_offsets(len(workload.sessions))
    if offsets is None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(workload.sessions)):
            queue.put_nowait(i)

        async def loop() -> None:
            while not queue.empty():
                await run_session(queue.get_nowait())

        await asyncio.gather(*(loop() for _ in range(arrival.concurrency)))
    else:
        cap = asyncio.Semaphore(arrival.concurrency if arrival.concurrency > 0 else 1 << 30)

        async def delayed(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            async with cap:
                await run_session(i)

        await asyncio.gather(*(delayed(i, at) for i, at in enumerate(offsets)))
    duration = time.perf_counter() - t0
    records.sort(key=lambda r: r.start_s)
    return RunResult(
        label or workload.name,
        records,
        duration,
        arrival.concurrency,
        {"workload": workload.description},
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(result: RunResult) -> dict[str, float]:
    ok = [r for r in result.records if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [g for r in ok for g in r.itl_s]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    with_cache = [r for r in ok if r.cached_tokens is not None]
    prompt_total = sum(r.prompt_tokens for r in with_cache)
    route = [r.route_us for r in ok if r.route_us is not None]
    workers = {r.worker_id for r in ok if r.worker_id}
    return {
        "num_requests": len(result.records),
        "num_ok": len(ok),
        "num_errors": len(result.records) - len(ok),
        "duration_s": result.duration_s,
        "req_per_s": len(ok) / result.duration_s if result.duration_s else float("nan"),
        "output_tok_per_s": sum(r.completion_tokens for r in ok) / result.duration_s
        if result.duration_s
        else float("nan"),
        "ttft_p50_ms": percentile(ttft, 50) * 1e3,
        "ttft_p90_ms": percentile(ttft, 90) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "itl_p50_ms": percentile(itl, 50) * 1e3,
        "itl_p99_ms": percentile(itl, 99) * 1e3,
        "e2e_p50_ms": percentile(e2e, 50) * 1e3,
        "e2e_p99_ms": percentile(e2e, 99) * 1e3,
        "cache_hit_ratio": (sum(r.cached_tokens or 0 for r in with_cache) / prompt_total)
        if prompt_total
        else float("nan"),
        "route_us_p50": percentile(route, 50) if route else float("nan"),
        "num_workers_seen": len(workers),
        "mean_ttft_ms": statistics.fmean(ttft) * 1e3 if ttft else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--label", default="")
    p.add_argument("--workload", choices=["shared-prefix", "multi-turn"], default="shared-prefix")
    p.add_argument("--num-requests", type=int, default=256, help="shared-prefix: requests")
    p.add_argument("--num-groups", type=int, default=64, help="shared-prefix: prefix groups")
    p.add_argument("--num-conversations", type=int, default=32, help="multi-turn: conversations")
    p.add_argument("--num-turns", type=int, default=4, help="multi-turn: turns per conversation")
    p.add_argument("--turn-isl", default="200", help="multi-turn: new tokens per later turn")
    p.add_argument(
        "--system-prompt-len", type=int, default=0, help="multi-turn: shared system prompt"
    )
    p.add_argument(
        "--think-time", type=float, default=0.0, help="multi-turn: seconds between turns"
    )
    p.add_argument("--prefix-ratio", type=float, default=0.9)
    p.add_argument(
        "--isl", default="4000", help="N | uniform:LO:HI | normal:MEAN:STD (multi-turn: first turn)"
    )
    p.add_argument("--osl", default="100")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--arrival", choices=["closed", "poisson"], default="closed")
    p.add_argument("--rate", type=float, default=0.0, help="sessions/s for poisson arrivals")
    p.add_argument("--prompt-format", choices=["text", "ids"], default="text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON-lines file for the per-request records")
    args = p.parse_args(argv)
    if args.workload == "multi-turn":
        wl = multi_turn(
            num_conversations=args.num_conversations,
            num_turns=args.num_turns,
            first_isl=LengthDist.parse(args.isl),
            turn_isl=LengthDist.parse(args.turn_isl),
            osl=LengthDist.parse(args.osl),
            system_prompt_len=args.system_prompt_len,
            think_time_s=args.think_time,
            seed=args.seed,
        )
    else:
        wl = shared_prefix(
            num_requests=args.num_requests,
            num_groups=args.num_groups,
            prefix_ratio=args.prefix_ratio,
            isl=LengthDist.parse(args.isl),
            osl=LengthDist.parse(args.osl),
            seed=args.seed,
        )
    arrival = Arrival(args.arrival, args.concurrency, args.rate, args.seed)

    async def go() -> RunResult:
        client = Client(args.url, args.model, prompt_format=args.prompt_format)
        try:
            return await run_workload(client, wl, arrival, args.label)
        finally:
            await client.close()

    result = run_async(go())
    result.save(args.out)
    print(json.dumps(summarize(result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
