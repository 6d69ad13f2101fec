"""Real `mixroute` processes for the frontend/worker integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_S = 150.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start(name: str, args: list[str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    env = dict(os.environ, MIXROUTE_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log_path, "wb") as out:
        popen = subprocess.Popen([sys.executable, "-m", "mixroute", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    return Proc(name, popen, log_path)


def wait_until(check: Callable[[], bool], what: str, procs: list[Proc], timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if p.popen.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n{p.log()[-3000:]}")
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


# Loopback traffic must not go through an HTTP_PROXY a CI host may set.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> tuple[int, str]:
    try:
        with _opener.open(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def http_post(url: str, body: bytes | dict[str, object]) -> tuple[int, dict[str, object]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with _opener.open(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def models_listed(base_url: str, model: str) -> Callable[[], bool]:
    def check() -> bool:
        status, text = http_get(f"{base_url}/v1/models")
        return status == 200 and f'"{model}"' in text

    return check


DECISION = re.compile(r"pool=(\w+) request_id=(\S+) worker_id=([0-9a-f]+) cached blocks: (\d+)")


def decisions(proc: Proc, pool: str = "backend") -> dict[str, tuple[str, int]]:
    """request_id -> (worker_id, cached blocks) from a frontend's log."""
    return {m[2]: (m[3], int(m[4])) for m in DECISION.finditer(proc.log()) if m[1] == pool}


def kv_event_batches(proc_url: str) -> float:
    """KV event batches a frontend has received so far (from its /metrics)."""
    status, text = http_get(f"{proc_url}/metrics")
    assert status == 200, text
    return metric(text, "mixroute_frontend_kv_event_batches_total")


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m is not None, f"{name} not in metrics"
    return float(m.group(1))
