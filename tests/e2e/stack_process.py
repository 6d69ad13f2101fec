"""`mixroute up` as a real process, for end-to-end tests.

`start_up(dir, *flags)` starts `python -m mixroute up` with free ports for every server, a
unique namespace and a private run dir, and waits until it prints that it is ready.
Teardown sends SIGINT (what Ctrl-C does) and, if that fails, kills the process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixroute.up.ports import free_port

READY_LINE = "Press Ctrl-C to stop"
SMOLLM2 = "SmolLM2-135M-Instruct"


@dataclass
class UpProcess:
    proc: subprocess.Popen[str]
    argv: list[str]
    run_dir: Path
    log_dir: Path
    namespace: str
    router_url: str
    frontend_url: str
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _pump_thread: threading.Thread | None = None

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()  # EOF: wake the waiter, it then sees the exit

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float) -> None:
        if not self._ready.wait(timeout_s) or self.proc.poll() is not None:
            self.kill()
            raise AssertionError(f"mixroute up not ready in {timeout_s:.0f}s:\n{self.output}")

    def child_pids(self) -> dict[str, int]:
        return {m[1]: int(m[2]) for m in re.finditer(r"started (\S+)\s+pid (\d+)", self.output)}

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C: SIGINT to `mixroute up` alone; returns its exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._pump_thread_join()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.child_pids().values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def leftover_processes(self) -> list[str]:
        """Live processes that belong to this stack: in a child's process group, or whose
        command line names this stack's run dir or namespace."""
        groups = set(self.child_pids().values())
        markers = (str(self.run_dir), f"--namespace\0{self.namespace}\0")
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_text(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue
            if int(fields[2]) in groups or any(m in cmdline for m in markers):
                found.append(f"{entry.name}: {cmdline.replace(chr(0), ' ')[:200]}")
        return found

    def _pump_thread_join(self) -> None:
        if self._pump_thread is not None:
            self._pump_thread.join(10)


def start_up(
    work_dir: Path,
    *flags: str,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> UpProcess:
    """Start `mixroute up` (not waiting for it) with free ports and a unique namespace;
    `prefix` wraps the command (e.g. to run it in a network namespace)."""
    run_dir = work_dir / "run"
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    router_port, frontend_port = free_port(), free_port()
    argv = [
        *prefix,
        sys.executable, "-m", "mixroute", "up",
        "--run-dir", str(run_dir),
        "--namespace", namespace,
        "--router-port", str(router_port),
        "--frontend-port", str(frontend_port),
        "--extproc-port", str(free_port()),
        *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    up = UpProcess(
        proc=proc,
        argv=argv,
        run_dir=run_dir,
        log_dir=run_dir / "logs",
        namespace=namespace,
        router_url=f"http://127.0.0.1:{router_port}",
        frontend_url=f"http://127.0.0.1:{frontend_port}",
    )
    up._pump_thread = threading.Thread(target=up._pump, daemon=True)
    up._pump_thread.start()
    return up


def stop_up(up: UpProcess) -> None:
    """Teardown: Ctrl-C, then kill whatever is left."""
    if up.proc.poll() is None:
        up.proc.send_signal(signal.SIGINT)
        try:
            up.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    up.kill()


def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.1
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
