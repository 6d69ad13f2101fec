"""`mixroute router`: parse flags, load config and signals, serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from mixroute.errors import ConfigError
from mixroute.logs import kv, setup_logging
from mixroute.router.config import DEFAULT_CONFIG_PATH, RouterConfig

if TYPE_CHECKING:
    from mixroute.router.reload import ConfigSource
    from mixroute.router.server import RouterServer
    from mixroute.router.signals.screen_process import ScreenProcess

log = logging.getLogger("mixroute.router")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                        help="router YAML config (default: the packaged default_config.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address for HTTP and ext_proc")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (proxy, API, metrics)")
    parser.add_argument("--mode", choices=["proxy", "extproc", "both"], default="proxy",
                        help="proxy: OpenAI proxy; extproc: Envoy ext_proc gRPC server; both")
    parser.add_argument("--extproc-port", type=int, default=50051, help="ext_proc gRPC port")
    parser.add_argument("--no-watch", action="store_true", help="do not reload the config when it changes")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    parser.add_argument("--drain-timeout-s", type=float, default=10.0,
                        help="on SIGTERM/SIGINT, stop accepting and let requests in progress finish for this "
                             "long; those still running then end with a 503 (an error chunk and [DONE] on a "
                             "stream); a second signal ends them at once")
    parser.add_argument("--screen-process", choices=["auto", "on", "off"], default="auto",
                        help="run PII detection and the jailbreak sentence scan in a child "
                             "process, beside the other signals (auto: on where this process may "
                             "use 2 CPUs or more); off: all signals in the router process")
    parser.add_argument("--refiner-device", default="cpu",
                        help="torch device of the category refiner (classifier.category_refiner): "
                             "cpu (default) or cuda[:N]")


async def _serve(args: argparse.Namespace) -> int:
    from mixroute.router.reload import ConfigSource
    from mixroute.router.signals.screen_process import ScreenProcess

    if args.drain_timeout_s < 0:
        raise ConfigError("--drain-timeout-s must be >= 0")
    source = ConfigSource(args.config)
    _check_ports(args)
    screen_process = ScreenProcess() if wants_screen_process(args.screen_process) else None
    if screen_process is not None:
        # Beside the child, the tokenizer's own thread pool would only compete with it.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        server = await _start(args, source, screen_process)
    except BaseException:
        if screen_process is not None:
            screen_process.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            server.end_forwards()  # a second signal: do not wait for the drain
        else:
            log.info("stopping: draining requests in progress %s", kv(seconds=args.drain_timeout_s))
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    waiter = asyncio.create_task(stop.wait())
    serving = asyncio.create_task(server.wait())
    await asyncio.wait([waiter, serving], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await server.stop()
    return 0


async def _start(args: argparse.Namespace, source: ConfigSource, screen_process: ScreenProcess | None) -> RouterServer:
    from mixroute.router.server import RouterServer, ServerOptions, build_core
    from mixroute.router.signals import load_signal_models

    # The child loads its own models meanwhile (a fresh interpreter: ~10 s). A config that
    # screens nothing (PII and the sentence scan off) does without it (~750 MB) until a
    # reload turns screening on.
    child = None
    if screen_process is not None and needs_screening(source.current):
        child = asyncio.create_task(asyncio.to_thread(screen_process.start))
    elif screen_process is not None:
        log.info("no screening in the config: the screening child process starts when a reload asks for it")
    log.info("loading router signals (embedder, category, jailbreak, PII)")
    models = await asyncio.to_thread(load_signal_models, screen_process is None)
    if child is not None:
        await child
    refiner = getattr(models.category, "refiner", None)
    if refiner is not None:
        refiner.device = args.refiner_device
    if source.current.classifier.category_refiner and refiner is not None:
        # Now rather than on the first unsure prompt: a missing artifact stops the start.
        log.info("loading the category refiner (classifier.category_refiner: true)")
        await asyncio.to_thread(refiner.load)
    options = ServerOptions(host=args.host, port=args.port, mode=args.mode,
                            extproc_port=args.extproc_port, watch_config=not args.no_watch,
                            drain_timeout_s=args.drain_timeout_s)
    server = RouterServer(build_core(source, models, screen_process=screen_process), options)
    await server.start()
    return server


def needs_screening(config: RouterConfig) -> bool:
    """Whether `config` asks for what the screening child runs: PII detection (on, and some
    model's policy forbids a type the detector knows), the sentence scan."""
    from mixroute.router.classifiers.pii import DEFAULT_ENTITIES
    from mixroute.router.signals.pii_scope import actionable_pii_types

    pii = config.pii.enabled and bool(actionable_pii_types(config, DEFAULT_ENTITIES))
    return pii or (config.jailbreak.enabled and config.jailbreak.scan_sentences)


def wants_screen_process(choice: str) -> bool:
    """`--screen-process`: auto is on where this process may use 2 CPUs or more."""
    if choice != "auto":
        return choice == "on"
    return usable_cpus() >= 2


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float:
    """CPUs this process may run on, capped by a cgroup v2 CPU quota (a Kubernetes limit)."""
    cpus: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def _check_ports(args: argparse.Namespace) -> None:
    """Before the models load (~15 s): a port in use is a one-line error, not two tracebacks."""
    from mixroute.up.ports import is_port_free

    if ":" in args.host:  # an IPv6 address: left to the server to report
        return
    wanted = {"--port": args.port}
    if args.mode in ("extproc", "both"):
        wanted["--extproc-port"] = args.extproc_port
    for flag, port in wanted.items():
        if not is_port_free(port, args.host):
            raise ConfigError(f"port {port} on {args.host} is already in use; stop what holds it or pass {flag} N")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, component="router")
    try:
        return asyncio.run(_serve(args))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
