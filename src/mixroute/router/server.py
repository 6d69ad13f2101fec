"""Wires one router: config source, signals, cache, core, and the front doors it serves.

`RouterServer.start()` binds the HTTP app (proxy + API) and/or the ext_proc gRPC server
and the config watcher; `stop()` undoes it. Both `main.py` and the tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass
from typing import Literal

import httpx
import uvicorn

from mixroute.logs import kv
from mixroute.router.api import build_app
from mixroute.router.cache import SemanticCache
from mixroute.router.core import RouterCore
from mixroute.router.metrics import RouterMetrics
from mixroute.router.proxy import Proxy
from mixroute.router.reload import ConfigSource
from mixroute.router.signals import SignalModels, SignalRunner
from mixroute.router.signals.screen_process import ScreenProcess

log = logging.getLogger(__name__)

Mode = Literal["proxy", "extproc", "both"]


@dataclass(slots=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    mode: Mode = "proxy"
    extproc_port: int = 50051
    watch_config: bool = True
    drain_timeout_s: float = 10.0
    """At stop, requests in progress get this long to finish before they are ended (503)."""


def build_core(
    source: ConfigSource, models: SignalModels, metrics: RouterMetrics | None = None,
    screen_process: ScreenProcess | None = None,
) -> RouterCore:
    cache = SemanticCache(source.current.cache, getattr(models.embedder, "dim", None))
    runner = SignalRunner(models, screen_process=screen_process)
    return RouterCore(source, runner, metrics or RouterMetrics(), cache)


class RouterServer:
    def __init__(self, core: RouterCore, options: ServerOptions) -> None:
        self.core = core
        self.options = options
        self.transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64)
        )
        self.proxy = Proxy(core, self.transport)
        self.app = build_app(core, self.proxy)
        self.port: int | None = None
        self.extproc_port: int | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._grpc = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_watch = asyncio.Event()

    async def start(self) -> None:
        opts = self.options
        if opts.mode in ("extproc", "both"):
            from mixroute.router.extproc import start_extproc_server

            self._grpc, self.extproc_port = await start_extproc_server(self.core, opts.host, opts.extproc_port)
        # The HTTP app also serves /health, /metrics and /api/v1/classify in extproc mode.
        config = uvicorn.Config(self.app, host=opts.host, port=opts.port, log_level="warning",
                                access_log=False, lifespan="off",
                                # a backstop only: the drain in stop() ends every forward first
                                timeout_graceful_shutdown=opts.drain_timeout_s + 2.0)
        self._uvicorn = uvicorn.Server(config)
        # Signals belong to main.py (and tests run the server off the main thread).
        self._uvicorn.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._tasks.append(asyncio.create_task(self._uvicorn.serve(), name="router-http"))
        while not self._uvicorn.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # re-raise a bind failure
                raise RuntimeError("router HTTP server exited during startup")
            await asyncio.sleep(0.02)
        self.port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        # The models are loaded by now: hundreds of thousands of long-lived objects
        # (Presidio, spaCy, transformers). Freezing them keeps the cyclic GC from walking
        # them again in every full collection, which otherwise lands in some request.
        gc.collect()
        gc.freeze()
        if opts.watch_config and self.core.source.path is not None:
            watch = self.core.source.watch(self.core.metrics, self._stop_watch)
            self._tasks.append(asyncio.create_task(watch, name="router-config-watch"))
        log.info("router listening on http://%s:%s mode=%s", opts.host, self.port, opts.mode)

    async def wait(self) -> None:
        await self._tasks[0]

    def end_forwards(self) -> None:
        """End the requests still waiting on an upstream (503, or an error chunk and [DONE])."""
        ended = self.proxy.end_forwards()
        if ended:
            log.warning("drain over; forwards still running ended with 503 %s", kv(requests=ended))

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish for `drain_timeout_s`, then end
        the rest (see `end_forwards`)."""
        self._stop_watch.set()
        timer = None
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            timer = asyncio.get_running_loop().call_later(self.options.drain_timeout_s, self.end_forwards)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if timer is not None:
            timer.cancel()
        await self.transport.aclose()
        self.core.runner.close()
        if self.core.cache is not None:
            self.core.cache.close()
