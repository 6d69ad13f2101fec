"""etcd / nats-server started by `mixroute.runtime.infra` die with the process that started
them, even when that process is killed with SIGKILL (no cleanup code runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

_STARTER = """
import sys, time
from mixroute.runtime.infra import EtcdProcess, NatsProcess
server = (EtcdProcess if sys.argv[1] == "etcd" else NatsProcess).start()
print(server.process.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("server", ["etcd", "nats"])
def test_server_dies_with_a_sigkilled_parent(server: str) -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTER, server], stdout=subprocess.PIPE, text=True
    )
    pid = 0
    try:
        assert starter.stdout is not None
        pid = int(starter.stdout.readline())
        assert _alive(pid)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"{server} (pid {pid}) outlived its parent"
            time.sleep(0.05)
    finally:
        starter.kill()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)
