"""Benchmark report: a markdown table of the runs plus PNG plots (TTFT CDF per system,
throughput vs concurrency).

    python bench/report.py RUN.jsonl [RUN.jsonl ...] --out bench/results/routing.md
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import RunResult, summarize

COLUMNS = [
    ("system", "{}"),
    ("conc", "{}"),
    ("ok/total", "{}"),
    ("req/s", "{:.2f}"),
    ("out tok/s", "{:.0f}"),
    ("TTFT p50 ms", "{:.1f}"),
    ("TTFT p90 ms", "{:.1f}"),
    ("TTFT p99 ms", "{:.1f}"),
    ("ITL p50 ms", "{:.2f}"),
    ("TPOT mean ms", "{:.2f}"),
    ("E2E p50 ms", "{:.0f}"),
    ("cache hit", "{:.1%}"),
    ("route us p50", "{:.0f}"),
    ("workers used", "{}"),
]


def tpot_mean_ms(result: RunResult) -> float:
    """Mean time per output token after the first: robust to a client that reads chunks in bursts."""
    vals = [
        (r.e2e_s - r.ttft_s) / (r.completion_tokens - 1)
        for r in result.records
        if r.ok and r.e2e_s is not None and r.ttft_s is not None and r.completion_tokens > 1
    ]
    return sum(vals) / len(vals) * 1e3 if vals else float("nan")


def _fmt(fmt: str, value: object) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return fmt.format(value)


def table_row(result: RunResult, route_us: float | None = None) -> list[str]:
    s = summarize(result)
    route = s["route_us_p50"] if route_us is None else route_us
    values = [
        result.label,
        result.concurrency,
        f"{s['num_ok']}/{s['num_requests']}",
        s["req_per_s"],
        s["output_tok_per_s"],
        s["ttft_p50_ms"],
        s["ttft_p90_ms"],
        s["ttft_p99_ms"],
        s["itl_p50_ms"],
        tpot_mean_ms(result),
        s["e2e_p50_ms"],
        s["cache_hit_ratio"],
        route,
        s["num_workers_seen"] or "n/a",
    ]
    return [_fmt(fmt, v) for (_, fmt), v in zip(COLUMNS, values, strict=True)]


def markdown_table(results: list[RunResult], route_us: dict[str, float] | None = None) -> str:
    route_us = route_us or {}
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(table_row(r, route_us.get(r.label))) + " |")
    return "\n".join(lines)


def plot_ttft_cdf(results: list[RunResult], path: Path, title: str = "TTFT CDF") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ttft = sorted(x.ttft_s * 1e3 for x in r.records if x.ok and x.ttft_s is not None)
        if not ttft:
            continue
        ys = [(i + 1) / len(ttft) for i in range(len(ttft))]
        ax.step(ttft, ys, where="post", label=f"{r.label} (c={r.concurrency})")
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(
    results: list[RunResult], path: Path, title: str = "Throughput vs concurrency"
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for r in results:
        s = summarize(r)
        by_label[r.label].append((r.concurrency, s["req_per_s"], s["ttft_p50_ms"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for label, pts in by_label.items():
        pts.sort()
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], marker="o", label=label)
        ax2.plot(xs, [p[2] for p in pts], marker="o", label=label)
    ax1.set_xlabel("concurrency")
    ax1.set_ylabel("requests / s")
    ax1.set_title(title)
    ax2.set_xlabel("concurrency")
    ax2.set_ylabel("TTFT p50 (ms)")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    results = [RunResult.load(x) for x in a.runs]
    stem = a.out.with_suffix("")
    cdf = plot_ttft_cdf(results, stem.with_name(stem.name + "_ttft_cdf.png"))
    thr = plot_throughput(results, stem.with_name(stem.name + "_throughput.png"))
    a.out.write_text(
        f"# Benchmark report\n\n{markdown_table(results)}\n\n![TTFT CDF]({cdf.name})\n\n![throughput]({thr.name})\n"
    )
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
