"""Our own stack, started the same way as the peers: mocker workers (`mixroute worker
--engine mocker`) and, for our routers, `mixroute frontend`; everything on 127.0.0.1 with
a fresh file-discovery run directory, so every system starts with cold caches.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynamo import FleetSpec
from proc import ProcGroup, free_port, wait_for_http, wait_for_model

MIXROUTE = [sys.executable, "-m", "mixroute"]


def _worker_argv(
    model_dir: Path, model_name: str, fleet: FleetSpec, run_dir: Path, num_workers: int
) -> list[str]:
    return [
        *MIXROUTE, "worker", "--engine", "mocker",
        "--model", str(model_dir), "--served-model-name", model_name,
        "--num-workers", str(num_workers),
        "--block-size", str(fleet.block_size), "--num-blocks", str(fleet.num_blocks),
        "--max-num-seqs", str(fleet.max_num_seqs), "--max-num-batched-tokens", str(fleet.max_num_batched_tokens),
        "--max-model-len", str(fleet.max_model_len),
        "--speedup-ratio", str(fleet.speedup_ratio),
        "--discovery", f"file://{run_dir}", "--host", "127.0.0.1",
    ]  # fmt: skip


def _wait_log_lines(
    group: ProcGroup, log: Path, pattern: str, count: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        group.check_alive()
        if log.exists() and len(rx.findall(log.read_text(errors="replace"))) >= count:
            return
        time.sleep(0.3)
    raise TimeoutError(
        f"{group.name}: fewer than {count} {pattern!r} lines in {log} after {timeout_s}s"
    )


def start_frontend_stack(
    model_dir: Path,
    model_name: str,
    fleet: FleetSpec,
    log_dir: Path,
    router_mode: str,
    processes: int = 1,
) -> tuple[ProcGroup, int]:
    """N mockers in one worker process behind `mixroute frontend --router-mode MODE`
    (`--processes P` when `processes` > 1); returns the group and the frontend's port,
    picked just before the frontend starts (the workers bind random ports of their own)."""
    run_dir = Path(tempfile.mkdtemp(prefix="mixroute-bench-"))
    suffix = f"-{processes}p" if processes > 1 else ""
    group = ProcGroup(f"ours-{router_mode}{suffix}", log_dir)
    group.temp_dirs.append(run_dir)
    try:
        group.start(
            "worker", _worker_argv(model_dir, model_name, fleet, run_dir, fleet.num_workers)
        )
        _wait_log_lines(
            group, log_dir / f"{group.name}-worker.log", r"worker ready", fleet.num_workers, 120
        )
        port = free_port()
        group.start(
            "frontend",
            [
                *MIXROUTE, "frontend", "--host", "127.0.0.1", "--http-port", str(port),
                "--router-mode", router_mode, "--discovery", f"file://{run_dir}",
                "--processes", str(processes),
            ],
        )  # fmt: skip
        wait_for_model(group, f"http://127.0.0.1:{port}", model_name, timeout_s=120)
        _wait_log_lines(
            group, log_dir / f"{group.name}-frontend.log", r"frontend listening", processes, 120
        )
        time.sleep(2.0)  # let the frontend see every instance and subscribe to its events
    except BaseException:
        group.stop()
        raise
    return group, port


def start_http_workers(
    model_dir: Path, model_name: str, fleet: FleetSpec, log_dir: Path
) -> tuple[ProcGroup, list[str]]:
    """N single-mocker worker processes, each serving its own OpenAI API (for smg / vllm-router)."""
    run_dir = Path(tempfile.mkdtemp(prefix="mixroute-bench-"))
    group = ProcGroup("ours-http-workers", log_dir)
    group.temp_dirs.append(run_dir)
    urls = []
    try:
        for i in range(fleet.num_workers):
            # One at a time: a port picked while earlier workers are still starting (and
            # binding random ports of their own) can be taken before this one binds it;
            # the 08:10 run lost vllm-router-round_robin to exactly that (errno 98).
            port = free_port()
            argv = _worker_argv(model_dir, model_name, fleet, run_dir, 1) + [
                "--http-port",
                str(port),
            ]
            group.start(f"w{i}", argv)
            urls.append(f"http://127.0.0.1:{port}")
            wait_for_model(group, urls[-1], model_name, timeout_s=180)
    except BaseException:
        group.stop()
        raise
    return group, urls


def start_probe_worker(
    model_dir: Path, model_name: str, fleet: FleetSpec, log_dir: Path
) -> tuple[ProcGroup, str]:
    """One mocker worker serving its own OpenAI API, registered where no router looks: the
    'direct' baseline of the overhead probe for systems whose workers have no HTTP API."""
    run_dir = Path(tempfile.mkdtemp(prefix="mixroute-bench-probe-"))
    group = ProcGroup("probe-worker", log_dir)
    group.temp_dirs.append(run_dir)
    try:
        port = free_port()
        group.start("w0", _worker_argv(model_dir, model_name, fleet, run_dir, 1) + ["--http-port", str(port)])
        url = f"http://127.0.0.1:{port}"
        wait_for_model(group, url, model_name, timeout_s=180)
    except BaseException:
        group.stop()
        raise
    return group, url


def wait_healthy(group: ProcGroup, url: str) -> None:
    wait_for_http(group, url, timeout_s=60)
