"""etcd discovery via `aetcd`: one lease per process, kept alive by a background task.

Leased keys are put on this process's lease; `close` revokes it so they vanish at once,
and a killed process's keys vanish when etcd expires the lease (its TTL). If the lease
is lost anyway (etcd restarted, a long stall), the keep-alive task grants a new one and
puts our leased keys again. aetcd errors are translated into `DiscoveryError` here.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import aetcd.exceptions

from mixroute.errors import DiscoveryError
from mixroute.logs import kv
from mixroute.runtime.discovery.base import DEFAULT_LEASE_TTL_S, WatchEvent

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5
_CHANNEL_OPTIONS = {
    # gRPC's default reconnect backoff grows to minutes; etcd restarts should heal in ~1 s.
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2000,
}
_RETRY_MIN_S = 0.25
_RETRY_MAX_S = 2.0


class EtcdDiscovery:
    def __init__(self, host: str, port: int, *, lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        self.host = host
        self.port = port
        # etcd leases are whole seconds and etcd refuses very short ones; 2 s is its floor.
        self.lease_ttl_s = max(2, math.ceil(lease_ttl_s))
        self._client = aetcd.Client(
            host=host, port=port, timeout=_CONNECT_TIMEOUT_S, options=_CHANNEL_OPTIONS
        )
        self._lease_id: int | None = None
        self._lease_lock = asyncio.Lock()
        self._leased: dict[str, bytes] = {}
        self._keepalive_task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"EtcdDiscovery({self.host}:{self.port})"

    async def connect(self) -> None:
        """Fails fast with a clear error when etcd is not reachable."""
        try:
            await asyncio.wait_for(self._client.status(), _CONNECT_TIMEOUT_S)
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            await self._client.close()
            raise DiscoveryError(
                f"cannot reach etcd at {self.host}:{self.port} ({type(exc).__name__}: {exc}); "
                "is etcd running? (--discovery etcd://HOST:PORT)"
            ) from exc

    # ---- writes ----

    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None:
        self._check_open()
        try:
            if leased:
                lease_id = await self._ensure_lease()
                self._leased[key] = value
                await self._client.put(key.encode(), value, lease=lease_id)
            else:
                self._leased.pop(key, None)
                await self._client.put(key.encode(), value)
        except aetcd.exceptions.ClientError as exc:
            raise DiscoveryError(f"etcd put {key!r} failed: {exc}") from exc

    async def delete(self, key: str) -> None:
        self._check_open()
        self._leased.pop(key, None)
        try:
            await self._client.delete(key.encode())
        except aetcd.exceptions.ClientError as exc:
            raise DiscoveryError(f"etcd delete {key!r} failed: {exc}") from exc

    # ---- reads ----

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        self._check_open()
        values, _ = await self._get_prefix_with_revision(prefix)
        return values

    async def _get_prefix_with_revision(self, prefix: str) -> tuple[dict[str, bytes], int]:
        try:
            result = await self._client.get_prefix(prefix.encode())
        except aetcd.exceptions.ClientError as exc:
            raise DiscoveryError(f"etcd get_prefix {prefix!r} failed: {exc}") from exc
        return {kv_.key.decode(): kv_.value for kv_ in result}, result.header.revision

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """Snapshot, then watch from the snapshot's next revision. If the watch breaks (etcd
        restarted, network blip), it re-reads the prefix, yields the difference from what
        the caller last saw, and watches again: callers never have to re-subscribe."""
        self._check_open()
        seen: dict[str, bytes] = {}
        retry_s = _RETRY_MIN_S
        while not self._closed:
            try:
                snapshot, revision = await self._get_prefix_with_revision(prefix)
            except DiscoveryError as exc:
                log.warning(
                    "etcd watch cannot read %s", kv(prefix=prefix, error=exc, retry_s=retry_s)
                )
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, _RETRY_MAX_S)
                continue
            for key, value in snapshot.items():
                if seen.get(key) != value:
                    yield WatchEvent("put", key, value)
            for key in [k for k in seen if k not in snapshot]:
                yield WatchEvent("delete", key, None)
            seen = snapshot
            retry_s = _RETRY_MIN_S
            watch = None
            try:
                watch = await self._client.watch_prefix(
                    prefix.encode(), start_revision=revision + 1
                )
                async for event in watch:
                    key = event.kv.key.decode()
                    if event.kind == "PUT":
                        seen[key] = event.kv.value
                        yield WatchEvent("put", key, event.kv.value)
                    else:
                        seen.pop(key, None)
                        yield WatchEvent("delete", key, None)
            except aetcd.exceptions.ClientError as exc:
                if not self._closed:
                    log.warning("etcd watch broke; resyncing %s", kv(prefix=prefix, error=exc))
                    await asyncio.sleep(retry_s)
            finally:
                if watch is not None:
                    await asyncio.shield(self._cancel_watch(watch))

    async def _cancel_watch(self, watch: Any) -> None:
        try:
            await watch.cancel()
        except (aetcd.exceptions.ClientError, asyncio.CancelledError, RuntimeError):
            pass

    # ---- lease ----

    async def _ensure_lease(self) -> int:
        async with self._lease_lock:
            if self._lease_id is None:
                lease = await self._client.lease(self.lease_ttl_s)
                self._lease_id = lease.id
                log.debug(
                    "etcd lease granted %s", kv(lease_id=f"{lease.id:x}", ttl_s=self.lease_ttl_s)
                )
            if self._keepalive_task is None:
                self._keepalive_task = asyncio.get_running_loop().create_task(
                    self._keepalive(), name="etcd-lease-keepalive"
                )
            return self._lease_id

    async def _keepalive(self) -> None:
        interval = self.lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            lease_id = self._lease_id
            if lease_id is None:
                continue
            try:
                reply = await self._client.refresh_lease(lease_id)
                if reply is None or reply.TTL <= 0:
                    await self._regrant()
            except aetcd.exceptions.ClientError as exc:
                log.warning("etcd lease keep-alive failed %s", kv(error=exc))

    async def _regrant(self) -> None:
        log.warning("etcd lease expired; granting a new one %s", kv(keys=len(self._leased)))
        async with self._lease_lock:
            self._lease_id = None
        lease_id = await self._ensure_lease()
        for key, value in list(self._leased.items()):
            await self._client.put(key.encode(), value, lease=lease_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            try:
                await self._keepalive_task
            except asyncio.CancelledError:
                pass
        try:
            if self._lease_id is not None:
                await self._client.revoke_lease(self._lease_id)
        except aetcd.exceptions.ClientError as exc:
            log.warning("etcd lease revoke failed %s", kv(error=exc))
        finally:
            self._lease_id = None
            self._leased.clear()
            await self._client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryError(f"{self!r} is closed")


def parse_etcd_url(url: str) -> tuple[str, int]:
    rest = url[len("etcd://") :].rstrip("/")
    host, _, port_text = rest.rpartition(":")
    if not host:
        host, port_text = rest or "127.0.0.1", "2379"
    try:
        port = int(port_text)
    except ValueError:
        raise DiscoveryError(f"bad etcd URL {url!r}; expected etcd://HOST:PORT") from None
    return host, port
