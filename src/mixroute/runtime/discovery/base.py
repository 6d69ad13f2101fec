"""Discovery interface: keys on leases, listing and watching prefixes.

Backends: `file://RUN_DIR` (embedded default; processes on one machine share a run
directory; TTL by heartbeat) and `etcd://HOST:PORT` (real etcd via aetcd).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

DEFAULT_LEASE_TTL_S = 10.0


@dataclass(slots=True, frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes | None
    """None for deletes."""


class Discovery(Protocol):
    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None:
        """Write `key`. A leased key lives only as long as this process keeps its lease alive
        (kept alive in the background until `close`); an unleased key persists."""

    async def delete(self, key: str) -> None: ...

    async def get_prefix(self, prefix: str) -> dict[str, bytes]: ...

    def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """Yields a `put` for every key present when the watch starts, then changes as they happen.

        An async generator: consume it with `async for` in a task of its own. Cancelling a
        pending `__anext__` (e.g. `asyncio.wait_for` timing out) ends the watch; open a new
        one to continue (it starts with the current state again)."""

    async def close(self) -> None:
        """Revokes this process's lease (its leased keys vanish at once) and stops keep-alive."""
