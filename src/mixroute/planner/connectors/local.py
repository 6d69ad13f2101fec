"""Scales pools of local `mixroute worker` processes (one machine, no orchestrator).

Each pool has a worker command line (the planner adds `--worker-type` and the runtime
flags); scaling up starts processes, scaling down stops the newest with SIGTERM (the
worker deregisters and drains), then SIGKILL after `stop_timeout_s`. A process that
exits on its own no longer counts, so the next tick replaces it. `close` stops every
process this connector started.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mixroute.logs import kv
from mixroute.planner.connectors.base import ScaleError
from mixroute.planner.policy import Pool
from mixroute.runtime.parent_death import die_with_parent

log = logging.getLogger(__name__)

WORKER_TYPE: dict[Pool, str] = {"prefill": "prefill", "decode": "decode"}


@dataclass(slots=True)
class _Process:
    proc: asyncio.subprocess.Process
    log_file: IO[bytes] | None


@dataclass(slots=True)
class LocalConnector:
    worker_args: dict[Pool, list[str]]
    """Per pool: `mixroute worker` arguments (model, engine, ...) without --worker-type."""
    runtime_args: list[str] = field(default_factory=list)
    """--namespace/--discovery/--events, passed to every worker so it joins this planner's plane."""
    log_dir: Path | None = None
    stop_timeout_s: float = 10.0
    python: str = sys.executable
    _procs: dict[Pool, list[_Process]] = field(
        default_factory=lambda: {"prefill": [], "decode": []}
    )
    _started: int = 0

    def pools(self) -> tuple[Pool, ...]:
        return tuple(self.worker_args)

    def command(self, pool: Pool) -> list[str]:
        return [
            self.python, "-m", "mixroute", "worker",
            "--worker-type", WORKER_TYPE[pool],
            *self.worker_args[pool],
            *self.runtime_args,
        ]  # fmt: skip

    async def current_replicas(self, pool: Pool) -> int:
        self._reap(pool)
        return len(self._procs[pool])

    async def set_replicas(self, pool: Pool, replicas: int) -> None:
        if pool not in self.worker_args:
            raise ScaleError(f"no worker command for the {pool} pool")
        self._reap(pool)
        procs = self._procs[pool]
        while len(procs) < replicas:
            procs.append(await self._start(pool))
        while len(procs) > replicas:
            await self._stop(procs.pop())

    async def _start(self, pool: Pool) -> _Process:
        self._started += 1
        log_file = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # A local append-mode open; not worth a thread hop.
            log_file = open(self.log_dir / f"{pool}-worker-{self._started}.log", "ab")  # noqa: SIM115, ASYNC230
        cmd = self.command(pool)
        try:
            # die_with_parent: a planner killed outright (SIGKILL) must not leave its workers running.
            proc = await asyncio.create_subprocess_exec(
                *die_with_parent(cmd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file if log_file else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT if log_file else asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            if log_file:
                log_file.close()
            raise ScaleError(f"cannot start {_quote(cmd)}: {exc}") from exc
        log.info("started worker %s", kv(pool=pool, pid=proc.pid))
        return _Process(proc, log_file)

    async def _stop(self, process: _Process) -> None:
        proc = process.proc
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout_s)
            except TimeoutError:
                log.warning("worker ignored SIGTERM, killing %s", kv(pid=proc.pid))
                proc.kill()
                await proc.wait()
        if process.log_file:
            process.log_file.close()
        log.info("stopped worker %s", kv(pid=proc.pid, returncode=proc.returncode))

    def _reap(self, pool: Pool) -> None:
        alive = []
        for process in self._procs[pool]:
            if process.proc.returncode is None:
                alive.append(process)
                continue
            log.warning(
                "worker exited %s",
                kv(pool=pool, pid=process.proc.pid, returncode=process.proc.returncode),
            )
            if process.log_file:
                process.log_file.close()
        self._procs[pool] = alive

    async def close(self) -> None:
        for pool in list(self._procs):
            procs, self._procs[pool] = self._procs[pool], []
            await asyncio.gather(*(self._stop(p) for p in procs))


def _quote(cmd: Sequence[str]) -> str:
    return " ".join(cmd)
