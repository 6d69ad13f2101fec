"""File discovery: processes on one machine share a run directory.

Layout under RUN_DIR:
    keys/<quoted key>      one file per key: msgpack `_KeyRecord` (key, value, lease id)
    leases/<lease id:x>    one file per live lease: msgpack `_LeaseRecord`; its mtime is
                           the owner's last heartbeat

A leased key is alive while its lease file exists and was touched within the lease's TTL
(the owner's TTL, stored in the lease file, so readers configured differently agree).
Readers treat keys of expired leases as gone; whoever notices first (a reader, a
watcher, a writer) deletes them. Writes go to a temp file and are renamed into place, so
a reader never sees half a value. Watching polls the directory (every `poll_interval_s`),
which is cheap for the tens of keys a deployment holds and works on every filesystem.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, unquote

import msgspec

from mixroute.errors import DiscoveryError
from mixroute.logs import kv
from mixroute.runtime.discovery.base import DEFAULT_LEASE_TTL_S, WatchEvent

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 0.15


class _KeyRecord(msgspec.Struct, array_like=True):
    key: str
    value: bytes
    lease_id: int | None


class _LeaseRecord(msgspec.Struct, array_like=True):
    ttl_s: float
    pid: int


_key_decoder = msgspec.msgpack.Decoder(_KeyRecord)
_lease_decoder = msgspec.msgpack.Decoder(_LeaseRecord)


def _file_name(key: str) -> str:
    return quote(key, safe="")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class FileDiscovery:
    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.lease_ttl_s = lease_ttl_s
        self.poll_interval_s = poll_interval_s
        self._keys_dir = self.run_dir / "keys"
        self._leases_dir = self.run_dir / "leases"
        try:
            self._keys_dir.mkdir(parents=True, exist_ok=True)
            self._leases_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiscoveryError(f"cannot create discovery run dir {self.run_dir}: {exc}") from exc
        self.lease_id = secrets.randbits(63)
        self._lease_path = self._leases_dir / f"{self.lease_id:x}"
        self._leased: dict[str, bytes] = {}
        """Our leased keys, rewritten if a cleaner removed them while we were stalled."""
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closed = False
        # Per-file parse cache: name -> ((mtime_ns, size, ino), record).
        self._record_cache: dict[str, tuple[tuple[int, int, int], _KeyRecord]] = {}
        self._lease_cache: dict[int, _LeaseRecord] = {}
        """A lease's TTL never changes, so its file is read once; liveness is its mtime."""

    def __repr__(self) -> str:
        return f"FileDiscovery({str(self.run_dir)!r})"

    # ---- writes ----

    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None:
        self._check_open()
        lease_id = None
        if leased:
            self._ensure_lease()
            lease_id = self.lease_id
            self._leased[key] = value
        else:
            self._leased.pop(key, None)
        record = msgspec.msgpack.encode(_KeyRecord(key, value, lease_id))
        try:
            _atomic_write(self._keys_dir / _file_name(key), record)
        except OSError as exc:
            raise DiscoveryError(f"cannot write discovery key {key!r}: {exc}") from exc

    async def delete(self, key: str) -> None:
        self._check_open()
        self._leased.pop(key, None)
        try:
            (self._keys_dir / _file_name(key)).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DiscoveryError(f"cannot delete discovery key {key!r}: {exc}") from exc

    # ---- reads ----

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        self._check_open()
        return self._scan(prefix)

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        self._check_open()
        seen: dict[str, bytes] = {}
        while True:
            current = self._scan(prefix)
            for key, value in current.items():
                if seen.get(key) != value:
                    yield WatchEvent("put", key, value)
            for key in [k for k in seen if k not in current]:
                yield WatchEvent("delete", key, None)
            seen = current
            if self._closed:
                return
            await asyncio.sleep(self.poll_interval_s)

    def _scan(self, prefix: str) -> dict[str, bytes]:
        """Live keys under `prefix`; deletes keys whose lease expired."""
        now = time.time()
        lease_alive: dict[int, bool] = {}
        result: dict[str, bytes] = {}
        quoted_prefix = _file_name(prefix)
        try:
            entries = list(os.scandir(self._keys_dir))
        except OSError as exc:
            raise DiscoveryError(f"cannot list discovery run dir {self._keys_dir}: {exc}") from exc
        live_names = set()
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.startswith(quoted_prefix):
                continue
            record = self._read_record(entry)
            if record is None or not record.key.startswith(prefix):
                continue
            live_names.add(name)
            if record.lease_id is not None:
                alive = lease_alive.get(record.lease_id)
                if alive is None:
                    alive = lease_alive[record.lease_id] = self._lease_alive(record.lease_id, now)
                if not alive:
                    self._remove_expired(entry.path, record)
                    continue
            result[record.key] = record.value
        for name in [
            n for n in self._record_cache if n.startswith(quoted_prefix) and n not in live_names
        ]:
            del self._record_cache[name]
        return result

    def _read_record(self, entry: os.DirEntry[str]) -> _KeyRecord | None:
        try:
            st = entry.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._record_cache.get(entry.name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with open(entry.path, "rb") as f:
                record = _key_decoder.decode(f.read())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("unreadable discovery key file %s", kv(path=entry.path, error=exc))
            return None
        self._record_cache[entry.name] = (stamp, record)
        return record

    def _lease_alive(self, lease_id: int, now: float) -> bool:
        path = self._leases_dir / f"{lease_id:x}"
        try:
            st = path.stat()
            lease = self._lease_cache.get(lease_id)
            if lease is None:
                with open(path, "rb") as f:
                    lease = self._lease_cache[lease_id] = _lease_decoder.decode(f.read())
        except FileNotFoundError:
            self._lease_cache.pop(lease_id, None)
            return False
        except (OSError, msgspec.DecodeError):
            # Being rewritten right now (rename is atomic, so this is rare): count as alive.
            return True
        if now - st.st_mtime <= lease.ttl_s:
            return True
        self._lease_cache.pop(lease_id, None)
        try:
            path.unlink()
            log.info("discovery lease expired %s", kv(lease_id=f"{lease_id:x}", pid=lease.pid))
        except FileNotFoundError:
            pass
        return False

    def _remove_expired(self, path: str, record: _KeyRecord) -> None:
        if record.lease_id == self.lease_id and not self._closed:
            return  # our own lease looked stale (we were stalled); the heartbeat restores it
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    # ---- lease ----

    def _ensure_lease(self) -> None:
        if self._heartbeat_task is None:
            self._write_lease()
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._heartbeat(), name=f"file-discovery-heartbeat-{self.lease_id:x}"
            )

    def _write_lease(self) -> None:
        data = msgspec.msgpack.encode(_LeaseRecord(self.lease_ttl_s, os.getpid()))
        try:
            _atomic_write(self._lease_path, data)
        except OSError as exc:
            raise DiscoveryError(f"cannot write discovery lease {self._lease_path}: {exc}") from exc

    async def _heartbeat(self) -> None:
        interval = self.lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                os.utime(self._lease_path)
            except FileNotFoundError:
                # A cleaner saw us as expired (e.g. our loop stalled past the TTL): come back.
                log.warning(
                    "discovery lease was expired; re-registering %s", kv(keys=len(self._leased))
                )
                try:
                    self._write_lease()
                    for key, value in list(self._leased.items()):
                        await self.put(key, value, leased=True)
                except DiscoveryError as exc:
                    log.error("discovery re-register failed %s", kv(error=exc))
            except OSError as exc:
                log.error("discovery heartbeat failed %s", kv(error=exc))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            try:
                await self._heartbeat_task
            except asyncio.CancelledError:
                pass
        for key in list(self._leased):
            try:
                (self._keys_dir / _file_name(key)).unlink()
            except FileNotFoundError:
                pass
        self._leased.clear()
        try:
            self._lease_path.unlink()
        except FileNotFoundError:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryError(f"{self!r} is closed")


def parse_file_url(url: str) -> Path:
    """`file:///abs/run/dir` -> Path (relative `file://dir` is accepted for convenience)."""
    rest = url[len("file://") :]
    if not rest:
        raise DiscoveryError(f"discovery URL {url!r} has no directory; use file:///path/to/run-dir")
    return Path(unquote(rest))
