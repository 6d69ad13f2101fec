from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mixroute.errors import DiscoveryError
from mixroute.runtime.discovery import WatchEvent, default_discovery_url, open_discovery
from mixroute.runtime.discovery.file import FileDiscovery


async def _next_events(it, n: int, timeout: float = 3.0) -> list[WatchEvent]:  # type: ignore[no-untyped-def]
    return [await asyncio.wait_for(it.__anext__(), timeout) for _ in range(n)]


async def test_put_get_delete_and_prefix(tmp_path: Path) -> None:
    d = await open_discovery(f"file://{tmp_path}")
    await d.put("v1/instances/ns/backend/generate/1a", b"one")
    await d.put("v1/instances/ns/prefill/generate/2b", b"two")
    await d.put("v1/instances/other/backend/generate/3c", b"three")
    assert await d.get_prefix("v1/instances/ns/") == {
        "v1/instances/ns/backend/generate/1a": b"one",
        "v1/instances/ns/prefill/generate/2b": b"two",
    }
    await d.put("v1/instances/ns/backend/generate/1a", b"uno")
    await d.delete("v1/instances/ns/prefill/generate/2b")
    await d.delete("v1/instances/ns/missing")  # deleting a missing key is not an error
    assert await d.get_prefix("v1/instances/ns/") == {"v1/instances/ns/backend/generate/1a": b"uno"}
    await d.close()


async def test_close_removes_leased_keys_but_keeps_unleased(tmp_path: Path) -> None:
    owner = await open_discovery(f"file://{tmp_path}")
    reader = await open_discovery(f"file://{tmp_path}")
    await owner.put("k/leased", b"1")
    await owner.put("k/persistent", b"2", leased=False)
    assert set(await reader.get_prefix("k/")) == {"k/leased", "k/persistent"}
    await owner.close()
    assert await reader.get_prefix("k/") == {"k/persistent": b"2"}
    with pytest.raises(DiscoveryError):
        await owner.put("k/x", b"")
    await reader.close()


async def test_stalled_owner_expires_and_is_cleaned(tmp_path: Path) -> None:
    owner = FileDiscovery(tmp_path, lease_ttl_s=0.4)
    reader = FileDiscovery(tmp_path, lease_ttl_s=10)  # the owner's TTL decides, not the reader's
    await owner.put("k/a", b"1")
    assert owner._heartbeat_task is not None
    owner._heartbeat_task.cancel()  # the owner stops heart-beating, as if killed
    assert await reader.get_prefix("k/") == {"k/a": b"1"}
    await asyncio.sleep(0.6)
    assert await reader.get_prefix("k/") == {}
    assert not any((tmp_path / "keys").iterdir()), "the reader deletes expired keys"
    assert not any((tmp_path / "leases").iterdir())


async def test_owner_comes_back_after_being_cleaned(tmp_path: Path) -> None:
    owner = FileDiscovery(tmp_path, lease_ttl_s=0.3)
    reader = FileDiscovery(tmp_path)
    await owner.put("k/a", b"1")
    # Simulate a cleaner removing our lease while our loop was stalled.
    for lease in (tmp_path / "leases").iterdir():
        lease.unlink()
    assert await reader.get_prefix("k/") == {}
    await asyncio.sleep(0.35)  # one heartbeat (ttl/3) later the owner has re-registered
    assert await reader.get_prefix("k/") == {"k/a": b"1"}
    await owner.close()


async def test_watch_yields_initial_state_then_changes(tmp_path: Path) -> None:
    d = FileDiscovery(tmp_path, poll_interval_s=0.02)
    await d.put("w/a", b"1")
    await d.put("x/other", b"0")
    watch = d.watch_prefix("w/")
    assert await _next_events(watch, 1) == [WatchEvent("put", "w/a", b"1")]
    await d.put("w/b", b"2")
    assert await _next_events(watch, 1) == [WatchEvent("put", "w/b", b"2")]
    await d.put("w/a", b"1bis")
    assert await _next_events(watch, 1) == [WatchEvent("put", "w/a", b"1bis")]
    await d.delete("w/b")
    assert await _next_events(watch, 1) == [WatchEvent("delete", "w/b", None)]
    await watch.aclose()
    await d.close()


async def test_corrupt_and_temp_files_are_ignored(tmp_path: Path) -> None:
    d = FileDiscovery(tmp_path)
    await d.put("k/good", b"1")
    (tmp_path / "keys" / "k%2Fbad").write_bytes(b"\xff\x00garbage")
    (tmp_path / "keys" / ".tmp-k%2Fhalf-1234").write_bytes(b"")
    assert await d.get_prefix("k/") == {"k/good": b"1"}
    await d.close()


async def test_bad_urls_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="unknown discovery URL"):
        await open_discovery("zookeeper://x")
    with pytest.raises(DiscoveryError, match="no directory"):
        await open_discovery("file://")
    with pytest.raises(DiscoveryError, match="positive"):
        await open_discovery(f"file://{tmp_path}", lease_ttl_s=0)
    monkeypatch.setenv("MIXROUTE_RUN_DIR", str(tmp_path))
    assert default_discovery_url() == f"file://{tmp_path}"
    monkeypatch.delenv("MIXROUTE_RUN_DIR")
    assert default_discovery_url() == f"file:///tmp/mixroute-{os.getuid()}/discovery"
    monkeypatch.setenv("MIXROUTE_LEASE_TTL_S", "3.5")
    d = await open_discovery(f"file://{tmp_path}")
    assert isinstance(d, FileDiscovery) and d.lease_ttl_s == 3.5
    await d.close()
