"""Fixtures for the router's integration tests: a real upstream process, the real signal
models (loaded once per session), routers running in a background event-loop thread,
and (in test_envoy.py) a real Envoy process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from string import Template

import httpx
import pytest

from mixroute.router.config import parse_config
from mixroute.router.reload import ConfigSource
from mixroute.router.server import RouterServer, ServerOptions, build_core

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def signal_models():
    from mixroute.router.signals import load_signal_models

    try:
        models = load_signal_models()
    except ImportError as exc:
        pytest.skip(f"real router signals are not available yet: {exc}")
    models.embedder.encode(["warm up"])  # load weights once, outside any test's timing
    models.pii.detect("warm up")
    return models


class UpstreamProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "upstream_app.py"), "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_http(f"{self.url}/health", proc=self.proc)

    def received(self) -> list[dict]:
        return httpx.get(f"{self.url}/_received").json()

    def abandoned(self) -> list[dict]:
        return httpx.get(f"{self.url}/_abandoned").json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset")


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamProcess]:
    up = UpstreamProcess()
    yield up
    stop_process(up.proc)


class RouterThread:
    """A RouterServer on its own event loop in a daemon thread (tests talk to it over HTTP)."""

    def __init__(self, source: ConfigSource, models, options: ServerOptions, screen_process=None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="router-test-loop")
        self._thread.start()
        self.server: RouterServer = self._call(self._start(source, models, options, screen_process))
        self.url = f"http://127.0.0.1:{self.server.port}"

    async def _start(self, source, models, options, screen_process) -> RouterServer:
        server = RouterServer(build_core(source, models, screen_process=screen_process), options)
        await server.start()
        return server

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        if self.loop.is_closed():
            return  # closed by the test already
        self._call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def start_router(signal_models, tmp_path):
    """start_router(yaml_text, mode=..., watch=...) -> RouterThread, stopped after the test."""
    started: list[RouterThread] = []

    def start(
        yaml_text: str, mode: str = "proxy", watch: bool = False, path: Path | None = None, drain_timeout_s: float = 10.0,
        screen_process=None,
    ) -> RouterThread:
        if path is None:
            source = ConfigSource(None, parse_config(yaml_text))
        else:
            path.write_text(yaml_text)
            source = ConfigSource(path)
        options = ServerOptions(port=0, mode=mode, extproc_port=free_port() if mode != "proxy" else 0,
                                watch_config=watch, drain_timeout_s=drain_timeout_s)
        router = RouterThread(source, signal_models, options, screen_process)
        started.append(router)
        return router

    yield start
    for router in started:
        router.close()


def router_config(upstream_url: str, **overrides: str) -> str:
    """The integration config, with `$name` placeholders overridable per test."""
    values = {"endpoint": upstream_url, "ttl": "60", "cache_backend": "memory", "milvus_uri": "unused.db",
              "math_model": "qwen-big"}
    values.update(overrides)
    return Template((HERE / "router_config.yaml").read_text()).substitute(values)
