"""One local stack: start infrastructure and children, wait until ready, run until told
to stop, stop everything. `run_stack` is the whole lifetime of `mixroute up`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import signal
import time
from typing import TextIO

import httpx

from mixroute.errors import ConfigError
from mixroute.protocol.names import ENDPOINT_GENERATE, instances_prefix
from mixroute.runtime.discovery.base import Discovery
from mixroute.up import plan
from mixroute.up.banner import ready_banner
from mixroute.up.envoy import find_envoy, write_envoy_config
from mixroute.up.options import UpOptions
from mixroute.up.ports import free_port, is_port_free
from mixroute.up.readiness import (
    Check,
    Probe,
    Progress,
    WaitResult,
    http_ok,
    model_listed,
    wait_until_ready,
)
from mixroute.up.router_config import write_router_config
from mixroute.up.supervisor import Child, ChildSpec, Supervisor

_LOG_TAIL_LINES = 40
# A worker that dies is started again, at most this many times within this window.
_MAX_RESTARTS = 3
_RESTART_WINDOW_S = 60.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""SIGHUP too: closing the terminal must stop the stack cleanly, not just kill `up`."""


class Stack:
    def __init__(self, options: UpOptions, model: plan.ModelChoice, out: TextIO) -> None:
        self.options = options
        self.model = model
        self.out = out
        self.supervisor = Supervisor(options.log_dir)
        self._infra: list[object] = []
        self._router_http_port = options.router_port
        self.banner_lines: list[str] = []
        self._run_dir_lock: TextIO | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ---- startup ----

    def check_ports(self) -> None:
        wanted = {"--frontend-port": self.options.frontend_port}
        if self.options.has_router:
            wanted["--router-port"] = self.options.router_port
        if self.options.has_envoy:
            wanted["--extproc-port"] = self.options.extproc_port
        for flag, port in wanted.items():
            if not is_port_free(port, _bind_host(self.options.host)):
                raise ConfigError(
                    f"port {port} is already in use; stop what holds it or pass {flag} N"
                )

    def lock_run_dir(self) -> None:
        """Held while this stack runs: two stacks on one run dir would share its file
        discovery and quietly route across each other's workers."""
        path = self.options.run_dir / "up.lock"
        lock = open(path, "a+")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise ConfigError(
                f"another mixroute up (pid {holder}) runs from {self.options.run_dir}; stop it, "
                "or give this one its own --run-dir (and ports)"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self._run_dir_lock = lock

    def start_infra(self) -> None:
        """Local etcd and nats-server (`--with-infra`); the children then use them."""
        from mixroute.runtime.infra import EtcdProcess, NatsProcess

        self.say("starting etcd and nats-server on loopback ...")
        etcd = EtcdProcess.start()
        self._infra.append(etcd)
        nats = NatsProcess.start()
        self._infra.append(nats)
        self.options = dataclasses.replace(self.options, etcd_url=etcd.url, nats_url=nats.url)
        self.banner_lines.append(f"{'nats monitoring':<38} {nats.monitor_url}")
        self.say(f"  ok  etcd {etcd.url}, nats {nats.url} (monitoring {nats.monitor_url})")

    def child_specs(self) -> list[ChildSpec]:
        options = self.options
        specs = plan.worker_specs(options, self.model) + [plan.frontend_spec(options)]
        if not options.has_router:
            return specs
        config = write_router_config(
            options.config, self.model.served_name, options.frontend_url, options.run_dir
        )
        if not options.has_envoy:
            return specs + [plan.router_spec(options, config, options.router_port)]
        self._router_http_port = options.router_http_port or free_port()
        envoy_config = write_envoy_config(options, options.run_dir)
        self.banner_lines.append(
            f"{'router API (direct)':<38} http://{self.options.connect_host}:{self._router_http_port}"
        )
        return specs + [
            plan.router_spec(options, config, self._router_http_port),
            plan.envoy_spec(find_envoy(), envoy_config),
        ]

    def start_children(self, specs: list[ChildSpec]) -> None:
        for spec in specs:
            child = self.supervisor.start(spec)
            self.say(f"  started {child.name:<18} pid {child.pid:<7} log {child.log_path}")

    def readiness_checks(
        self, client: httpx.AsyncClient, discovery: Discovery, existing: set[str]
    ) -> list[Check]:
        options = self.options
        by_name = {c.name: c for c in self.supervisor.children}
        checks = []
        for group in plan.worker_groups(options):
            prefix = instances_prefix(options.namespace, group.component, ENDPOINT_GENERATE)
            workers = [
                c for name, c in by_name.items() if name.startswith(f"worker-{group.worker_type}-")
            ]
            checks.append(
                Check(
                    f"{group.count} {group.worker_type} worker(s) registered",
                    _registered(discovery, prefix, group.count, existing),
                    children=workers,
                )
            )
        frontend = [by_name["frontend"]]
        served = self.model.served_name
        checks.append(
            Check(
                "frontend /health",
                http_ok(client, f"{options.frontend_url}/health"),
                children=frontend,
            )
        )
        checks.append(
            Check(
                f"frontend lists {served}",
                model_listed(client, f"{options.frontend_url}/v1/models", served),
                children=frontend,
            )
        )
        if options.has_router:
            ready_url = f"http://{options.connect_host}:{self._router_http_port}/ready"
            checks.append(
                Check("router /ready", http_ok(client, ready_url), children=[by_name["router"]])
            )
        if options.has_envoy:
            through_envoy = model_listed(client, f"{options.router_url}/v1/models", served)
            checks.append(
                Check("envoy -> router -> frontend", through_envoy, children=[by_name["envoy"]])
            )
        return checks

    # ---- shutdown ----

    def stop(self) -> None:
        started = time.monotonic()

        def announce(children: list[Child]) -> None:
            running = [c.name for c in children if c.is_running]
            if running:
                self.say(f"  [{time.monotonic() - started:4.1f}s] stopping {', '.join(running)}")

        killed = self.supervisor.stop(self.options.stop_timeout_s, on_stage=announce)
        for child in killed:
            self.say(
                f"  {child.name} did not stop within {self.options.stop_timeout_s:.0f}s; killed it"
                " (its discovery registration expires with its lease)"
            )
        for server in reversed(self._infra):
            server.stop()  # type: ignore[attr-defined]
        self._infra.clear()
        self.say(f"  [{time.monotonic() - started:4.1f}s] all stopped")

    def report_exit(self, child: Child, restarting: bool = False) -> None:
        code = child.poll()
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        if restarting:
            self.say(
                f"\nwarning: {child.name} exited ({how}); starting it again (the frontend "
                f"routes around it meanwhile). Last lines of {child.log_path}:"
            )
        else:
            self.say(f"\nerror: {child.name} exited ({how}). Last lines of {child.log_path}:")
        self.say(_indent(child.tail(_LOG_TAIL_LINES)))


async def run_stack(options: UpOptions, model: plan.ModelChoice, out: TextIO) -> int:
    stack = Stack(options, model, out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        stack.check_ports()
        options.run_dir.mkdir(parents=True, exist_ok=True)
        stack.lock_run_dir()
        options.log_dir.mkdir(parents=True, exist_ok=True)
        if options.with_infra:
            stack.start_infra()
        specs = stack.child_specs()
        result, exited = await _start_and_wait(stack, specs, stop)
        if result is WaitResult.READY:
            elapsed = time.monotonic() - started
            stack.say(ready_banner(stack.options, model, elapsed, stack.banner_lines))
            exited = await _supervise(stack, stop)
        if exited is not None:
            stack.report_exit(exited)
            return 1
        if result is WaitResult.TIMED_OUT:
            stack.say(
                f"\nerror: not ready after {options.ready_timeout_s:.0f}s (--ready-timeout); "
                f"logs in {options.log_dir}"
            )
            return 1
        stack.say("\nstopping ...")
        return 0
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        # A second Ctrl-C while stopping skips the rest of the grace period.
        previous = signal.signal(signal.SIGINT, lambda *_: stack.supervisor.hurry())
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, previous)
        stack.say("stopped.")


async def _start_and_wait(
    stack: Stack, specs: list[ChildSpec], stop: asyncio.Event
) -> tuple[WaitResult, Child | None]:
    from mixroute.runtime.discovery import open_discovery

    # Opened before any child starts: an unreachable etcd fails here, with nothing to undo.
    discovery = await open_discovery(stack.options.discovery_url)
    try:
        existing = set(await discovery.get_prefix(instances_prefix(stack.options.namespace)))
        stack.say(f"starting {len(specs)} processes (logs in {stack.options.log_dir}) ...")
        stack.start_children(specs)
        async with httpx.AsyncClient(trust_env=False) as client:
            checks = stack.readiness_checks(client, discovery, existing)
            stack.say("waiting for the model to load and every component to be ready ...")
            return await wait_until_ready(
                checks, stack.supervisor, stop, stack.options.ready_timeout_s, Progress(stack.out)
            )
    finally:
        await discovery.close()


async def _supervise(stack: Stack, stop: asyncio.Event) -> Child | None:
    """Runs the ready stack until a stop request (None) or the exit of a child that is not
    restarted (that child). A worker that exits is started again, unless it keeps dying:
    more than _MAX_RESTARTS exits within _RESTART_WINDOW_S stop the stack."""
    exits: dict[str, list[float]] = {}
    while True:
        exited = await _wait_for_exit(stack.supervisor, stop)
        if exited is None or not exited.spec.restart:
            return exited
        now = time.monotonic()
        recent = [t for t in exits.get(exited.name, []) if now - t < _RESTART_WINDOW_S] + [now]
        exits[exited.name] = recent
        if len(recent) > _MAX_RESTARTS:
            stack.say(
                f"\n{exited.name} exited {len(recent)} times within {_RESTART_WINDOW_S:.0f}s; "
                "not starting it again"
            )
            return exited
        stack.report_exit(exited, restarting=True)
        child = stack.supervisor.restart(exited)
        stack.say(f"  started {child.name:<18} pid {child.pid:<7} log {child.log_path}")


async def _wait_for_exit(supervisor: Supervisor, stop: asyncio.Event) -> Child | None:
    """Runs until a stop request (None) or a child's exit (that child)."""
    while not stop.is_set():
        exited = supervisor.first_exited()
        if exited is not None:
            return exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
    return None


def _registered(discovery: Discovery, prefix: str, count: int, existing: set[str]) -> Probe:
    """Passes once `count` instances registered under `prefix` that were not there before
    our children started (joining a shared etcd, others' workers must not count)."""

    async def probe() -> bool:
        keys = await discovery.get_prefix(prefix)
        return len(set(keys) - existing) >= count

    return probe


def _bind_host(host: str) -> str:
    return "0.0.0.0" if host in ("", "0.0.0.0") else host


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines()) or "    | (empty log)"
