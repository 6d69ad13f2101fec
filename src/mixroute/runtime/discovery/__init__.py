"""Discovery: keys on leases, list and watch by prefix. See README.md in runtime/.

discovery = await open_discovery("file:///tmp/run")      # or "etcd://127.0.0.1:2379"
await discovery.put(key, value)                           # leased: gone when we die
async for event in discovery.watch_prefix("v1/instances/dynamo/"): ...
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from mixroute.errors import DiscoveryError
from mixroute.runtime.discovery.base import DEFAULT_LEASE_TTL_S, Discovery, WatchEvent

__all__ = [
    "DEFAULT_LEASE_TTL_S",
    "Discovery",
    "WatchEvent",
    "default_discovery_url",
    "open_discovery",
    "register_backend",
]

Opener = Callable[[str, float], Awaitable[Discovery]]


async def _open_file(url: str, lease_ttl_s: float) -> Discovery:
    from mixroute.runtime.discovery.file import FileDiscovery, parse_file_url

    return FileDiscovery(parse_file_url(url), lease_ttl_s=lease_ttl_s)


async def _open_etcd(url: str, lease_ttl_s: float) -> Discovery:
    from mixroute.runtime.discovery.etcd import EtcdDiscovery, parse_etcd_url

    host, port = parse_etcd_url(url)
    discovery = EtcdDiscovery(host, port, lease_ttl_s=lease_ttl_s)
    await discovery.connect()
    return discovery


_BACKENDS: dict[str, Opener] = {"file": _open_file, "etcd": _open_etcd}


def register_backend(scheme: str, opener: Opener) -> None:
    """Adds a discovery backend for `scheme://...` URLs (e.g. an in-memory one in tests)."""
    _BACKENDS[scheme] = opener


def default_discovery_url() -> str:
    """`file://$MIXROUTE_RUN_DIR`, else `file:///tmp/mixroute-<uid>/discovery`."""
    run_dir = os.environ.get("MIXROUTE_RUN_DIR")
    if run_dir:
        return f"file://{Path(run_dir).absolute()}"
    return f"file:///tmp/mixroute-{os.getuid()}/discovery"


async def open_discovery(url: str | None = None, *, lease_ttl_s: float | None = None) -> Discovery:
    """Opens the backend named by the URL scheme. TTL: argument, else env
    MIXROUTE_LEASE_TTL_S, else 10 s."""
    url = url or default_discovery_url()
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise DiscoveryError(f"unknown discovery URL {url!r}; use one of: {known}")
    if lease_ttl_s is None:
        env_ttl = os.environ.get("MIXROUTE_LEASE_TTL_S")
        lease_ttl_s = float(env_ttl) if env_ttl else DEFAULT_LEASE_TTL_S
    if lease_ttl_s <= 0:
        raise DiscoveryError(f"lease TTL must be positive, got {lease_ttl_s}")
    return await _BACKENDS[scheme](url, lease_ttl_s)
