"""NVIDIA Dynamo 1.6.1: its frontend (`--router-mode kv|round-robin|random`) in front of its
own mocker (`--num-workers N`, same timing model and sizes as ours), file discovery,
ZeroMQ events, TCP request plane, everything bound to 127.0.0.1.

    python bench/peers/dynamo.py --model-dir .cache/bench/model --port 8100   # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc import ProcGroup, venv_bin, wait_for_model


@dataclass(slots=True, frozen=True)
class FleetSpec:
    """The simulated fleet, identical for our mocker and Dynamo's."""

    num_workers: int = 8
    num_blocks: int = 4096
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    speedup_ratio: float = 1.0
    max_model_len: int = 16384


def start(
    model_dir: Path,
    model_name: str,
    fleet: FleetSpec,
    port: int,
    log_dir: Path,
    router_mode: str = "kv",
) -> ProcGroup:
    py = venv_bin("dynamo", "python")
    run_dir = Path(tempfile.mkdtemp(prefix="dynamo-kv-"))
    env = {
        "DYN_FILE_KV": str(run_dir),
        "DYN_TCP_RPC_HOST": "127.0.0.1",
        "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
        "DYN_EVENT_PLANE_HOST": "127.0.0.1",
        "DYN_SYSTEM_HOST": "127.0.0.1",
        "DYN_LOG": "warn",
    }
    common = ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]
    group = ProcGroup(f"dynamo-{router_mode}", log_dir)
    group.temp_dirs.append(run_dir)
    try:
        group.start(
            "mocker",
            [
                py, "-m", "dynamo.mocker",
                "--model-path", model_dir, "--model-name", model_name,
                "--num-workers", fleet.num_workers,
                "--num-gpu-blocks-override", fleet.num_blocks,
                "--block-size", fleet.block_size,
                "--max-num-seqs", fleet.max_num_seqs,
                "--max-num-batched-tokens", fleet.max_num_batched_tokens,
                "--max-model-len", fleet.max_model_len,
                "--speedup-ratio", fleet.speedup_ratio,
                "--enable-prefix-caching",
                *common,
            ],
            env,
        )  # fmt: skip
        group.start(
            "frontend",
            [
                py, "-m", "dynamo.frontend",
                "--http-host", "127.0.0.1", "--http-port", port,
                "--router-mode", router_mode,
                "--kv-cache-block-size", fleet.block_size,
                *common,
            ],
            env,
        )  # fmt: skip
        wait_for_model(group, f"http://127.0.0.1:{port}", model_name, timeout_s=180)
    except BaseException:
        group.stop()
        raise
    return group


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--model-name", default="bench")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--router-mode", default="kv")
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--num-blocks", type=int, default=4096)
    p.add_argument("--speedup-ratio", type=float, default=1.0)
    p.add_argument("--log-dir", type=Path, default=Path(".cache/bench/logs"))
    a = p.parse_args()
    fleet = FleetSpec(
        num_workers=a.num_workers, num_blocks=a.num_blocks, speedup_ratio=a.speedup_ratio
    )
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    group = start(a.model_dir, a.model_name, fleet, a.port, a.log_dir, a.router_mode)
    print(
        f"dynamo ({a.router_mode}) serving {a.model_name} at http://127.0.0.1:{a.port}; Ctrl-C stops it"
    )
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        group.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
