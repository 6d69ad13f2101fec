"""The routing comparison in one command: Workload A through our frontend (kv,
round-robin, random), NVIDIA Dynamo 1.6.1 (kv, its own mocker, same timing model), smg and
vllm-router (cache_aware, round_robin) in front of our mocker workers' OpenAI endpoints;
then writes bench/results/routing.md with the table and plots.

    bash bench/peers/install.sh            # once: peers in .cache/peers/ (PyPI)
    python bench/routing.py                # ~10 minutes on 2 busy cores

Every system gets a fresh fleet (cold caches), the same requests (same seed) and the same
client. See bench/README.md for the flags. `--systems` also takes `ours-MODE-Np`: our
frontend with `--processes N` (e.g. `ours-kv-2p`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
import aiperf_client
import dynamo
import http_routers
import ours
from proc import ProcGroup, free_port, is_installed
from report import markdown_table, plot_throughput, plot_ttft_cdf
from runner import Client, RunResult, percentile, run_async, run_workload, summarize
from workloads import Arrival, BenchRequest, ensure_bench_model, workload_a

ROOT = HERE.parent
MODEL_NAME = "bench"
DEFAULT_SYSTEMS = (
    "ours-kv",
    "dynamo-kv",
    "smg-cache_aware",
    "ours-round-robin",
    "vllm-router-cache_aware",
    "ours-random",
    "smg-round_robin",
    "vllm-router-round_robin",
)
"""The systems the goals compare run back to back first: on a shared machine the load
drifts over the ~15 minutes of a run, and neighbours in time see the most similar load."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class SystemOutcome:
    label: str
    results: list[RunResult] = field(default_factory=list)
    """Main run first, then sweep runs."""
    server_cpu_ms: float | None = None
    """Server-side CPU per request in the main run (all of the system's processes)."""
    client_cpu_ms: float | None = None
    overhead_ms: float | None = None
    direct_ms: float | None = None
    """The same probe sent straight to one of the system's workers (HTTP-router systems)."""
    route_us: float | None = None
    aiperf: dict[str, float] | None = None
    load_avg: float | None = None
    """1-minute load average when the system's main run started."""
    error: str = ""


# ---------------------------------------------------------------- probes


async def _run(url: str, workload, arrival: Arrival, label: str) -> RunResult:  # type: ignore[no-untyped-def]
    client = Client(url, MODEL_NAME)
    try:
        await client.warm_up()
        return await run_workload(client, workload, arrival, label)
    finally:
        await client.close()


PROBE_REQUESTS = 48
PROBE_WARMUP = 8
"""The first probes fill the workers' caches (round-robin needs one per worker)."""


async def probe_ttft_ms(
    url: str, direct_url: str, num_requests: int = PROBE_REQUESTS, warmup: int = PROBE_WARMUP
) -> tuple[float, float]:
    """Median TTFT of one 4,000-token prompt sent one at a time, max_tokens 1, once every
    worker has cached it, through the system and straight to a worker's own API
    (`direct_url`), alternating request by request so that both see the same load on the
    machine: (system ms, direct ms). Their difference is what the system adds."""
    prompt = workload_a(1, seed=999).requests()[0].token_ids
    system, direct = Client(url, MODEL_NAME), Client(direct_url, MODEL_NAME)
    ttfts: tuple[list[float], list[float]] = ([], [])
    try:
        for i in range(num_requests):
            for client, out in ((system, ttfts[0]), (direct, ttfts[1])):
                rec = await client.send(BenchRequest(f"probe-{i}", prompt, 1, 0), time.perf_counter())
                if i >= warmup and rec.ok and rec.ttft_s is not None:
                    out.append(rec.ttft_s * 1e3)
    finally:
        await system.close()
        await direct.close()
    return tuple(percentile(t, 50) if t else float("nan") for t in ttfts)  # type: ignore[return-value]


def fill_workers_from_log(result: RunResult, log: Path) -> None:
    """Where no response header named the worker, take it from the router's log line."""
    if not log.exists() or all(r.worker_id for r in result.records):
        return
    by_request: dict[str, str] = {}
    for line in _ANSI.sub("", log.read_text(errors="replace")).splitlines():
        worker = re.search(r"worker_id=(\w+)", line)
        if worker is None:
            continue
        for rid in re.findall(r"request_id=([\w-]+)", line):
            by_request[rid] = worker.group(1)
    for r in result.records:
        if not r.worker_id and r.response_id:
            rid = r.response_id
            r.worker_id = by_request.get(rid) or by_request.get(rid.removeprefix("cmpl-"), "")


# ---------------------------------------------------------------- systems


def start_system(
    label: str, args: argparse.Namespace, fleet: dynamo.FleetSpec, log_dir: Path
) -> tuple[list[ProcGroup], str, Path | None, str | None]:
    """Start one system; returns its process groups, base URL and the log naming its choices."""
    port = free_port()
    model_dir = args.model_dir
    if label.startswith("ours-"):
        # ours-MODE, or ours-MODE-Np: N frontend processes (`--processes N`).
        found = re.fullmatch(r"ours-(kv|round-robin|random)(?:-(\d+)p)?", label)
        if found is None:
            raise ValueError(f"unknown system {label!r}")
        mode, processes = found[1], int(found[2] or 1)
        g, port = ours.start_frontend_stack(model_dir, MODEL_NAME, fleet, log_dir, mode, processes)
        return [g], f"http://127.0.0.1:{port}", log_dir / f"{g.name}-frontend.log", None
    if label.startswith("dynamo-"):
        if not is_installed("dynamo"):
            raise RuntimeError("dynamo not installed: bash bench/peers/install.sh dynamo")
        mode = label.removeprefix("dynamo-")
        g = dynamo.start(model_dir, MODEL_NAME, fleet, port, log_dir, router_mode=mode)
        time.sleep(3.0)  # all mocker instances registered and watched
        return [g], f"http://127.0.0.1:{port}", log_dir / f"{g.name}-frontend.log", None
    for router in http_routers.ROUTERS:
        if label.startswith(router + "-"):
            if not is_installed(router):
                raise RuntimeError(f"{router} not installed: bash bench/peers/install.sh {router}")
            policy = label.removeprefix(router + "-")
            workers, urls = ours.start_http_workers(model_dir, MODEL_NAME, fleet, log_dir)
            try:
                g, port = http_routers.start_on_free_port(router, policy, urls, model_dir, log_dir)
            except BaseException:
                workers.stop()
                raise
            return [g, workers], f"http://127.0.0.1:{port}", None, urls[0]
    raise ValueError(f"unknown system {label!r}")


def run_system(
    label: str, args: argparse.Namespace, fleet: dynamo.FleetSpec, run_dir: Path
) -> SystemOutcome:
    out = SystemOutcome(label)
    log_dir = run_dir / "logs"
    groups: list[ProcGroup] = []
    try:
        print(f"[{time.strftime('%H:%M:%S')}] {label}: starting", flush=True)
        groups, url, choice_log, direct_url = start_system(label, args, fleet, log_dir)
        wl = workload_a(args.num_requests, seed=args.seed)
        print(
            f"[{time.strftime('%H:%M:%S')}] {label}: {wl.num_requests} requests, c={args.concurrency}",
            flush=True,
        )
        out.load_avg = os.getloadavg()[0]
        cpu0, client0 = sum(g.cpu_seconds() for g in groups), time.process_time()
        main = run_async(_run(url, wl, Arrival("closed", args.concurrency), label))
        out.server_cpu_ms = (sum(g.cpu_seconds() for g in groups) - cpu0) / wl.num_requests * 1e3
        out.client_cpu_ms = (time.process_time() - client0) / wl.num_requests * 1e3
        if choice_log is not None:
            fill_workers_from_log(main, choice_log)
        main.meta.update(
            {
                "fleet": fleet.__dict__ if hasattr(fleet, "__dict__") else str(fleet),
                "seed": args.seed,
            }
        )
        main.save(run_dir / f"{label}-c{args.concurrency}.jsonl")
        out.results.append(main)
        s = summarize(main)
        print(
            f"    ttft p50 {s['ttft_p50_ms']:.1f} ms, p99 {s['ttft_p99_ms']:.1f} ms, {s['req_per_s']:.2f} req/s, hit {s['cache_hit_ratio']:.1%}, errors {s['num_errors']}",
            flush=True,
        )
        if label in args.sweep_systems:
            for i, c in enumerate(args.sweep):
                sweep_wl = workload_a(max(c * 4, 128), seed=args.seed + 100 + i)
                r = run_async(_run(url, sweep_wl, Arrival("closed", c), label))
                if choice_log is not None:
                    fill_workers_from_log(r, choice_log)
                r.save(run_dir / f"{label}-sweep-c{c}.jsonl")
                out.results.append(r)
        if direct_url is None:
            probe_group, direct_url = ours.start_probe_worker(
                args.model_dir, MODEL_NAME, fleet, log_dir
            )
            groups.append(probe_group)
        out.overhead_ms, out.direct_ms = run_async(probe_ttft_ms(url, direct_url))
        route = [r.route_us for r in main.records if r.route_us is not None]
        out.route_us = percentile(route, 50) if route else None
        if args.aiperf and label in args.aiperf_systems and is_installed("aiperf"):
            aip_wl = workload_a(args.aiperf_requests, seed=args.seed + 7)
            out.aiperf = aiperf_client.run(
                url,
                MODEL_NAME,
                args.model_dir,
                aip_wl,
                args.concurrency,
                run_dir / f"aiperf-{label}",
            )
    except Exception as exc:  # noqa: BLE001 - one system failing must not lose the others results
        out.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        for g in groups:
            g.stop()
    return out


# ---------------------------------------------------------------- report


def _fmt(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None or math.isnan(x) else fmt.format(x)


def write_report(
    outcomes: list[SystemOutcome],
    baseline: float | None,
    args: argparse.Namespace,
    fleet: dynamo.FleetSpec,
    started: float,
) -> Path:
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    mains = [o.results[0] for o in outcomes if o.results]
    stem = out.with_suffix("")
    cdf = plot_ttft_cdf(mains, stem.with_name(stem.name + "_ttft_cdf.png"), "Workload A: TTFT CDF")
    sweep_results = [r for o in outcomes for r in o.results if o.label in args.sweep_systems]
    thr = plot_throughput(sweep_results, stem.with_name(stem.name + "_throughput.png"))
    by = {o.label: summarize(o.results[0]) for o in outcomes if o.results}
    lines = [
        "# Routing benchmark: KV-aware routing vs round-robin, random and peer routers",
        "",
        f"Reproduce: `{args.command}`",
        "",
        (
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {time.time() - started:.0f} s in all, "
            f"on {platform.machine()} with {os.cpu_count()} cores shared with other work "
            f"(load average at the start: {', '.join(f'{x:.1f}' for x in args.load_at_start)}; at the end: "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; 1-minute load when each system started: "
            + ", ".join(f"{o.label} {o.load_avg:.1f}" for o in outcomes if o.load_avg is not None)
            + ")."
        ),
        "",
        "## Setup",
        "",
        (
            f"- Workload A: {args.num_requests} requests, 64 prefix groups, 90% shared prefix, ISL 4,000, OSL 100 "
            f"(`ignore_eos`), closed loop at concurrency {args.concurrency}, seed {args.seed}; identical requests for every system."
        ),
        (
            f"- Fleet per system (fresh, cold caches): {fleet.num_workers} mocker workers, {fleet.num_blocks} KV blocks of "
            f"{fleet.block_size} tokens each, max_num_seqs {fleet.max_num_seqs}, max_num_batched_tokens "
            f"{fleet.max_num_batched_tokens}, **speedup ratio {fleet.speedup_ratio}** (every simulated time divided by it)."
        ),
        (
            "  A worker holds ~16 groups' prefixes (225 blocks each), not all 64: a router that spreads a group "
            "over workers pays for the prefix again."
        ),
        (
            "- Timing model (ours and Dynamo's mocker): prefill ms = 4.209989e-7·N² + 0.01518344·N + 16.50142, "
            "decode step ms = max(1, −25.74·p² + 54.01·p + 5.74)."
        ),
        (
            "- ours-*: `mixroute frontend --router-mode M` + `mixroute worker --engine mocker --num-workers 8`. "
            "dynamo-kv: Dynamo 1.6.1 frontend `--router-mode kv` + `python -m dynamo.mocker --num-workers 8`, file discovery. "
            "smg / vllm-router: the router in front of 8 `mixroute worker --engine mocker --http-port` processes."
        ),
        (
            "- Client: bench/runner.py (httpx, streaming `/v1/completions`, text prompts of a word-level tokenizer "
            "so every system sees the same token ids). Cache hit = Σ usage.prompt_tokens_details.cached_tokens / Σ prompt tokens."
        ),
        "",
        "## Results (Workload A)",
        "",
        markdown_table(mains),
        "",
        f"![TTFT CDF]({cdf.name})",
        "",
    ]
    lines += _goals(by)
    lines += [
        "",
        "## Per-request routing overhead",
        "",
        (
            f"Probe: one 4,000-token prompt sent {PROBE_REQUESTS} times one at a time with max_tokens 1, through the "
            "system and straight to a mocker worker's own OpenAI endpoint (`direct`), alternating request by request "
            f"so both see the same load on the machine; medians of the last {PROBE_REQUESTS - PROBE_WARMUP} (the prompt "
            "is cached on every worker by then). The direct worker is one of the system's own for smg / vllm-router, "
            "a separate single mocker worker started for the probe otherwise. `added` = probe minus direct: "
            "tokenizing, routing, proxying. "
            "`select` = the time our frontend reports spending on the worker choice alone (`x-mixroute-route-us`). "
            "CPU per request: user+system CPU of all the system's processes (router/frontend and workers) during "
            "the main run, divided by its requests; on two shared cores this, more than routing, sets TTFT at c=32."
        ),
        "",
        "| system | probe TTFT p50 ms | direct ms | added ms | select us p50 | server CPU ms/request | client CPU ms/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        base = o.direct_ms
        added = None if o.overhead_ms is None or base is None else o.overhead_ms - base
        lines.append(
            f"| {o.label} | {_fmt(o.overhead_ms)} | {_fmt(o.direct_ms)} | {_fmt(added)} | {_fmt(o.route_us, '{:.0f}')} | "
            f"{_fmt(o.server_cpu_ms)} | {_fmt(o.client_cpu_ms)} |"
        )
    lines += [
        "",
        "## Load spread (requests per worker, main run)",
        "",
        "| system | workers | max share | min share |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        if not o.results:
            continue
        counts: dict[str, int] = {}
        for r in o.results[0].records:
            if r.worker_id:
                counts[r.worker_id] = counts.get(r.worker_id, 0) + 1
        total = sum(counts.values())
        if total:
            lines.append(
                f"| {o.label} | {len(counts)} | {max(counts.values()) / total:.1%} | {min(counts.values()) / total:.1%} |"
            )
        else:
            lines.append(f"| {o.label} | n/a (router does not say) | | |")
    if sweep_results:
        lines += [
            "",
            "## Concurrency sweep",
            "",
            markdown_table(sweep_results),
            "",
            f"![throughput]({thr.name})",
        ]
    aip = [o for o in outcomes if o.aiperf]
    if aip:
        lines += [
            "",
            "## Independent client: aiperf",
            "",
            f"Same system, fresh prefix groups (seed {args.seed + 7}), {args.aiperf_requests} requests at concurrency {args.concurrency}.",
            "",
            "| system | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | E2E p50 ms |",
            "|---|---|---|---|---|---|",
        ]
        for o in aip:
            a = o.aiperf or {}
            lines.append(
                f"| {o.label} | {_fmt(a.get('request_throughput'), '{:.2f}')} | {_fmt(a.get('ttft_p50_ms'))} | "
                f"{_fmt(a.get('ttft_p99_ms'))} | {_fmt(a.get('itl_p50_ms'), '{:.2f}')} | {_fmt(a.get('e2e_p50_ms'), '{:.0f}')} |"
            )
    failed = [o for o in outcomes if o.error]
    if failed:
        lines += ["", "## Did not run", ""] + [f"- {o.label}: {o.error}" for o in failed]
    lines += [
        "",
        f"Raw per-request records: `{args.run_dir}` (JSON lines, one file per run; not committed).",
        "",
    ]
    out.write_text("\n".join(lines))
    return out


def _goals(by: dict[str, dict[str, float]]) -> list[str]:
    lines = ["### Goals", ""]
    kv, rr, dyn = by.get("ours-kv"), by.get("ours-round-robin"), by.get("dynamo-kv")

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if kv and rr:
        ratio = kv["ttft_p50_ms"] / rr["ttft_p50_ms"]
        lines.append(f"- kv TTFT p50 <= 0.5x round-robin: {ratio:.2f}x — {mark(ratio <= 0.5)}")
    if kv and dyn:
        lines.append(
            f"- cache hit >= Dynamo: {kv['cache_hit_ratio']:.1%} vs {dyn['cache_hit_ratio']:.1%} — {mark(kv['cache_hit_ratio'] >= dyn['cache_hit_ratio'])}"
        )
        for key, better in (
            ("ttft_p50_ms", "lower"),
            ("ttft_p99_ms", "lower"),
            ("req_per_s", "higher"),
        ):
            ok = kv[key] <= dyn[key] if better == "lower" else kv[key] >= dyn[key]
            lines.append(
                f"- {key} at least as good as Dynamo: {kv[key]:.2f} vs {dyn[key]:.2f} — {mark(ok)}"
            )
    if kv:
        for peer in ("smg-cache_aware", "vllm-router-cache_aware"):
            p = by.get(peer)
            if p:
                ok = (
                    kv["ttft_p50_ms"] < p["ttft_p50_ms"]
                    and kv["ttft_p99_ms"] < p["ttft_p99_ms"]
                    and kv["req_per_s"] > p["req_per_s"]
                )
                lines.append(
                    f"- better than {peer} (TTFT p50 {kv['ttft_p50_ms']:.1f} vs {p['ttft_p50_ms']:.1f}, p99 "
                    f"{kv['ttft_p99_ms']:.1f} vs {p['ttft_p99_ms']:.1f}, req/s {kv['req_per_s']:.2f} vs {p['req_per_s']:.2f}) — {mark(ok)}"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    p.add_argument("--num-requests", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--speedup-ratio", type=float, default=0.5)
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--num-blocks", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sweep", default="8,64", help="extra concurrencies for the throughput plot ('' for none)"
    )
    p.add_argument("--sweep-systems", default="ours-kv,ours-round-robin,dynamo-kv")
    p.add_argument("--aiperf", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--aiperf-systems", default="ours-kv,dynamo-kv")
    p.add_argument("--aiperf-requests", type=int, default=256)
    p.add_argument("--model-dir", type=Path, default=ROOT / ".cache" / "bench" / "model")
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=HERE / "results" / "routing.md")
    args = p.parse_args(argv)
    args.command = "python bench/routing.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.sweep = [int(x) for x in args.sweep.split(",") if x.strip()]
    args.sweep_systems = set(filter(None, args.sweep_systems.split(",")))
    args.aiperf_systems = set(filter(None, args.aiperf_systems.split(",")))
    args.model_dir = ensure_bench_model(args.model_dir).resolve()
    args.run_dir = args.run_dir or ROOT / ".cache" / "bench" / "runs" / time.strftime(
        "%Y%m%d-%H%M%S"
    )
    args.run_dir.mkdir(parents=True, exist_ok=True)
    fleet = dynamo.FleetSpec(
        num_workers=args.num_workers, num_blocks=args.num_blocks, speedup_ratio=args.speedup_ratio
    )
    started = time.time()
    args.load_at_start = os.getloadavg()
    outcomes = []
    labels = [s for s in args.systems.split(",") if s]
    for label in labels:
        outcomes.append(run_system(label, args, fleet, args.run_dir))
        write_report(outcomes, None, args, fleet, started)  # partial report survives a crash
    directs = [o.direct_ms for o in outcomes if o.direct_ms is not None]
    baseline = statistics.median(directs) if directs else None
    path = write_report(outcomes, baseline, args, fleet, started)
    (args.run_dir / "outcomes.json").write_text(
        json.dumps(
            [
                {
                    "label": o.label,
                    "overhead_ms": o.overhead_ms,
                    "direct_ms": o.direct_ms,
                    "server_cpu_ms": o.server_cpu_ms,
                    "client_cpu_ms": o.client_cpu_ms,
                    "aiperf": o.aiperf,
                    "error": o.error,
                }
                for o in outcomes
            ],
            indent=1,
        )
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
