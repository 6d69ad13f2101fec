#!/usr/bin/env python3
"""Where a tensor-parallel decode step's time goes, seen from rank 0's CPU (needs 2 GPUs).

    python3 bench/tp_step_profile.py [--batch 8] [--dtype float32] [--work /tmp/mg]

Runs the TinyLlama-shaped random model of bench/multi_gpu.py at TP=1 and TP=2 and prints,
per decode step (medians): the step's wall time (synchronized), the CPU time rank 0 spends
inside the model's forward call (launching kernels), the time to send the step to the
helper ranks, and the number and CPU cost of the all-reduce calls. When the forward's CPU
time is close to the step time, the step is bound by kernel launches, not by the GPU.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import multi_gpu
import torch

from mixroute.engine import parallel
from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.protocol.messages import GenerateRequest, SamplingParams

TIMES: dict[str, list[float]] = {"all_reduce": [], "send": [], "forward": []}


def _timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[key].append(time.perf_counter() - start)

    return wrapper


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3 if values else float("nan")


def profile(path: Path, tp: int, batch: int, dtype: str, max_tokens: int) -> str:
    engine = LLMEngine(EngineConfig(model_path=str(path), device="cuda", dtype=dtype, num_blocks=4096,
                                    max_num_seqs=batch, tensor_parallel_size=tp, max_model_len=2048))
    try:
        rng = random.Random(0)
        prompts = [[rng.randrange(3, 32000) for _ in range(128)] for _ in range(batch)]
        multi_gpu.run_decode(engine, prompts, 8, "w")  # warm-up
        model = engine.runner.model
        model.forward = _timed("forward", model.forward)  # type: ignore[method-assign]
        for values in TIMES.values():
            values.clear()
        for i, prompt in enumerate(prompts):
            sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
            engine.add_request(GenerateRequest(request_id=f"b{i}", token_ids=prompt, sampling=sampling))
        steps = []
        while engine.has_work:
            start = time.perf_counter()
            engine.step()
            torch.cuda.synchronize()
            steps.append(time.perf_counter() - start)
        n = max(len(TIMES["forward"]), 1)
        return (f"| {tp} | {batch} | {_ms(steps[2:]):.2f} | {_ms(TIMES['forward'][2:]):.2f} | {_ms(TIMES['send'][2:]):.3f} | "
                f"{len(TIMES['all_reduce']) / n:.0f} | {_ms(TIMES['all_reduce']) * 1e3:.0f} | "
                f"{sum(TIMES['all_reduce']) / n * 1e3:.2f} |")
    finally:
        engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--work", default="/tmp/mg")
    args = parser.parse_args()
    if torch.cuda.device_count() < 2:
        print("needs 2 GPUs", file=sys.stderr)
        return 2
    parallel.TensorParallel.all_reduce = _timed("all_reduce", parallel.TensorParallel.all_reduce)  # type: ignore[method-assign]
    parallel.TensorParallelGroup.send_step = _timed("send", parallel.TensorParallelGroup.send_step)  # type: ignore[method-assign]
    path = multi_gpu.build_model(Path(args.work) / "tinyllama-v32000", 32000)
    print("| TP | batch | step ms | rank-0 forward CPU ms | send to helpers ms | all-reduces per step | CPU us per all-reduce | all-reduce CPU ms per step |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tp in (1, 2):
        print(profile(path, tp, args.batch, args.dtype, args.max_tokens), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
