"""Starting and stopping the benchmark's server processes.

Every process runs in its own session (process group), logs to a file, and is stopped by
signalling that group: first SIGTERM, then SIGKILL after a grace period. Nothing here
ever signals a process it did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = ROOT / ".cache" / "peers"


def venv_bin(name: str, exe: str) -> Path:
    """Path of `exe` in the peer virtualenv `name` (installed by bench/peers/install.sh)."""
    path = PEERS_DIR / name / "bin" / exe
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `bash bench/peers/install.sh {name}` first")
    return path


def is_installed(name: str) -> bool:
    return (PEERS_DIR / name / "OK").exists()


@dataclass
class ProcGroup:
    """The processes of one system under test."""

    name: str
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    temp_dirs: list[Path] = field(default_factory=list)
    """Removed once the processes are gone (discovery run directories)."""

    def start(
        self, tag: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.name}-{tag}.log", "wb")  # noqa: SIM115 - lives with the process
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: process {p.args[:3]} exited with {p.returncode}; see logs in {self.log_dir}"
                )

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the group's processes and their
        descendants (live ones, e.g. `mixroute frontend --processes N`, and reaped ones)."""
        total = 0
        for p in self.procs:
            for pid in _with_descendants(p.pid):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self, grace_s: float = 5.0) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.procs.clear()
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.temp_dirs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _with_descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (from /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(x) for x in children.read_text().split())
            except (OSError, ValueError):
                continue
    return out


def wait_for_model(group: ProcGroup, base_url: str, model: str, timeout_s: float = 120.0) -> None:
    """Waits until `GET /v1/models` lists `model` (and, where the server also exposes
    them, its workers are registered)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        group.check_alive()
        try:
            r = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=2.0)
            if r.status_code == 200 and model in r.text:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.5)
    raise TimeoutError(
        f"{group.name}: model {model!r} not served at {base_url} after {timeout_s}s ({last})"
    )


def wait_for_http(group: ProcGroup, url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        group.check_alive()
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{group.name}: {url} not up after {timeout_s}s")


PICKED_PORTS = (20000, 32000)
"""Ports handed out by `free_port`: below Linux's ephemeral range (32768-60999), which is
where every `bind(port 0)` lands, so a port picked here cannot be taken by another
process's random bind (a worker's ZeroMQ publisher took a pre-picked HTTP port in the
08:10 run and that worker exited at start-up)."""


def free_port() -> int:
    import random
    import socket

    for _ in range(100):
        port = random.randrange(*PICKED_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
