"""Discovery across processes, file and real etcd: register in a child, watch in the
parent, kill -9 the child, the key disappears within the lease TTL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from mixroute.runtime.discovery import WatchEvent, open_discovery

from .runtime_child import spawn_child

TTL_S = 2.0


@pytest.fixture(params=["file", "etcd"])
def discovery_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}"
    return str(request.getfixturevalue("etcd_server").url)


async def _next(watch, timeout: float) -> WatchEvent:  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(watch.__anext__(), timeout)


async def test_key_of_killed_process_vanishes_within_ttl(discovery_url: str) -> None:
    key = f"v1/instances/itest/backend/generate/{os.getpid():x}"
    parent = await open_discovery(discovery_url, lease_ttl_s=TTL_S)
    watch = parent.watch_prefix("v1/instances/itest/")
    proc, line = await asyncio.to_thread(spawn_child, "register", discovery_url, key, str(TTL_S))
    try:
        assert line == "ready"
        assert await _next(watch, 5) == WatchEvent("put", key, b"alive")
        assert await parent.get_prefix("v1/instances/itest/") == {key: b"alive"}
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        event = await _next(watch, TTL_S + 3)
        elapsed = time.monotonic() - killed_at
        assert event == WatchEvent("delete", key, None)
        # etcd expires whole-second leases on its own clock; allow one poll/tick of slack.
        assert elapsed <= TTL_S + 1.0, f"key lingered {elapsed:.2f}s after kill -9"
        print(f"key gone {elapsed:.2f}s after kill -9 (lease TTL {TTL_S}s)")
        assert await parent.get_prefix("v1/instances/itest/") == {}
    finally:
        proc.kill()
        proc.wait()
        await watch.aclose()
        await parent.close()


async def test_clean_close_removes_keys_at_once(discovery_url: str) -> None:
    parent = await open_discovery(discovery_url, lease_ttl_s=TTL_S)
    other = await open_discovery(discovery_url, lease_ttl_s=TTL_S)
    await other.put("v1/itest-close/a", b"1")
    await other.put("v1/itest-close/b", b"2", leased=False)
    assert set(await parent.get_prefix("v1/itest-close/")) == {
        "v1/itest-close/a",
        "v1/itest-close/b",
    }
    await other.close()
    assert await parent.get_prefix("v1/itest-close/") == {"v1/itest-close/b": b"2"}
    await parent.delete("v1/itest-close/b")
    await parent.close()
