"""Waiting until the stack is ready, while watching for a child that dies or a stop request.

A check is a named async probe polled until it first succeeds. The wait ends when all
checks have passed (ready), when a child exits (failed: the caller prints its log),
when a stop was requested, or at the deadline.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TextIO

import httpx

from mixroute.errors import MixrouteError
from mixroute.up.supervisor import Child, Supervisor

Probe = Callable[[], Awaitable[bool]]

_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ [A-Z]+ (\[[\w-]+\] )?")
"""The timestamp and level of `mixroute.logs` lines: noise in a one-line status."""

_PROBE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Check:
    name: str
    """What the user reads while waiting (`frontend /health`)."""
    probe: Probe
    passed_after_s: float | None = None
    last_error: str = field(default="")
    children: list[Child] = field(default_factory=list)
    """Whose last log line to show while waiting (what a loading model is doing)."""


class WaitResult(Enum):
    READY = "ready"
    CHILD_EXITED = "child exited"
    STOPPED = "stopped"
    TIMED_OUT = "timed out"


def http_ok(client: httpx.AsyncClient, url: str) -> Probe:
    """Passes once `GET url` answers 200."""

    async def probe() -> bool:
        response = await client.get(url, timeout=_PROBE_TIMEOUT_S)
        return response.status_code == 200

    return probe


def model_listed(client: httpx.AsyncClient, url: str, model: str) -> Probe:
    """Passes once the OpenAI `GET /v1/models` at `url` lists `model`."""

    async def probe() -> bool:
        response = await client.get(url, timeout=_PROBE_TIMEOUT_S)
        if response.status_code != 200:
            return False
        data = response.json().get("data", [])
        return any(isinstance(m, dict) and m.get("id") == model for m in data)

    return probe


class Progress:
    """Prints each check as it passes, and a still-waiting line now and then."""

    def __init__(self, out: TextIO, every_s: float = 10.0) -> None:
        self.out = out
        self.every_s = every_s
        self._last_report = time.monotonic()

    def passed(self, check: Check) -> None:
        print(f"  ok  {check.name} ({check.passed_after_s:.1f}s)", file=self.out, flush=True)

    def waiting(self, pending: Sequence[Check], elapsed_s: float) -> None:
        now = time.monotonic()
        if not pending or now - self._last_report < self.every_s:
            return
        self._last_report = now
        names = ", ".join(c.name for c in pending)
        print(f"  ... {elapsed_s:.0f}s, waiting for: {names}", file=self.out, flush=True)
        shown: set[str] = set()
        for check in pending:
            for child in check.children:
                if child.name in shown:
                    continue
                shown.add(child.name)
                last = _last_line(child)
                if last:
                    print(f"        {child.name}: {last}", file=self.out, flush=True)


async def wait_until_ready(
    checks: Sequence[Check],
    supervisor: Supervisor,
    stop: asyncio.Event,
    timeout_s: float,
    progress: Progress,
    interval_s: float = 0.25,
) -> tuple[WaitResult, Child | None]:
    started = time.monotonic()
    pending = list(checks)
    while True:
        exited = supervisor.first_exited()
        if exited is not None:
            return WaitResult.CHILD_EXITED, exited
        if stop.is_set():
            return WaitResult.STOPPED, None
        if not pending:
            return WaitResult.READY, None
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            return WaitResult.TIMED_OUT, None
        results = await asyncio.gather(*(_run_probe(c) for c in pending))
        for check, ok in zip(pending, results, strict=True):
            if ok:
                check.passed_after_s = time.monotonic() - started
                progress.passed(check)
        pending = [c for c, ok in zip(pending, results, strict=True) if not ok]
        progress.waiting(pending, elapsed)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass


async def _run_probe(check: Check) -> bool:
    try:
        ok = await asyncio.wait_for(check.probe(), timeout=_PROBE_TIMEOUT_S + 1.0)
    except (httpx.HTTPError, OSError, TimeoutError, ValueError, MixrouteError) as exc:
        # Connection refused and friends are the normal state of a server still loading.
        check.last_error = type(exc).__name__
        return False
    check.last_error = ""
    return ok


def _last_line(child: Child, width: int = 110) -> str:
    # Progress bars redraw with carriage returns; the text after the last one is current.
    line = child.tail(1).rsplit("\r", 1)[-1].strip()
    line = _LOG_PREFIX.sub("", line)
    return line if len(line) <= width else line[: width - 3] + "..."
