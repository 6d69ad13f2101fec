"""Tensor parallel vs one process: decode tokens/s of a small random Llama on this machine.

Builds a random-weight Llama (offline), runs the same batch with tensor_parallel_size 1
and N, checks the greedy tokens agree, and times the decode phase (after every prompt
has its first token). Appends nothing: prints a Markdown table to paste into
bench/results/engine.md.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.protocol.messages import GenerateRequest, SamplingParams
from mixroute.testing.tiny_model import build_tiny_model


def run(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], int, float]:
    for i, prompt in enumerate(prompts):
        sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        engine.add_request(GenerateRequest(request_id=str(i), token_ids=prompt, sampling=sampling))
    tokens: list[list[int]] = [[] for _ in prompts]
    decode_tokens, start = 0, 0.0
    while engine.has_work:
        frames = engine.step()
        for request_id, frame in frames:
            tokens[int(request_id)].extend(frame.token_ids)
        if start:
            decode_tokens += sum(len(f.token_ids) for _, f in frames)
        elif all(tokens):
            start = time.perf_counter()
    return tokens, decode_tokens, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "llama", "llama", hidden_size=args.hidden_size, num_layers=args.layers,
                                num_heads=8, num_kv_heads=4, intermediate_size=4 * args.hidden_size)
        rng = random.Random(0)
        prompts = [[rng.randrange(3, 440) for _ in range(rng.randrange(8, 120))] for _ in range(args.batch)]
        results: dict[int, list[float]] = {}
        outputs: dict[int, list[list[int]]] = {}
        engines = {size: LLMEngine(EngineConfig(model_path=str(path), num_blocks=256, tensor_parallel_size=size))
                   for size in (1, args.tp)}
        try:
            for _ in range(args.repeats):  # alternate, so both see similar machine load
                for size, engine in engines.items():
                    outputs[size], n, wall = run(engine, prompts, args.max_tokens)
                    results.setdefault(size, []).append(n / wall)
        finally:
            for engine in engines.values():
                engine.close()
    same = outputs[1] == outputs[args.tp]
    print(f"model: random Llama hidden {args.hidden_size}, {args.layers} layers, 8 heads / 4 kv heads, float32, cpu, "
          f"threads {args.threads} per rank; batch {args.batch} x {args.max_tokens} tokens; greedy tokens identical: {same}")
    print("| tensor_parallel_size | decode tokens/s (best) | all runs |")
    print("| ---: | ---: | --- |")
    for size, rates in results.items():
        print(f"| {size} | {max(rates):.1f} | {', '.join(f'{r:.1f}' for r in rates)} |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
