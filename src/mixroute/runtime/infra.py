"""Real etcd and nats-server processes on free loopback ports, for tests and `mixroute up
--with-infra`. Each keeps its data and log in a temp dir that `stop()` removes.

    etcd = EtcdProcess.start()        # waits until /health answers
    etcd.url                          # etcd://127.0.0.1:PORT
    etcd.stop()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from mixroute.errors import ConfigError
from mixroute.logs import kv
from mixroute.runtime.parent_death import die_with_parent

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS may hand it out again; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


@dataclass
class _ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    work_dir: Path
    host: str
    port: int
    monitor_port: int
    _stopped: bool = field(default=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"{self.name}.log"

    def log_tail(self, num_chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Kills the server, waits for it, removes its temp dir. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        log.info("%s stopped %s", self.name, kv(port=self.port))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, health_url: str, check: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            body = _http_ok(health_url)
            if body is not None and check in body:
                return
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise ConfigError(
            f"{self.name} did not become ready on port {self.port}; log tail:\n{tail}"
        )


def _spawn(binary: str, args: list[str], work_dir: Path, name: str) -> subprocess.Popen[bytes]:
    path = shutil.which(binary)
    if path is None:
        raise ConfigError(
            f"{binary} not found on PATH; install it (Debian: apt-get install "
            f"{'etcd-server' if binary == 'etcd' else 'nats-server'}) or run scripts/setup.sh"
        )
    log_file = open(work_dir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
    env = dict(os.environ)
    env.setdefault("ETCD_UNSUPPORTED_ARCH", os.uname().machine)
    try:
        # die_with_parent: `kill -9` of whoever started the server must not leave it running.
        return subprocess.Popen(
            die_with_parent([path, *args]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work_dir,
            env=env,
            start_new_session=True,
        )
    finally:
        log_file.close()


class EtcdProcess(_ServerProcess):
    peer_port: int = 0

    @property
    def url(self) -> str:
        return f"etcd://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
    ) -> EtcdProcess:
        """A fresh etcd (empty data dir); ports default to free ones."""
        work_dir = Path(tempfile.mkdtemp(prefix="mixroute-etcd-"))
        client_port = client_port or free_port(host)
        peer_port = peer_port or free_port(host)
        client_url, peer_url = f"http://{host}:{client_port}", f"http://{host}:{peer_port}"
        args = [
            "--name", "mixroute",
            "--data-dir", str(work_dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"mixroute={peer_url}",
            "--log-level", "warn",
        ]  # fmt: skip
        process = _spawn("etcd", args, work_dir, "etcd")
        server = cls("etcd", process, work_dir, host, client_port, client_port)
        server.peer_port = peer_port
        server._wait_ready(f"{client_url}/health", '"health":"true"')
        log.info("etcd ready %s", kv(url=server.url))
        return server


class NatsProcess(_ServerProcess):
    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def connz(self) -> dict[str, object]:
        """The monitoring endpoint's view of client connections (`num_connections`, names)."""
        body = _http_ok(f"{self.monitor_url}/connz")
        if body is None:
            raise ConfigError(f"nats monitoring at {self.monitor_url} did not answer")
        result: dict[str, object] = json.loads(body)
        return result

    @classmethod
    def start(cls, host: str = "127.0.0.1") -> NatsProcess:
        work_dir = Path(tempfile.mkdtemp(prefix="mixroute-nats-"))
        port, monitor_port = free_port(host), free_port(host)
        args = ["-a", host, "-p", str(port), "-m", str(monitor_port), "-n", "mixroute"]
        process = _spawn("nats-server", args, work_dir, "nats")
        server = cls("nats", process, work_dir, host, port, monitor_port)
        server._wait_ready(f"{server.monitor_url}/healthz", "ok")
        log.info("nats ready %s", kv(url=server.url, monitor=server.monitor_url))
        return server
