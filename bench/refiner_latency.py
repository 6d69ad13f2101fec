#!/usr/bin/env python3
"""Category refiner latency per prompt, as the router calls it (one prompt, the featurizer's
token ids), on a GPU and on the CPU; and what it adds to the category signal.

    python3 bench/refiner_latency.py --device cuda     # writes bench/results/refiner-latency.md

Rows, for 50- and 500-token prompts built like bench/router_bench.py's (MMLU questions
cut at an exact MiniLM token count; the refiner reads the first 128 tokens):
- the refiner on DEVICE as served: the CUDA graph of the prompt's length (on a GPU),
  fed the featurizer's ids;
- the same refiner eager and tokenising the prompt itself (the serving path before the
  graphs and the shared ids);
- the refiner on one CPU thread, fed the featurizer's ids;
- the category signal on the CPU (embedding, head, neighbour vote) alone, and with the
  refiner on DEVICE averaged in at weight 0.5 (it then reads every prompt).
Each row: a fresh prompt per call, 10 warm-ups, then `--requests` calls timed one by one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from router_bench import Prompts, _tokenizer, percentile

from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.embedder import Embedder
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.refiner import CategoryRefiner

WARMUP = 10
SIZES = (50, 500)


def timed(call: Callable[[str], object], prompts: list[str]) -> tuple[float, float]:
    for prompt in prompts[:WARMUP]:
        call(prompt)
    times = []
    for prompt in prompts[WARMUP:]:
        start = time.perf_counter()
        call(prompt)
        times.append((time.perf_counter() - start) * 1e3)
    return percentile(times, 50), percentile(times, 99)


def machine(device: str) -> str:
    import torch

    where = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    if device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name(torch.device(device))}, {where}"
    return f"{where}; torch {torch.__version__}"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device of the refiner rows (cuda[:N] or cpu)")
    parser.add_argument("--requests", type=int, default=100, help="timed calls per row (the CPU refiner row: a third)")
    parser.add_argument("--commit", default=None, help="commit to name in the report (default: git's HEAD)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "refiner-latency.md")
    args = parser.parse_args()

    featurizer = Featurizer()
    prompts = Prompts(_tokenizer())
    started = time.perf_counter()
    refiner = CategoryRefiner(device=args.device)
    refiner.load()
    load_s = time.perf_counter() - started
    on_cpu = CategoryRefiner(num_threads=1)
    on_cpu.load()
    embedder = Embedder(featurizer=featurizer)
    classifier = CategoryClassifier(featurizer=featurizer, refiner=refiner)
    categories = classifier.categories

    token_ids: dict[str, np.ndarray] = {}

    def ids(prompt: str) -> list[np.ndarray]:
        return [token_ids[prompt]]

    def eager_tokenising(prompt: str) -> object:
        graphs, refiner._graphs = refiner._graphs, {}
        try:
            return refiner.probabilities([prompt], categories)
        finally:
            refiner._graphs = graphs

    rows: dict[str, dict[int, tuple[float, float]]] = {}
    for size in SIZES:
        batch = [prompts.make(size) for _ in range(WARMUP + args.requests)]
        for prompt in batch:  # the router's head has featurised the prompt before the refiner runs
            token_ids[prompt] = featurizer.features(prompt).token_ids
        measured = {
            f"refiner on {args.device}, as served (featurizer ids{', CUDA graph' if refiner._graphs else ''})":
                timed(lambda p: refiner.probabilities([p], categories, ids(p)), batch),
            f"refiner on {args.device}, eager, tokenising the prompt itself":
                timed(eager_tokenising, batch),
            "refiner on 1 CPU thread, featurizer ids":
                timed(lambda p: on_cpu.probabilities([p], categories, ids(p)), batch[: WARMUP + args.requests // 3]),
            "category signal on the CPU (embedding, head, vote), refiner off":
                timed(lambda p: classifier.predict([p], embedder.encode([p]), 0.0), batch),
            f"category signal, refiner on {args.device} at weight 0.5 (reads every prompt)":
                timed(lambda p: classifier.predict([p], embedder.encode([p]), None, 0.0, 0.5), batch),
        }
        for name, value in measured.items():
            rows.setdefault(name, {})[size] = value
            print(f"{size} tokens: {name}: p50 {value[0]:.2f} ms, p99 {value[1]:.2f} ms", flush=True)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Category refiner latency per prompt",
        "",
        f"Reproduce: `python3 bench/refiner_latency.py --device {args.device}`",
        "",
        (
            f"Run: {now}, commit {args.commit or commit()}; {machine(args.device)}. Refiner load "
            f"(weights{', and one CUDA graph per prompt length' if refiner._graphs else ''}): {load_s:.1f} s. "
            f"{args.requests} timed calls per row after {WARMUP} warm-ups (the 1-CPU-thread row: "
            f"{args.requests // 3}), a fresh prompt each."
        ),
        "",
        "| p50 / p99, ms | " + " | ".join(f"{s} tokens" for s in SIZES) + " |",
        "|---|" + "---:|" * len(SIZES),
    ]
    for name, by_size in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{by_size[s][0]:.2f} / {by_size[s][1]:.2f}" for s in SIZES) + " |")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
