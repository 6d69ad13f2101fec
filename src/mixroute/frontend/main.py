"""`mixroute frontend`: the OpenAI API in front of the workers found in discovery, with
KV-aware (or round-robin / random) routing and disaggregated prefill when prefill
workers exist."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
from multiprocessing.process import BaseProcess

import msgspec

from mixroute.errors import ConfigError, MixrouteError
from mixroute.frontend import processes
from mixroute.frontend.admission import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_MAX_INFLIGHT_REQUESTS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_IDLE_TIMEOUT_S,
    ApiLimits,
)
from mixroute.frontend.app import create_app
from mixroute.frontend.disagg import DisaggSettings
from mixroute.frontend.engine_client import DEFAULT_MIGRATION_LIMIT, RoutedBackend
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.models import ModelRegistry, RouterSettings
from mixroute.frontend.preprocess import tokenizer_executor
from mixroute.frontend.routing.feed import KvEventFeed
from mixroute.frontend.routing.selector import ROUTER_MODES
from mixroute.logs import kv, setup_logging
from mixroute.protocol.names import kv_router_key
from mixroute.runtime.address import advertised_host, url_host
from mixroute.runtime.loop import run_main
from mixroute.runtime.options import add_runtime_arguments, open_runtime

log = logging.getLogger("mixroute.frontend")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--router-mode", choices=ROUTER_MODES, default="kv")
    parser.add_argument(
        "--kv-overlap-weight",
        type=float,
        default=None,
        help="weight of prefill blocks in the KV cost; 1 is the plain DESIGN cost, higher keeps "
        "prefix groups on fewer workers (default: env MIXROUTE_KV_OVERLAP_WEIGHT or 4)",
    )
    parser.add_argument("--kv-temperature", type=float, default=0.0, help="softmax temperature over costs (0: lowest wins)")
    parser.add_argument("--approx-ttl", type=float, default=120.0, help="seconds a decision is remembered when a worker sends no KV events")
    parser.add_argument(
        "--no-kv-events",
        action="store_true",
        help="ignore workers' KV events; route from this frontend's own decisions (expiring after --approx-ttl)",
    )
    parser.add_argument("--disagg-min-prompt-tokens", type=int, default=64, help="shorter prompts run aggregated")
    parser.add_argument("--no-disagg", action="store_true", help="never use prefill workers")
    parser.add_argument(
        "--migration-limit",
        type=int,
        default=DEFAULT_MIGRATION_LIMIT,
        help="times one request may continue on another worker after its worker died mid-stream (0: fail the stream)",
    )
    parser.add_argument("--router-id", default=None, help="id under v1/kv_routers/{namespace}/ (default: random)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="frontend processes accepting on the one port (SO_REUSEPORT), each with its own event loop, "
        "indexer and load view (default 1)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, help="larger request bodies get 413"
    )
    limits.add_argument(
        "--max-inflight-requests",
        type=int,
        default=DEFAULT_MAX_INFLIGHT_REQUESTS,
        help="generation requests served at once; more get 429 with Retry-After (0: no limit)",
    )
    limits.add_argument(
        "--request-idle-timeout-s",
        type=float,
        default=DEFAULT_REQUEST_IDLE_TIMEOUT_S,
        help="fail a request (503) when its worker sends nothing for this long (0: no limit)",
    )
    limits.add_argument(
        "--request-timeout-s", type=float, default=0.0, help="fail a request (503) running longer than this (0: no limit)"
    )
    limits.add_argument(
        "--drain-timeout-s",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        help="on SIGTERM/SIGINT, stop accepting and let requests in progress finish for this long; "
        "those still running then end with a 503 (an error chunk and [DONE] on a stream); "
        "a second signal ends them at once",
    )
    parser.add_argument("--log-level", default=None)
    add_runtime_arguments(parser)


def limits_from_args(args: argparse.Namespace) -> ApiLimits:
    flags = ("max_request_bytes", "max_inflight_requests", "request_idle_timeout_s", "request_timeout_s", "migration_limit", "drain_timeout_s")
    for flag in flags:
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0")
    if args.max_request_bytes == 0:
        raise ConfigError("--max-request-bytes must be > 0")
    return ApiLimits(
        max_request_bytes=args.max_request_bytes,
        max_inflight_requests=args.max_inflight_requests,
        request_idle_timeout_s=args.request_idle_timeout_s,
        request_timeout_s=args.request_timeout_s,
    )


class _RouterRecord(msgspec.Struct, kw_only=True):
    router_id: str
    mode: str
    temperature: float
    disagg_min_prompt_tokens: int
    http_address: str


def router_settings_from_args(args: argparse.Namespace) -> RouterSettings:
    if args.kv_overlap_weight is not None and args.kv_overlap_weight < 0:
        raise ConfigError("--kv-overlap-weight must be >= 0")
    if args.kv_temperature < 0:
        raise ConfigError("--kv-temperature must be >= 0")
    return RouterSettings(
        args.router_mode,
        args.kv_temperature,
        args.approx_ttl,
        use_kv_events=not args.no_kv_events,
        overlap_weight=args.kv_overlap_weight,
    )


async def _serve(
    args: argparse.Namespace,
    *,
    index: int = 0,
    sock: socket.socket | None = None,
    others: list[BaseProcess] | None = None,
    parent_pid: int | None = None,
) -> int:
    """One frontend process. With `--processes N` > 1: process 0 gets the socket it bound
    and the other processes (`others`) to watch; process i > 0 binds its own socket once
    its view of the workers is ready, and watches process 0 (`parent_pid`)."""
    import uvicorn

    settings = router_settings_from_args(args)
    limits = limits_from_args(args)
    router_id = args.router_id or f"{secrets.randbits(48):x}"
    if args.processes > 1:
        router_id = f"{router_id}-{index}"
    runtime = await open_runtime(args)
    discovery = runtime.discovery
    subscriber = await runtime.event_subscriber(name=f"mixroute-frontend-{router_id}")
    client = runtime.request_client
    registry = ModelRegistry(args.namespace, settings, tokenizer_executor())
    feed = KvEventFeed(args.namespace, subscriber, client, registry.worker)
    registry.on_worker_added = feed.worker_added
    metrics = ApiMetrics()
    metrics.add_load_source(registry.load_samples)
    metrics.add_kv_feed_source(lambda: (feed.num_batches, feed.num_dumps))
    disagg = DisaggSettings(args.disagg_min_prompt_tokens, not args.no_disagg)
    backend = RoutedBackend(registry, client, metrics, disagg, args.migration_limit)
    app = create_app(backend, metrics, limits=limits)
    tasks = [
        asyncio.create_task(registry.run(discovery), name="discovery-watch"),
        asyncio.create_task(feed.run(), name="kv-event-feed"),
    ]
    if others:
        tasks.append(asyncio.create_task(processes.watch_others(others), name="frontend-processes"))
    if parent_pid is not None:
        tasks.append(asyncio.create_task(processes.watch_parent(parent_pid), name="first-frontend-process"))
    freeze = asyncio.create_task(_freeze_when_ready(registry), name="gc-freeze")
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.http_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # A backstop only: the drain below ends every generation first.
        timeout_graceful_shutdown=args.drain_timeout_s + 5.0,
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    inflight = app.state.inflight

    def end_inflight() -> None:
        ended = inflight.end_all()
        if ended:
            log.warning("drain over; requests still running ended with 503 %s", kv(requests=ended))

    def stop() -> None:
        if stopping.is_set():
            end_inflight()  # a second signal: do not wait for the drain
            return
        server.should_exit = True
        stopping.set()
        log.info("stopping: draining requests in progress %s", kv(requests=len(inflight), seconds=args.drain_timeout_s))
        loop.call_later(args.drain_timeout_s, end_inflight)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    record = _RouterRecord(
        router_id=router_id,
        mode=args.router_mode,
        temperature=args.kv_temperature,
        disagg_min_prompt_tokens=args.disagg_min_prompt_tokens,
        # What other machines can reach: never 0.0.0.0 (Kubernetes binds that).
        http_address=f"http://{url_host(advertised_host(args.host, args.advertise_host))}:{args.http_port}",
    )
    await discovery.put(kv_router_key(args.namespace, router_id), msgspec.json.encode(record))
    try:
        if args.processes > 1 and sock is None:
            # Listen only once the workers and models are known: the kernel sends new
            # connections to listening sockets only, so none reaches a process not ready.
            waits = [asyncio.create_task(registry.ready.wait()), asyncio.create_task(stopping.wait())]
            done, _ = await asyncio.wait([*waits, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            if stopping.is_set():
                return 0
            if not registry.ready.is_set():
                return _background_failure(done)
            sock = processes.bind_listener(args.host, args.http_port, reuse_port=True)
        log.info(
            "frontend listening %s",
            kv(address=record.http_address, mode=args.router_mode, router_id=router_id, process=index, pid=os.getpid()),
        )
        serve = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]), name="http")
        done, _ = await asyncio.wait([serve, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if serve not in done:
            return _background_failure(done)
        return 0
    finally:
        server.should_exit = True
        freeze.cancel()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
        await runtime.close()


async def _freeze_when_ready(registry: ModelRegistry) -> None:
    """Once the first models and tokenizers are loaded, move every object alive then
    (modules, tokenizers, the app) out of the cyclic collector's reach: a full collection
    otherwise walks them all again, 25-33 ms that land inside some request
    (bench/results/routing.md). Objects made later are collected as usual."""
    await registry.ready.wait()
    gc.collect()
    gc.freeze()
    log.info("start-up objects frozen %s", kv(frozen=gc.get_freeze_count()))


def _background_failure(done: set[asyncio.Task[object]]) -> int:
    # Routing without its discovery watch or event feed would go stale silently; a
    # frontend process gone (or process 0 gone) leaves the set incomplete.
    for task in done:
        error = None if task.cancelled() else task.exception()
        log.error("background task ended; stopping %s", kv(task=task.get_name(), error=repr(error)))
    return 1


def run(args: argparse.Namespace) -> int:
    if args.processes < 1:
        setup_logging(args.log_level, component="frontend")
        log.error("frontend failed %s", kv(error="--processes must be >= 1"))
        return 2
    if args.processes == 1:
        return run_process(args)
    # Bind before starting the others: `--http-port 0` becomes one port for all of them.
    setup_logging(args.log_level, component="frontend-0")
    try:
        sock = processes.bind_listener(args.host, args.http_port, reuse_port=True)
    except OSError as exc:
        log.error("frontend failed %s", kv(error=f"cannot listen on {args.host}:{args.http_port}: {exc}"))
        return 2
    args.http_port = sock.getsockname()[1]
    args.router_id = args.router_id or f"{secrets.randbits(48):x}"
    others = processes.start_others(args, args.processes)
    try:
        return run_process(args, sock=sock, others=others)
    finally:
        processes.stop_others(others)


def run_process(
    args: argparse.Namespace,
    *,
    index: int = 0,
    sock: socket.socket | None = None,
    others: list[BaseProcess] | None = None,
    parent_pid: int | None = None,
) -> int:
    """Run one frontend process until it is stopped; its exit code."""
    setup_logging(args.log_level, component="frontend" if args.processes == 1 else f"frontend-{index}")
    try:
        return run_main(_serve(args, index=index, sock=sock, others=others, parent_pid=parent_pid))
    except MixrouteError as exc:
        log.error("frontend failed %s", kv(error=exc))
        return 2
