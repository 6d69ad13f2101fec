"""Multi-GPU benchmark (2 GPUs of one host): disaggregated vs aggregated serving, KV
transfer bandwidth, tensor parallelism. Writes Markdown sections that
bench/results/multi-gpu.md is assembled from.

    python3 bench/multi_gpu.py tp       --out tp.md        # (c) TP=2 vs TP=1 decode tokens/s
    python3 bench/multi_gpu.py transfer --out transfer.md  # (b) link vs direct vs host-staged copy
    python3 bench/multi_gpu.py serve    --out serve.md     # (a) 1P+1D vs 2 aggregated, mixed workload

Models are random-weight Llamas with TinyLlama-1.1B's shapes (hidden 2048, 22 layers,
32 heads / 4 kv heads, intermediate 5632), built on the GPU, bf16, no downloads: vocab
32,000 for `tp`; for `serve` the vocab is the test tokenizer's 512 tokens, so every
generated id detokenizes (the frontend streams text).

(a) `serve` starts real processes (frontend `--router-mode kv`, workers on cuda:0 and
cuda:1, file discovery, ZeroMQ events) three times: 1 prefill + 1 decode with the direct
KV path (`--kv-transport auto`), the same with host-staged KV (`--kv-transport host`), and
2 aggregated workers. The workload interleaves long prompts with short outputs and short
prompts with long outputs, sent open-loop at a fixed rate; ITL is the gap between
consecutive streamed chunks (one token each, except the rare generated special token,
which has no text and merges into the next chunk). The decode worker's
`mixroute_worker_kv_import_{bytes,seconds}_total` give the per-request KV pull rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

import itertools

import torch

TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}


def build_model(path: Path, vocab_size: int | None, seed: int = 0) -> Path:
    """TinyLlama-1.1B-shaped random weights (bf16), generated on cuda:0, plus the test tokenizer."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixroute.testing.tiny_model import build_tokenizer

    if (path / "model.safetensors").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    config = LlamaConfig(vocab_size=vocab_size or len(tokenizer), tie_word_embeddings=False, rope_theta=10000.0,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         **TINYLLAMA)
    config.save_pretrained(path)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator(device="cuda:0").manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            # std 0.05 rather than 0.02: less uniform logits, so greedy picks are not ties.
            state[name] = (torch.randn(shape, device="cuda:0", generator=gen) * 0.05).to(torch.bfloat16).cpu()
    save_file(state, str(path / "model.safetensors"))
    return path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _device_line() -> str:
    if not torch.cuda.is_available():
        return "devices: cpu (smoke run)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    p2p = torch.cuda.device_count() > 1 and torch.cuda.can_device_access_peer(0, 1)
    return f"devices: {', '.join(names)}; peer access 0<->1: {p2p}; torch {torch.__version__}"


# ---- (c) tensor parallelism ----


def run_decode(engine: Any, prompts: list[list[int]], max_tokens: int, tag: str) -> tuple[list[list[int]], int, float]:
    from mixroute.protocol.messages import GenerateRequest, SamplingParams

    for i, prompt in enumerate(prompts):
        sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        engine.add_request(GenerateRequest(request_id=f"{tag}{i}", token_ids=prompt, sampling=sampling))
    tokens: list[list[int]] = [[] for _ in prompts]
    decode_tokens, start = 0, 0.0
    while engine.has_work:
        frames = engine.step()
        for request_id, frame in frames:
            tokens[int(request_id[len(tag):])].extend(frame.token_ids)
        if start:
            decode_tokens += sum(len(f.token_ids) for _, f in frames)
        elif all(tokens):
            torch.cuda.synchronize()
            start = time.perf_counter()
    torch.cuda.synchronize()
    return tokens, decode_tokens, time.perf_counter() - start


def bench_tp(args: argparse.Namespace) -> str:
    from mixroute.engine.config import EngineConfig
    from mixroute.engine.llm_engine import LLMEngine

    path = build_model(Path(args.work) / "tinyllama-v32000", 32000)
    rng = random.Random(0)
    batches = [int(b) for b in args.batches.split(",")]
    prompts = [[rng.randrange(3, 32000) for _ in range(args.prompt_len)] for _ in range(max(batches))]
    rows: dict[int, dict[int, float]] = {}
    outputs: dict[int, dict[int, list[list[int]]]] = {}
    sizes = (1, 2) if torch.cuda.device_count() >= 2 else (1,)  # NCCL needs one GPU per rank
    for tp in sizes:
        engine = LLMEngine(EngineConfig(model_path=str(path), device="cuda", dtype=args.dtype, num_blocks=8192,
                                        enforce_eager=args.enforce_eager,
                                        max_num_seqs=max(batches), tensor_parallel_size=tp, max_model_len=2048))
        try:
            run_decode(engine, prompts[:4], 16, "w")  # warm-up: Triton compile, NCCL init
            for batch in batches:  # and capture each batch size's CUDA graph outside the timing
                run_decode(engine, prompts[:batch], 3, f"g{batch}-")
            for batch in batches:
                outputs.setdefault(tp, {})[batch], n, wall = run_decode(engine, prompts[:batch], args.max_tokens, "b")
                rows.setdefault(tp, {})[batch] = n / wall
                print(f"tp={tp} batch={batch}: {n / wall:.1f} decode tok/s", flush=True)
        finally:
            engine.close()
    graphs = "eager" if args.enforce_eager else "CUDA graphs for TP=1 decode steps"
    lines = [(f"model: TinyLlama-1.1B shapes, random weights, vocab 32000, {args.dtype}, {graphs}; prompts {args.prompt_len} tokens, "
             f"{args.max_tokens} tokens decoded each (ignore_eos); decode phase only; {_device_line()}"), "",
             "| batch | TP=1 decode tok/s | TP=2 decode tok/s | TP=2 / TP=1 | greedy tokens equal to TP=1 |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for batch in batches:
        if 2 not in rows:
            lines.append(f"| {batch} | {rows[1][batch]:.0f} | not run (one GPU) | - | - |")
            continue
        a, b = outputs[1][batch], outputs[2][batch]
        same = sum(x == y for x, y in zip(a, b, strict=True))
        first_diff = [next((i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q), len(x)) for x, y in zip(a, b, strict=True)]
        lines.append(f"| {batch} | {rows[1][batch]:.0f} | {rows[2][batch]:.0f} | {rows[2][batch] / rows[1][batch]:.2f} | "
                     f"{same}/{batch} sequences (median first difference at token {statistics.median(first_diff):.0f}) |")
    return "\n".join(lines)


# ---- (b) transfer bandwidth ----


def _share_child(num_blocks: int, conn: Any) -> None:
    """A prefill-like process: a KV cache on cuda:0 with TinyLlama's layout, shared once."""
    from mixroute.engine.kv_transfer.shared_kv import SharedKvTensors
    from mixroute.protocol.messages import encode

    torch.cuda.set_device(0)
    kv = SharedKvTensors(22, num_blocks, 16, 4, 64, torch.bfloat16, torch.device("cuda", 0))
    kv.buffer.normal_()
    torch.cuda.synchronize()
    conn.send(encode(kv.share("bench")))
    conn.recv()


def _time_cuda(fn: Any, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _link_bandwidth(dst: torch.device, nbytes: int = 1 << 30) -> tuple[float, float]:
    """GB/s of one plain device-to-device copy of a contiguous buffer, both directions."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0").random_()
    b = torch.empty(nbytes, dtype=torch.uint8, device=dst)
    forward = nbytes / _time_cuda(lambda: b.copy_(a), 10) / 1e9
    backward = nbytes / _time_cuda(lambda: a.copy_(b), 10) / 1e9
    return forward, backward


def _transfer_rows(peer: Any, local: Any, source: Any, dst: torch.device, num_blocks: int) -> list[str]:
    from mixroute.engine.kv_cache.kv_tensors import KvTensors

    rows = []
    rng = random.Random(0)
    for tokens in (256, 1024, 2048, 8192, 32768):
        ids = rng.sample(range(num_blocks), tokens // 16)
        size = len(ids) * KvTensors.bytes_per_block(22, 16, 4, 64, torch.bfloat16)
        direct = _time_cuda(lambda ids=ids: peer.copy_blocks(ids, dst), 10)
        staged = _time_cuda(lambda ids=ids: local.import_blocks(ids, source.export_blocks(ids)), 3)
        rows.append(f"| {tokens} | {len(ids)} | {size / 1e6:.1f} | {direct * 1e3:.2f} | {size / direct / 1e9:.1f} | "
                    f"{staged * 1e3:.1f} | {size / staged / 1e9:.2f} |")
        print(rows[-1], flush=True)
    return rows


def bench_transfer(args: argparse.Namespace) -> str:
    import multiprocessing as mp

    from mixroute.engine.kv_cache.kv_tensors import KvTensors
    from mixroute.engine.kv_transfer.peer_kv import PeerKv
    from mixroute.protocol.messages import KvShareInfo, decoder

    dst = torch.device("cuda", 1 if torch.cuda.device_count() > 1 else 0)
    lines = [_device_line(), ""]
    link, back = _link_bandwidth(dst)
    lines += [f"link (torch `copy_` of 1 GiB, cuda:0 -> {dst}): **{link:.1f} GB/s** (reverse {back:.1f} GB/s)"
              + (" (one GPU: an on-device copy, each byte read and written on the same HBM)" if dst.index == 0 else ""), ""]
    num_blocks = 8192
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_share_child, args=(num_blocks, theirs))
    child.start()
    rows = []
    try:
        peer = PeerKv(decoder(KvShareInfo).decode(ours.recv()))
        local = KvTensors(22, num_blocks, 16, 4, 64, torch.bfloat16, dst)
        # Host-staged without the network: GPU -> host bytes -> GPU (what kv_export and the
        # importer do around the request plane), reading the same mapped cache.
        source = KvTensors(22, 1, 16, 4, 64, torch.bfloat16, torch.device("meta"))
        source.layers = [(peer.tensor[i, 0], peer.tensor[i, 1]) for i in range(22)]
        rows = _transfer_rows(peer, local, source, dst, num_blocks)
        del peer, source
    finally:
        ours.send(b"stop")
        child.join(30)
    lines += [("Direct path (`PeerKv.copy_blocks`: gather of random block ids on cuda:0 through the CUDA IPC "
              "mapping, one copy to the other GPU, synchronize) vs host-staged without the network "
              "(`export_blocks` to host bytes + `import_blocks`), TinyLlama layout (22 layers, 4 kv heads x 64, "
              "bf16, 16-token blocks: 352 KiB per block), median of 10 (direct) / 3 (staged):"), "",
              "| prompt tokens | blocks | MB | direct ms | direct GB/s | staged ms | staged GB/s |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows]
    return "\n".join(lines)


# ---- (a) serving ----


def _start(name: str, cli: list[str], work: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MIXROUTE_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1", **(env_extra or {}))
    with open(work / f"{name}.log", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "mixroute", *cli], stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], frontend_log: Path, need_prefill: bool,
                timeout_s: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            listed = '"model"' in httpx.get(f"{url}/v1/models", timeout=2).text
        except httpx.HTTPError:
            listed = False
        if listed and (not need_prefill or "component=prefill" in frontend_log.read_text(errors="replace")):
            return
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process exited during startup; logs in {frontend_log.parent}")
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready in time; logs in {frontend_log.parent}")


def workload(args: argparse.Namespace, vocab_size: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    out = []
    for i in range(args.requests):
        is_long = i % 2 == 0
        n, max_tokens = (args.long_prompt, args.long_prompt_output) if is_long else (args.short_prompt, args.short_prompt_output)
        out.append({"kind": "long-prompt" if is_long else "long-output",
                    "body": {"model": "model", "prompt": [rng.randrange(3, vocab_size) for _ in range(n)],
                             "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}})
    return out


async def _send_all(url: str, requests: list[dict[str, Any]], rate: float) -> list[dict[str, Any]]:
    import httpx

    async def one(client: httpx.AsyncClient, req: dict[str, Any], delay: float) -> dict[str, Any]:
        await asyncio.sleep(delay)
        sent = time.perf_counter()
        stamps: list[float] = []
        async with client.stream("POST", f"{url}/v1/completions", json=req["body"]) as r:
            if r.status_code != 200:
                raise SystemExit(f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:500]}")
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    stamps.append(time.perf_counter())
        return {"kind": req["kind"], "sent": sent, "stamps": stamps}

    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        return await asyncio.gather(*(one(client, r, i / rate) for i, r in enumerate(requests)))


def _metrics(url: str) -> dict[str, float]:
    import httpx

    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(("mixroute_worker_kv_import", "mixroute_worker_generate_requests_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def serve_one(args: argparse.Namespace, model: Path, mode: str) -> dict[str, Any]:
    from mixroute.runtime.infra import free_port

    work = Path(tempfile.mkdtemp(prefix=f"mgpu-{mode}-", dir=args.work))
    runtime = ["--discovery", f"file://{work}/run", "--namespace", "mgpu"]
    if args.smoke:  # the harness on a CPU: tiny model, both "GPUs" are the CPU
        worker = ["worker", "--model", str(model), "--served-model-name", "model", "--num-blocks", "512", *runtime]
        gpus = ("cpu", "cpu")
    else:
        # A fixed cache (16,384 blocks = 262k tokens, 3 GB) rather than a share of free
        # memory: two workers starting at once on one GPU would each see it all free.
        worker = ["worker", "--model", str(model), "--served-model-name", "model", "--dtype", "bfloat16",
                  "--max-model-len", "2048", "--num-blocks", "16384", *runtime]
        gpus = ("cuda:0", "cuda:1") if torch.cuda.device_count() > 1 else ("cuda:0", "cuda:0")
    port, http0, http1 = free_port(), free_port(), free_port()
    if mode == "agg":
        specs = [("worker0", [*worker, "--device", gpus[0], "--http-port", str(http0)]),
                 ("worker1", [*worker, "--device", gpus[1], "--http-port", str(http1)])]
        frontend = ["frontend", "--http-port", str(port), "--router-mode", "kv", *runtime]
    else:
        transport = "auto" if mode == "disagg-direct" else "host"
        specs = [("prefill", [*worker, "--device", gpus[0], "--is-prefill-worker", "--kv-transport", transport]),
                 ("decode", [*worker, "--device", gpus[1], "--worker-type", "decode", "--http-port", str(http1),
                             "--kv-transport", transport])]
        frontend = ["frontend", "--http-port", str(port), "--router-mode", "kv",
                    "--disagg-min-prompt-tokens", str(args.disagg_min_prompt_tokens), *runtime]
    procs = [_start(name, cli, work) for name, cli in specs]
    procs.append(_start("frontend", frontend, work))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, procs, work / "frontend.log", need_prefill=mode != "agg")
        vocab_size = json.loads((model / "config.json").read_text())["vocab_size"]
        warm = workload(argparse.Namespace(**{**vars(args), "requests": 4}), vocab_size)
        asyncio.run(_send_all(url, warm, rate=100.0))  # Triton compile, CUDA IPC mapping
        before = _metrics(f"http://127.0.0.1:{http1}")
        started = time.perf_counter()
        results = asyncio.run(_send_all(url, workload(args, vocab_size), args.rate))
        wall = time.perf_counter() - started
        after = _metrics(f"http://127.0.0.1:{http1}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return {"mode": mode, "results": results, "wall": wall, "metrics": delta, "logs": str(work)}


def _summarize(run: dict[str, Any]) -> dict[str, Any]:
    itl: dict[str, list[float]] = {"all": [], "long-prompt": [], "long-output": []}
    ttft: dict[str, list[float]] = {"long-prompt": [], "long-output": []}
    tokens = 0
    for r in run["results"]:
        s = r["stamps"]
        tokens += len(s)
        ttft[r["kind"]].append(s[0] - r["sent"])
        gaps = [b - a for a, b in itertools.pairwise(s)]
        itl["all"] += gaps
        itl[r["kind"]] += gaps
    m = run["metrics"]
    out = {"mode": run["mode"], "tok_s": tokens / run["wall"], "req_s": len(run["results"]) / run["wall"],
           "itl_p50": _pct(itl["all"], 0.5) * 1e3, "itl_p99": _pct(itl["all"], 0.99) * 1e3,
           "itl_lo_p50": _pct(itl["long-output"], 0.5) * 1e3, "itl_lo_p99": _pct(itl["long-output"], 0.99) * 1e3,
           "ttft_lp_p50": _pct(ttft["long-prompt"], 0.5) * 1e3, "ttft_lo_p50": _pct(ttft["long-output"], 0.5) * 1e3}
    for transport in ("direct", "host"):
        n = m.get(f'mixroute_worker_kv_imports_total{{transport="{transport}"}}', 0.0)
        if n:
            nbytes = m[f'mixroute_worker_kv_import_bytes_total{{transport="{transport}"}}']
            secs = m[f'mixroute_worker_kv_import_seconds_total{{transport="{transport}"}}']
            out[f"kv_{transport}"] = (int(n), nbytes / n / 1e6, secs / n * 1e3, nbytes / secs / 1e9)
    return out


def bench_serve(args: argparse.Namespace) -> str:
    if args.smoke:
        from mixroute.testing.tiny_model import build_tiny_model

        model = build_tiny_model(Path(args.work) / "tiny-smoke", max_position_embeddings=4096)
    else:
        model = build_model(Path(args.work) / "tinyllama-v512", None)
    summaries = []
    for mode in args.modes.split(","):
        run = serve_one(args, model, mode)
        summaries.append(_summarize(run))
        print(json.dumps(summaries[-1]), flush=True)
    lines = [
        f"{_device_line()}",
        (f"workload: {args.requests} requests sent open-loop at {args.rate} req/s, alternating long-prompt "
        f"({args.long_prompt} prompt tokens -> {args.long_prompt_output} output tokens) and long-output "
        f"({args.short_prompt} -> {args.short_prompt_output}); random token ids (no prefix reuse), ignore_eos; "
        f"TinyLlama-1.1B-shaped random weights (vocab 512), bf16; disaggregated mode sends prompts of >= "
        f"{args.disagg_min_prompt_tokens} tokens through the prefill worker, shorter ones run on the decode worker."),
        "",
        ("| setup | output tok/s | req/s | ITL p50 ms | ITL p99 ms | ITL p50 / p99 ms (long-output requests) | "
        "TTFT p50 ms long-prompt / long-output |"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"agg": "2 aggregated workers (kv router)", "disagg-direct": "1 prefill + 1 decode, direct KV (IPC)",
             "disagg-host": "1 prefill + 1 decode, host-staged KV"}
    for s in summaries:
        lines.append(f"| {names[s['mode']]} | {s['tok_s']:.0f} | {s['req_s']:.2f} | {s['itl_p50']:.1f} | "
                     f"{s['itl_p99']:.1f} | {s['itl_lo_p50']:.1f} / {s['itl_lo_p99']:.1f} | "
                     f"{s['ttft_lp_p50']:.0f} / {s['ttft_lo_p50']:.0f} |")
    lines += ["", ("KV pulls measured by the decode worker (request sent to data on its GPU, excluding the scatter "
              "into its blocks):"), "", "| setup | transport | pulls | MB per pull | ms per pull | GB/s |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        for transport in ("direct", "host"):
            if f"kv_{transport}" in s:
                n, mb, ms, gbs = s[f"kv_{transport}"]
                lines.append(f"| {names[s['mode']]} | {transport} | {n} | {mb:.1f} | {ms:.2f} | {gbs:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["tp", "transfer", "serve"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", default=tempfile.gettempdir())
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--enforce-eager", action="store_true", help="tp: no CUDA graphs")
    parser.add_argument("--dtype", default="bfloat16", help="tp: the engines' dtype (float32 to check TP=2 against TP=1 token for token)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--modes", default="disagg-direct,disagg-host,agg")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--long-prompt", type=int, default=1536)
    parser.add_argument("--long-prompt-output", type=int, default=16)
    parser.add_argument("--short-prompt", type=int, default=64)
    parser.add_argument("--short-prompt-output", type=int, default=256)
    parser.add_argument("--disagg-min-prompt-tokens", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="serve: tiny model on the CPU (checks the harness)")
    args = parser.parse_args()
    text = {"tp": bench_tp, "transfer": bench_transfer, "serve": bench_serve}[args.part](args)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
