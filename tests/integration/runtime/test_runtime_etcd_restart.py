"""etcd restarted empty under a live owner and watcher: the owner re-registers by itself
(its keep-alive finds the lease gone), and the watcher, without re-subscribing, sees the
key again and keeps receiving changes."""

from __future__ import annotations

import asyncio

from mixroute.errors import DiscoveryError
from mixroute.runtime.discovery import Discovery, WatchEvent, open_discovery
from mixroute.runtime.infra import EtcdProcess


async def test_owner_and_watcher_survive_an_etcd_restart() -> None:
    etcd = EtcdProcess.start()
    owner = await open_discovery(etcd.url, lease_ttl_s=2)
    watcher = await open_discovery(etcd.url, lease_ttl_s=2)
    events: list[WatchEvent] = []

    async def watch() -> None:
        async for event in watcher.watch_prefix("v1/restart/"):
            events.append(event)

    task = asyncio.create_task(watch())
    try:
        await owner.put("v1/restart/worker", b"w1")
        await _until(lambda: WatchEvent("put", "v1/restart/worker", b"w1") in events, 5)
        etcd.stop()
        etcd = await asyncio.to_thread(
            EtcdProcess.start, client_port=etcd.port, peer_port=etcd.peer_port
        )
        # The new etcd is empty; the owner's keep-alive re-grants and re-puts within ~TTL.
        expected = {"v1/restart/worker": b"w1"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await _get_prefix_when_reachable(watcher, "v1/restart/") != expected:
            assert loop.time() < deadline, "the owner did not re-register after the restart"
            await asyncio.sleep(0.1)
        await _until(lambda: _live(events) == expected, 5)
        # The same watch still delivers new changes.
        await owner.put("v1/restart/other", b"o1", leased=False)
        await _until(lambda: WatchEvent("put", "v1/restart/other", b"o1") in events, 5)
        await owner.delete("v1/restart/other")
        await _until(lambda: _live(events) == expected, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await owner.close()
        await watcher.close()
        etcd.stop()


async def _get_prefix_when_reachable(discovery: Discovery, prefix: str) -> dict[str, bytes] | None:
    """None while the client is still reconnecting (a clear DiscoveryError, not a hang)."""
    try:
        return await discovery.get_prefix(prefix)
    except DiscoveryError:
        return None


def _live(events: list[WatchEvent]) -> dict[str, bytes]:
    state: dict[str, bytes] = {}
    for event in events:
        if event.kind == "put" and event.value is not None:
            state[event.key] = event.value
        else:
            state.pop(event.key, None)
    return state


async def _until(condition, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
