"""host_id: which machine this process runs on, so two workers can tell they share one.

Hostname plus the kernel's boot id: two containers with the same hostname on different
machines (or one machine before and after a reboot) do not match. `MIXROUTE_HOST_ID`
overrides it (tests use it to put two local workers on "different hosts")."""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST_ID_ENV = "MIXROUTE_HOST_ID"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def host_id() -> str:
    override = os.environ.get(HOST_ID_ENV)
    if override:
        return override
    try:
        boot_id = BOOT_ID_PATH.read_text().strip()
    except OSError:
        boot_id = "no-boot-id"
    return f"{socket.gethostname()}/{boot_id}"
