"""One served engine: request-plane server, event publishing, discovery record, and the
optional HTTP API. Started in dependency order and registered last, so a router never
sees a worker that cannot answer yet; stopped in reverse (deregistered first)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from mixroute.engine.api import Engine
from mixroute.errors import MixrouteError
from mixroute.logs import kv
from mixroute.protocol.messages import InstanceInfo, WorkerType, encode_json
from mixroute.protocol.names import (
    COMPONENT_BACKEND,
    COMPONENT_PREFILL,
    ENDPOINT_GENERATE,
    instance_key,
)
from mixroute.runtime.address import advertised_host, url_host
from mixroute.runtime.discovery.base import Discovery
from mixroute.runtime.options import Runtime
from mixroute.runtime.requests.base import RequestServer
from mixroute.worker.engines import THREADED_ENGINES, build_engine, engine_has_failed
from mixroute.worker.handlers import (
    KV_DUMP_ENDPOINT,
    KV_EXPORT_ENDPOINT,
    WorkerCounters,
    WorkerHandlers,
)
from mixroute.worker.kv_transfer import KV_RELEASE_ENDPOINT, KV_SHARE_ENDPOINT
from mixroute.worker.publisher import WorkerPublisher

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class WorkerSettings:
    worker_type: WorkerType
    namespace: str
    host: str
    advertise_host: str | None
    http_port: int | None
    model_path: str

    @property
    def component(self) -> str:
        return COMPONENT_PREFILL if self.worker_type == "prefill" else COMPONENT_BACKEND


class WorkerInstance:
    def __init__(self, args: argparse.Namespace, settings: WorkerSettings, worker_id: int) -> None:
        self.args = args
        self.settings = settings
        self.worker_id = worker_id
        self.engine: Engine | None = None
        self.discovery: Discovery | None = None
        self.server: RequestServer | None = None
        self.publisher: WorkerPublisher | None = None
        self._http: object | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._key: str | None = None

    async def start(self, runtime: Runtime, port: int) -> None:
        """Engine, request server, publishers, HTTP; the discovery record last. The runtime
        is shared by the process's instances and closed by the caller."""
        s = self.settings
        started = time.monotonic()
        self.engine = engine = await asyncio.to_thread(build_engine, self.args, self.worker_id)
        self.discovery = runtime.discovery
        events = await runtime.event_publisher(name=f"mixroute-worker-{s.worker_type}-{self.worker_id:x}")
        registry = CollectorRegistry()
        handlers = WorkerHandlers(
            engine,
            runtime.request_client,
            WorkerCounters(registry),
            self.worker_id,
            is_engine_threaded=self.args.engine in THREADED_ENGINES,
            kv_transport=getattr(self.args, "kv_transport", "auto"),
        )
        self.server = await runtime.start_request_server(
            {
                ENDPOINT_GENERATE: handlers.generate,
                KV_EXPORT_ENDPOINT: handlers.kv_export,
                KV_DUMP_ENDPOINT: handlers.kv_dump,
                KV_SHARE_ENDPOINT: handlers.kv_share,
                KV_RELEASE_ENDPOINT: handlers.kv_release,
            },
            port=port,
        )
        handlers.address = self.server.address
        self.publisher = WorkerPublisher(engine, events, namespace=s.namespace, component=s.component, worker_id=self.worker_id)
        self.publisher.start()
        http_address = None
        if s.http_port is not None:
            http_address = await self._start_http(engine, handlers, registry)
        info = InstanceInfo(
            instance_id=self.worker_id,
            namespace=s.namespace,
            component=s.component,
            endpoint=ENDPOINT_GENERATE,
            address=self.server.address,
            model=engine.model_name,
            worker_type=s.worker_type,
            block_size=engine.block_size,
            http_address=http_address,
            model_path=s.model_path,
            max_model_len=engine.max_model_len,
            engine=self.args.engine,
            # Same host id + a torch engine on both sides: KV moves directly (kv_transfer.py).
            host_id=handlers.host_id,
            kv_transport="direct" if handlers.kv_lender.can_lend else "host",
        )
        self._key = instance_key(s.namespace, s.component, ENDPOINT_GENERATE, self.worker_id)
        await self.discovery.put(self._key, encode_json(info))
        log.info(
            "worker ready %s",
            kv(
                worker_id=f"{self.worker_id:x}",
                component=s.component,
                model=engine.model_name,
                address=self.server.address,
                http=http_address or "-",
                startup_s=f"{time.monotonic() - started:.1f}",
            ),
        )

    async def _start_http(self, engine: Engine, handlers: WorkerHandlers, registry: CollectorRegistry) -> str:
        import uvicorn

        from mixroute.frontend.app import create_app
        from mixroute.frontend.backend import ModelEntry
        from mixroute.frontend.metrics import ApiMetrics
        from mixroute.frontend.preprocess import ModelTokenizer
        from mixroute.worker.local_backend import LocalBackend

        s = self.settings
        tokenizer = await ModelTokenizer.load(s.model_path)
        entry = ModelEntry(engine.model_name, tokenizer, engine.block_size, engine.max_model_len, int(time.time()))
        # Worker counters and the API's metrics share one /metrics page.
        metrics = ApiMetrics(prefix="mixroute_worker_api", registry=registry)
        app = create_app(LocalBackend(entry, handlers), metrics)
        config = uvicorn.Config(app, host=s.host, port=s.http_port or 0, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        self._http = server
        self._http_task = asyncio.create_task(server.serve(), name="worker-http")
        while not server.started:
            if self._http_task.done():
                self._http_task.result()
                raise OSError(f"the HTTP server on {s.host}:{s.http_port} did not start")
            await asyncio.sleep(0.02)
        # The bound port, not the flag: `--http-port 0` picks a free one.
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://{url_host(advertised_host(s.host, s.advertise_host))}:{port}"

    def failure(self) -> str | None:
        """Why this instance can no longer serve (engine, publisher or HTTP server gone),
        or None while it is healthy."""
        if self.engine is not None and engine_has_failed(self.engine):
            return "the engine stopped running"
        if self.publisher is not None and (reason := self.publisher.failure()) is not None:
            return f"event publishing stopped: {reason}"
        if self._http_task is not None and self._http_task.done():
            return "the HTTP server stopped"
        return None

    async def wait_failure(self, interval_s: float = 0.5) -> str:
        """Returns (with the reason) once `failure()` reports one."""
        while (reason := self.failure()) is None:
            await asyncio.sleep(interval_s)
        return reason

    async def stop(self) -> None:
        """Deregisters first so routers stop sending, then stops what `start` started."""
        if self.discovery is not None and self._key is not None:
            with contextlib.suppress(MixrouteError, OSError):
                await self.discovery.delete(self._key)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True  # type: ignore[attr-defined]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._http_task, 5.0)
        if self.publisher is not None:
            await self.publisher.stop()
        if self.server is not None:
            await self.server.stop()
        if self.engine is not None:
            await self.engine.close()
