"""Engine benchmark on this machine: mixroute's engine vs HF transformers `generate`.

1. Throughput: the same 32 mixed-length prompts as one batch, greedy, a fixed number of
   output tokens each (EOS ignored on both sides), output tokens/s.
2. TTFT of a 1,000-token prompt: cold vs with 90% of it in the prefix cache.

Writes bench/results/engine.md (or --out). Reproduce:
    python3 bench/engine_bench.py            # SmolLM2-135M-Instruct, fp32, CPU
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.engine.model.smollm2 import default_model_path
from mixroute.protocol.messages import GenerateRequest, SamplingParams


def make_prompts(n: int, vocab: int, seed: int, min_len: int, max_len: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [rng.randrange(100, vocab - 100) for _ in range(rng.randint(min_len, max_len))]
        for _ in range(n)
    ]


def random_smollm2(target: Path) -> Path:
    """A random-weight model with SmolLM2-135M's exact shapes (same cost per token, no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (target / "config.json").exists():
        return target
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, rms_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    return target


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_hf(
    path: Path, prompts: list[list[int]], max_tokens: int, device: str, dtype: torch.dtype
) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    width = max(map(len, prompts))
    pad = 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.no_grad():
        model.generate(
            ids[:2, -8:],
            attention_mask=mask[:2, -8:],
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=pad,
        )
        sync(device)
        start = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        sync(device)
        elapsed = time.perf_counter() - start
    num_out = int((out.shape[1] - width) * len(prompts))
    del model
    return elapsed, num_out


def bench_engine(
    engine: LLMEngine, prompts: list[list[int]], max_tokens: int, tag: str
) -> tuple[float, int]:
    sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(
            GenerateRequest(request_id=f"{tag}{i}", token_ids=prompt, sampling=sampling)
        )
    num_out = 0
    while engine.has_work:
        num_out += sum(len(f.token_ids) for _, f in engine.step())
    sync(engine.device.type)
    return time.perf_counter() - start, num_out


def ttft(engine: LLMEngine, prompt: list[int], tag: str) -> float:
    start = time.perf_counter()
    engine.add_request(
        GenerateRequest(request_id=tag, token_ids=prompt, sampling=SamplingParams(max_tokens=1))
    )
    while engine.has_work:
        if any(f.token_ids for _, f in engine.step()):
            break
    sync(engine.device.type)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="HF model dir (default: packaged SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--random-smollm2", default=None, metavar="DIR",
                        help="use random weights with SmolLM2-135M's shapes, written to DIR (for machines without the model)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--ttft-repeats", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per side, alternating")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_smollm2:
        path = random_smollm2(Path(args.random_smollm2))
    else:
        path = Path(args.model) if args.model else default_model_path()
    dtype = getattr(torch, args.dtype)
    config = EngineConfig(
        model_path=str(path), device=args.device, dtype=args.dtype, max_num_batched_tokens=4096
    )
    engine = LLMEngine(config)
    vocab = engine.model_config.vocab_size
    prompts = make_prompts(args.num_prompts, vocab, seed=0, min_len=args.min_len, max_len=args.max_len)

    bench_engine(engine, make_prompts(4, vocab, 1, 8, 32), 4, "warm")
    engine.pool.reset_cache()
    # Alternate the two so a change in machine load hits both alike.
    eng_runs: list[tuple[float, int]] = []
    hf_runs: list[tuple[float, int]] = []
    for r in range(args.repeats):
        progress(f"run {r}: engine")
        eng_runs.append(bench_engine(engine, prompts, args.max_tokens, f"t{r}-"))
        engine.pool.reset_cache()
        progress(f"run {r}: engine {eng_runs[-1][1] / eng_runs[-1][0]:.1f} tok/s; HF generate")
        hf_runs.append(bench_hf(path, prompts, args.max_tokens, args.device, dtype))
        progress(f"run {r}: HF {hf_runs[-1][1] / hf_runs[-1][0]:.1f} tok/s")
    eng_time, eng_out = min(eng_runs)
    hf_time, hf_out = min(hf_runs)

    cold, cached = [], []
    for r in range(args.ttft_repeats):
        base = make_prompts(2, vocab, seed=100 + r, min_len=1000, max_len=1000)
        engine.pool.reset_cache()
        cold.append(ttft(engine, base[0], f"cold{r}"))
        warm = base[0][:900] + base[1][:100]  # 90% shared with the prompt just computed
        cached.append(ttft(engine, warm, f"cached{r}"))

    eng_tps, hf_tps = eng_out / eng_time, hf_out / hf_time
    cold_ms, cached_ms = statistics.median(cold) * 1e3, statistics.median(cached) * 1e3
    lens = [len(p) for p in prompts]
    lines = [
        "# Engine benchmark",
        "",
        (f"Model `{path.name}`, {args.dtype}, device `{args.device}`, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs; "
        "shared with other processes while this ran, so absolute figures are noisy)."),
        "",
        "Reproduce: `python3 bench/engine_bench.py " + " ".join(sys.argv[1:]) + "`",
        "",
        (f"## Throughput: {len(prompts)} prompts (lengths {min(lens)}-{max(lens)}, mean {statistics.mean(lens):.0f}) "
        f"as one batch, {args.max_tokens} output tokens each"),
        "",
        "| engine | best wall s | output tokens | output tokens/s | all runs, s |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| mixroute engine | {eng_time:.2f} | {eng_out} | {eng_tps:.1f} | {', '.join(f'{t:.1f}' for t, _ in eng_runs)} |",
        f"| HF transformers generate | {hf_time:.2f} | {hf_out} | {hf_tps:.1f} | {', '.join(f'{t:.1f}' for t, _ in hf_runs)} |",
        "",
        f"Runs alternate engine / HF; best of {args.repeats} each.",
        "",
        f"Speedup: **{eng_tps / hf_tps:.2f}x** (goal >= 3x).",
        "",
        f"## TTFT of a 1,000-token prompt (median of {args.ttft_repeats})",
        "",
        "| case | TTFT ms |",
        "| --- | ---: |",
        f"| cold (empty prefix cache) | {cold_ms:.1f} |",
        f"| 90% prefix-cached (900 of 1,000 tokens) | {cached_ms:.1f} |",
        "",
        f"Cached / cold: **{cached_ms / cold_ms:.1%}** (goal <= 25%).",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
