"""Which host a server advertises to others, and how hosts are written in URLs."""

from __future__ import annotations

import socket

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def advertised_host(bind_host: str, advertise_host: str | None = None) -> str:
    """`advertise_host` if given; else the bind host, unless that is a wildcard (0.0.0.0),
    where the machine's own address is used (in Kubernetes: the pod IP)."""
    if advertise_host:
        return advertise_host
    if bind_host in WILDCARD_HOSTS:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return bind_host


def url_host(host: str) -> str:
    """IPv6 literals go in brackets inside URLs."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
