"""KV offload benchmark: time to first token of a prompt whose prefix was pushed out of the
device KV cache, loaded back from host memory or disk, vs recomputed.

For each tier the same 1,000-token prompt (90% shared with one computed earlier) is timed:
- device hit: the shared prefix is still in the device cache;
- host hit / disk hit: filler requests evicted it from the device (and, for disk, from
  the one-block host tier) before the timed request;
- recompute: the same eviction with offload off (what a worker without tiers pays);
- cold: nothing cached.

Writes bench/results/kv-offload.md (or --out). Reproduce:
    python3 bench/kv_offload_bench.py                         # SmolLM2-135M (packaged), fp32, CPU
    python3 bench/kv_offload_bench.py --device cuda --dtype bfloat16 --random-smollm2 /tmp/sm2
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import random_smollm2, sync

from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.engine.model.smollm2 import default_model_path
from mixroute.protocol.messages import GenerateRequest, SamplingParams

BLOCK = 16


def tokens(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(100, vocab - 100) for _ in range(n)]


def run_to_first_token(engine: LLMEngine, prompt: list[int], tag: str) -> tuple[float, int]:
    """Seconds to the first token, and the prompt tokens the engine did not compute."""
    start = time.perf_counter()
    seq = engine.add_request(GenerateRequest(request_id=tag, token_ids=prompt, sampling=SamplingParams(max_tokens=1)))
    while engine.has_work:
        if any(f.token_ids for _, f in engine.step()):
            break
    sync(engine.device.type)
    elapsed = time.perf_counter() - start
    while engine.has_work:
        engine.step()
    return elapsed, max(seq.num_cached_tokens, 0)


def fill(engine: LLMEngine, rng: random.Random, vocab: int, num_tokens: int, tag: str) -> None:
    """Compute unrelated prompts worth `num_tokens`, pushing older blocks out of the device."""
    for i in range(0, num_tokens, 1000):
        run_to_first_token(engine, tokens(rng, 1000, vocab), f"{tag}-fill{i}")


def measure(
    engine: LLMEngine, scenario: str, vocab: int, seed: int, prompt_len: int, evict_tokens: int, drain: bool = False
) -> tuple[float, int]:
    rng = random.Random(seed)
    base = tokens(rng, prompt_len, vocab)
    shared = base[: prompt_len * 9 // 10]
    timed = shared + tokens(rng, prompt_len - len(shared), vocab)
    engine.pool.reset_cache()
    if scenario != "cold":
        run_to_first_token(engine, base, f"{scenario}{seed}-first")
        if scenario != "device hit":
            fill(engine, rng, vocab, evict_tokens, f"{scenario}{seed}")
            if drain and engine.pool.offload is not None:
                engine.pool.offload.flush()  # the fill's disk writes done before the timed request
    return run_to_first_token(engine, timed, f"{scenario}{seed}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model dir (default: packaged SmolLM2-135M-Instruct)")
    parser.add_argument("--random-smollm2", default=None, metavar="DIR",
                        help="random weights with SmolLM2-135M's shapes, written to DIR")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--prompt-len", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kv-offload.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = random_smollm2(Path(args.random_smollm2)) if args.random_smollm2 else Path(args.model or default_model_path())

    # A device cache of ~3 prompts: 2 prompts' worth of filler evicts the timed prefix.
    device_blocks = 3 * (args.prompt_len // BLOCK + 1)
    evict_tokens = 3 * args.prompt_len
    common = {"model_path": str(path), "device": args.device, "dtype": args.dtype, "num_blocks": device_blocks,
              "block_size": BLOCK, "max_num_batched_tokens": 4096}
    disk_dir = Path(tempfile.mkdtemp(prefix="mixroute-kv-offload-")) / "kv"
    engines = {
        "recompute (offload off)": LLMEngine(EngineConfig(**common)),
        "host memory": LLMEngine(EngineConfig(**common, kv_offload_host_blocks=4 * device_blocks)),
        "disk": LLMEngine(EngineConfig(**common, kv_offload_host_blocks=1, kv_offload_disk_dir=str(disk_dir),
                                        kv_offload_disk_blocks=4 * device_blocks)),
    }
    vocab = engines["host memory"].model_config.vocab_size
    for name, engine in engines.items():
        run_to_first_token(engine, tokens(random.Random(1), 64, vocab), f"warm-{name}")
    plan = [("cold", "recompute (offload off)"), ("device hit", "host memory"),
            ("evicted, recomputed", "recompute (offload off)"), ("evicted, loaded from host memory", "host memory"),
            ("evicted, loaded from disk", "disk"), ("evicted, loaded from disk (writes drained)", "disk")]
    results: dict[str, list[tuple[float, int]]] = {label: [] for label, _ in plan}
    for r in range(args.repeats):
        for label, engine_name in plan:
            scenario = {"cold": "cold", "device hit": "device hit"}.get(label, "evicted")
            drain = label.endswith("(writes drained)")
            results[label].append(
                measure(engines[engine_name], scenario, vocab, 100 + r, args.prompt_len, evict_tokens, drain)
            )
            print(f"[{time.strftime('%H:%M:%S')}] {label}: {results[label][-1][0] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    stats = {name: dict(engine.pool.offload.stats) for name, engine in engines.items() if engine.pool.offload}
    for engine in engines.values():
        engine.close()

    cold_ms = statistics.median(t for t, _ in results["cold"]) * 1e3
    load = os.getloadavg()
    lines = [
        "# KV offload: time to first token after the prefix left the device cache",
        "",
        (f"Model `{path.name}`, {args.dtype}, device `{args.device}`, torch {torch.__version__}, threads "
         f"{torch.get_num_threads()}, {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), "
         f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}."),
        "",
        "Reproduce: `python3 bench/kv_offload_bench.py " + " ".join(sys.argv[1:]) + "`",
        "",
        (f"A {args.prompt_len}-token prompt, 90% shared with one computed before it; the device cache holds "
         f"{device_blocks} blocks of {BLOCK} tokens (~3 prompts) and {evict_tokens} tokens of unrelated "
         "prompts ran in between (for the evicted rows). Host tier: 4x the device blocks; disk tier: a one-block "
         f"host tier in front of 4x the device blocks on disk (files written on a background thread; in the "
         "'writes drained' row the filler's writes finished before the timed request, in the row above they "
         f"are still queued). Median of {args.repeats}."),
        "",
        "| case | TTFT p50 ms | vs cold | prompt tokens not computed | runs, ms |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for label, _ in plan:
        runs = results[label]
        p50 = statistics.median(t for t, _ in runs) * 1e3
        cached = statistics.median(c for _, c in runs)
        lines.append(f"| {label} | {p50:.1f} | {p50 / cold_ms:.2f}x | {cached:.0f} | "
                     + ", ".join(f"{t * 1e3:.0f}" for t, _ in runs) + " |")
    lines += ["", "Offload counters (blocks): " + "; ".join(f"{k}: {v}" for k, v in stats.items()), ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
