"""Child processes of `mixroute up`: each in its own process group, each with its log file.

Why process groups: a component may start helpers of its own (tokenizer pools, envoy's
threads, torch workers); signalling the group reaches them all, and Ctrl-C in the
terminal reaches only `mixroute up`, which then stops the children in a known order
(router and frontend before workers, infrastructure last so leases can be revoked).

On Linux each child also asks the kernel for SIGTERM if `mixroute up` dies without
cleaning up (PR_SET_PDEATHSIG, see `mixroute.runtime.parent_death`), so even `kill -9`
of the supervisor leaves no orphans. Children are started from the main thread only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mixroute.runtime.parent_death import die_with_parent


@dataclass(slots=True, frozen=True)
class ChildSpec:
    """How to start one child."""

    name: str
    """Short unique name, also the log file's stem (`router`, `worker-decode-0`)."""
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to (and overriding) the supervisor's environment."""
    stage: int = 1
    """Stop order: higher stages stop first (infrastructure is stage 0, stopped last)."""
    cwd: str | None = None
    restart: bool = False
    """Started again when it exits while the stack runs (workers: meanwhile the frontend
    routes around the dead one and moves its streams to the others)."""


class Child:
    """One running child process; `pid` is also its process group id."""

    def __init__(self, spec: ChildSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        assert self._proc is not None, "child not started"
        return self._proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 (closed in reap)
        env = {**os.environ, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        try:
            self._proc = subprocess.Popen(
                die_with_parent(self.spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.spec.cwd,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise

    def poll(self) -> int | None:
        """The exit status once the child has exited (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal every process in the child's group (no error if the group is gone)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def group_alive(self) -> bool:
        """True while any process of the child's group exists (zombies of ours aside)."""
        if self._proc is None:
            return False
        self._proc.poll()  # reap our direct child so it does not linger as a zombie
        return bool(processes_in_group(self._proc.pid))

    def tail(self, num_lines: int = 30) -> str:
        return tail_file(self.log_path, num_lines)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Supervisor:
    """Starts children, reports the first that dies, stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._is_hurried = False

    def hurry(self) -> None:
        """Cut the remaining grace period short (a second Ctrl-C while stopping); safe to
        call from a signal handler."""
        self._is_hurried = True

    def start(self, spec: ChildSpec) -> Child:
        if any(c.name == spec.name for c in self.children):
            raise ValueError(f"duplicate child name {spec.name!r}")
        child = Child(spec, self.log_dir / f"{spec.name}.log")
        child.start()
        self.children.append(child)
        return child

    def restart(self, child: Child) -> Child:
        """Start `child`'s spec again in its place (its log file is appended to)."""
        child.signal_group(signal.SIGKILL)  # helpers the dead process may have left
        child.close_log()
        fresh = Child(child.spec, child.log_path)
        fresh.start()
        self.children[self.children.index(child)] = fresh
        return fresh

    def first_exited(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if c.poll() is not None), None)

    def stop(
        self,
        grace_s: float = 10.0,
        on_stage: Callable[[list[Child]], None] | None = None,
    ) -> list[Child]:
        """Stop every child: SIGTERM to each group of a stage, wait up to `grace_s`, SIGKILL
        what is left; stages from highest to lowest. Returns the children that needed SIGKILL."""
        killed: list[Child] = []
        for stage in sorted({c.spec.stage for c in self.children}, reverse=True):
            group = [c for c in self.children if c.spec.stage == stage]
            if on_stage is not None:
                on_stage(group)
            killed.extend(_stop_group(group, grace_s, lambda: self._is_hurried))
        for child in self.children:
            child.close_log()
        return killed


def _stop_group(
    children: Iterable[Child], grace_s: float, is_hurried: Callable[[], bool]
) -> list[Child]:
    children = list(children)
    for child in children:
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (
        time.monotonic() < deadline and not is_hurried() and any(c.group_alive() for c in children)
    ):
        time.sleep(0.05)
    leftovers = [c for c in children if c.group_alive()]
    for child in leftovers:
        child.signal_group(signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    while time.monotonic() < kill_deadline and any(c.group_alive() for c in leftovers):
        time.sleep(0.05)
    return leftovers


def processes_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`, read from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; fields follow the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def tail_file(path: Path, num_lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-num_lines:])
