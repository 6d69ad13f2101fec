"""Drive a running OpenAI endpoint with NVIDIA's `aiperf` (an independent client) on the
same prompts as our runner, and read back its summary.

    python bench/peers/aiperf_client.py --url http://127.0.0.1:8000 --model bench \
        --tokenizer .cache/bench/model --num-requests 256 --concurrency 32 --out-dir /tmp/aiperf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proc import venv_bin
from workloads import Workload, prompt_text, workload_a


def write_dataset(workload: Workload, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for req in workload.requests():
            f.write(
                json.dumps({"text": prompt_text(req.token_ids), "output_length": req.max_tokens})
                + "\n"
            )
    return path


def run(
    url: str,
    model: str,
    tokenizer_dir: Path,
    workload: Workload,
    concurrency: int,
    out_dir: Path,
    timeout_s: float = 900.0,
) -> dict[str, float]:
    dataset = write_dataset(workload, out_dir / "dataset.jsonl")
    argv = [
        str(venv_bin("aiperf", "aiperf")), "profile",
        "--url", url, "--model", model,
        "--endpoint-type", "completions", "--streaming",
        "--custom-dataset-type", "single_turn", "--input-file", str(dataset),
        "--dataset-sampling-strategy", "sequential",
        "--request-count", str(workload.num_requests),
        "--concurrency", str(concurrency),
        "--tokenizer", str(tokenizer_dir),
        "--extra-inputs", json.dumps({"ignore_eos": True, "stream_options": {"include_usage": True}}),
        "--no-gpu-telemetry", "--no-server-metrics", "--ui", "none",
        "--artifact-dir", str(out_dir / "artifacts"),
    ]  # fmt: skip
    env = {
        k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"
    }  # it breaks local tokenizer paths
    with open(out_dir / "aiperf.log", "wb") as log:
        subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=True
        )
    return summary(out_dir / "artifacts")


def summary(artifact_dir: Path) -> dict[str, float]:
    """TTFT / ITL percentiles (ms) and request throughput from aiperf's JSON export."""
    files = sorted(artifact_dir.rglob("profile_export_aiperf.json"))
    if not files:
        raise FileNotFoundError(f"no profile_export_aiperf.json under {artifact_dir}")
    data = json.loads(files[-1].read_text())
    out: dict[str, float] = {}
    for metric, key in (
        ("time_to_first_token", "ttft"),
        ("inter_token_latency", "itl"),
        ("request_latency", "e2e"),
    ):
        m = data.get(metric) or {}
        for stat in ("p50", "p90", "p99", "avg"):
            if stat in m:
                out[f"{key}_{stat}_ms"] = float(m[stat])
    for metric in (
        "request_throughput",
        "output_token_throughput",
        "request_count",
        "error_request_count",
    ):
        m = data.get(metric)
        if isinstance(m, dict) and "avg" in m:
            out[metric] = float(m["avg"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out-dir", type=Path, required=True)
    a = p.parse_args()
    result = run(
        a.url, a.model, a.tokenizer.resolve(), workload_a(a.num_requests), a.concurrency, a.out_dir
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
