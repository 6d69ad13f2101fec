"""smg (the SGLang model gateway) and vllm-router in front of our workers' own OpenAI
HTTP endpoints (`mixroute worker --http-port`), bound to 127.0.0.1.

    python bench/peers/http_routers.py smg --policy cache_aware --port 8200 \
        --tokenizer .cache/bench/model --worker-url http://127.0.0.1:9001 ...   # Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc import ProcGroup, free_port, venv_bin, wait_for_http

ROUTERS = ("smg", "vllm-router")
POLICIES = ("cache_aware", "round_robin", "random")


def argv_for(
    router: str, policy: str, port: int, worker_urls: list[str], tokenizer_dir: Path
) -> list[str]:
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; choose one of {ROUTERS}")
    common = [
        "--host", "127.0.0.1", "--port", str(port),
        "--policy", policy,
        "--worker-urls", *worker_urls,
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    if router == "smg":
        return [
            str(venv_bin("smg", "smg")), "launch", *common,
            "--tokenizer-path", str(tokenizer_dir), "--model-path", str(tokenizer_dir),
            "--log-level", "warn",
        ]  # fmt: skip
    return [str(venv_bin("vllm-router", "vllm-router")), *common, "--log-level", "warning"]


def start(
    router: str, policy: str, port: int, worker_urls: list[str], tokenizer_dir: Path, log_dir: Path
) -> ProcGroup:
    group = ProcGroup(f"{router}-{policy}", log_dir)
    try:
        group.start("router", argv_for(router, policy, port, worker_urls, tokenizer_dir))
        wait_for_http(group, f"http://127.0.0.1:{port}/v1/models", timeout_s=120)
    except BaseException:
        group.stop()
        raise
    return group


def start_on_free_port(
    router: str, policy: str, worker_urls: list[str], tokenizer_dir: Path, log_dir: Path, attempts: int = 3
) -> tuple[ProcGroup, int]:
    """`start` on a port picked just before the router binds it, again on a new port if the
    router exits at start (another process took the port in between: workers bind random
    ports while they start, so a port picked earlier can be gone)."""
    for attempt in range(attempts):
        port = free_port()
        try:
            return start(router, policy, port, worker_urls, tokenizer_dir, log_dir), port
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("router", choices=ROUTERS)
    p.add_argument("--policy", choices=POLICIES, default="cache_aware")
    p.add_argument("--port", type=int, default=8200)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--worker-url", action="append", required=True)
    p.add_argument("--log-dir", type=Path, default=Path(".cache/bench/logs"))
    a = p.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    group = start(a.router, a.policy, a.port, a.worker_url, a.tokenizer, a.log_dir)
    print(f"{a.router} ({a.policy}) at http://127.0.0.1:{a.port}; Ctrl-C stops it")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        group.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
