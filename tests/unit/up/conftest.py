"""Fixtures for tests that run the whole stack through `mixroute up` as a real process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.stack_process import UpProcess, start_up, stop_up


@pytest.fixture
def up_stack(tmp_path: Path) -> Iterator[Callable[..., UpProcess]]:
    """A factory: `up_stack(*flags)` starts `mixroute up` and waits until it is ready."""
    started: list[UpProcess] = []

    def start(
        *flags: str, timeout_s: float = 900.0, env: dict[str, str] | None = None
    ) -> UpProcess:
        up = start_up(tmp_path, *flags, env=env)
        started.append(up)
        up.wait_ready(timeout_s)
        return up

    yield start
    for up in started:
        stop_up(up)
