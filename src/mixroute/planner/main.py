"""`mixroute planner`: watch worker load on the event plane, scale prefill and decode
pools through a connector (local processes or Kubernetes Deployments)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from mixroute.errors import ConfigError, MixrouteError
from mixroute.logs import kv, setup_logging
from mixroute.planner.connectors.base import Connector
from mixroute.planner.load import LoadTable, subject_prefix
from mixroute.planner.planner import Planner
from mixroute.planner.policy import PolicyConfig, Pool, ScalingPolicy
from mixroute.protocol import names
from mixroute.runtime.events.base import EventSubscriber
from mixroute.runtime.loop import run_main
from mixroute.runtime.options import Runtime, add_runtime_arguments, open_runtime

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_arguments(parser)  # --namespace --discovery --events (where workers publish load) ...
    con = parser.add_argument_group("connector")
    con.add_argument("--connector", choices=["local", "kubernetes"], default="local")
    con.add_argument(
        "--k8s-namespace",
        default=None,
        help="namespace of the worker Deployments (default: the pod's own)",
    )
    con.add_argument("--prefill-deployment", default=None, help="Deployment of the prefill pool")
    con.add_argument(
        "--decode-deployment", default=None, help="Deployment of the decode (or aggregated) pool"
    )
    con.add_argument(
        "--k8s-api-url",
        default=None,
        help="API server URL (default: in-cluster); e.g. http://127.0.0.1:8001 via kubectl proxy",
    )
    con.add_argument(
        "--k8s-token-file",
        type=Path,
        default=None,
        help="bearer token file (default: the pod's service-account token)",
    )
    con.add_argument(
        "--k8s-ca-file",
        default=None,
        help="CA bundle for the API server (default: the service-account ca.crt)",
    )
    con.add_argument(
        "--prefill-worker-args",
        default=None,
        help="local: `mixroute worker` arguments of a prefill worker (quoted string)",
    )
    con.add_argument(
        "--decode-worker-args",
        default=None,
        help="local: `mixroute worker` arguments of a decode worker (quoted string)",
    )
    con.add_argument(
        "--worker-log-dir", type=Path, default=None, help="local: write each worker's output here"
    )

    pol = parser.add_argument_group("policy")
    pol.add_argument("--min-replicas", type=int, default=1)
    pol.add_argument("--max-replicas", type=int, default=4)
    pol.add_argument("--interval-s", type=float, default=10.0, help="seconds between decisions")
    pol.add_argument(
        "--scale-up-threshold",
        type=float,
        default=0.8,
        help="pressure (decode: KV utilisation) to grow above",
    )
    pol.add_argument(
        "--scale-down-threshold",
        type=float,
        default=0.3,
        help="pressure to shrink below (with an empty queue)",
    )
    pol.add_argument(
        "--waiting-per-worker",
        type=float,
        default=2.0,
        help="queued requests per worker that force a scale-up",
    )
    pol.add_argument(
        "--prefill-tokens-per-worker",
        type=int,
        default=8192,
        help="prompt tokens in flight one prefill worker absorbs",
    )
    pol.add_argument("--cooldown-up-s", type=float, default=30.0)
    pol.add_argument("--cooldown-down-s", type=float, default=120.0)
    pol.add_argument(
        "--down-stable-s",
        type=float,
        default=60.0,
        help="low load must last this long before a scale-down",
    )
    pol.add_argument("--max-step-up", type=int, default=2)
    pol.add_argument(
        "--startup-grace-s",
        type=float,
        default=180.0,
        help="after a change, wait this long for new workers to report before deciding without them",
    )
    pol.add_argument(
        "--stale-after-s",
        type=float,
        default=15.0,
        help="forget a worker that has not reported for this long",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="count only workers serving this model (served name); default: every worker",
    )
    parser.add_argument("--dry-run", action="store_true", help="log decisions, change nothing")
    parser.add_argument("--log-level", default=None)


def policy_config(args: argparse.Namespace) -> PolicyConfig:
    return PolicyConfig(
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        high=args.scale_up_threshold,
        low=args.scale_down_threshold,
        waiting_per_worker_high=args.waiting_per_worker,
        prefill_tokens_per_worker=args.prefill_tokens_per_worker,
        cooldown_up_s=args.cooldown_up_s,
        cooldown_down_s=args.cooldown_down_s,
        down_stable_s=args.down_stable_s,
        max_step_up=args.max_step_up,
        startup_grace_s=args.startup_grace_s,
    )


def build_connector(args: argparse.Namespace) -> Connector:
    if args.connector == "kubernetes":
        from mixroute.planner.connectors.kubernetes import (
            SERVICE_ACCOUNT_DIR,
            ApiAccess,
            KubernetesConnector,
            in_cluster_namespace,
        )

        deployments: dict[Pool, str] = {}
        if args.prefill_deployment:
            deployments["prefill"] = args.prefill_deployment
        if args.decode_deployment:
            deployments["decode"] = args.decode_deployment
        if args.k8s_api_url:
            ca = args.k8s_ca_file or (
                str(SERVICE_ACCOUNT_DIR / "ca.crt")
                if args.k8s_api_url.startswith("https")
                else False
            )
            access = ApiAccess(args.k8s_api_url, args.k8s_token_file, ca)
        else:
            access = ApiAccess.in_cluster()
        namespace = args.k8s_namespace or in_cluster_namespace()
        if not namespace:
            raise ConfigError("--k8s-namespace is required outside a pod")
        return KubernetesConnector(access, namespace, deployments)

    from mixroute.planner.connectors.local import LocalConnector

    worker_args: dict[Pool, list[str]] = {}
    if args.prefill_worker_args is not None:
        worker_args["prefill"] = shlex.split(args.prefill_worker_args)
    if args.decode_worker_args is not None:
        worker_args["decode"] = shlex.split(args.decode_worker_args)
    if not worker_args:
        raise ConfigError(
            "--connector local needs --decode-worker-args and/or --prefill-worker-args"
        )
    runtime_args = ["--namespace", args.namespace, "--events", args.events]
    if args.discovery:
        runtime_args += ["--discovery", args.discovery]
    return LocalConnector(worker_args, runtime_args, log_dir=args.worker_log_dir)


async def _serve(args: argparse.Namespace) -> int:
    config = policy_config(args)
    connector = build_connector(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    runtime = await open_runtime(args)
    try:
        subscriber = await runtime.event_subscriber(name="planner")
    except BaseException:
        await runtime.close()
        raise
    discovery = runtime.discovery
    loads = LoadTable(stale_after_s=args.stale_after_s, model=args.model)
    consumers = [
        asyncio.create_task(loads.consume(subscriber.subscribe(subject_prefix(args.namespace))), name="load-events")
    ]
    if args.model is not None:
        instances = discovery.watch_prefix(names.instances_prefix(args.namespace))
        consumers.append(asyncio.create_task(loads.consume_instances(instances), name="instances-watch"))
    planner = Planner(ScalingPolicy(config), loads, connector, dry_run=args.dry_run)
    log.info(
        "planner up %s",
        kv(
            connector=args.connector,
            pools=",".join(connector.pools()),
            min=config.min_replicas,
            max=config.max_replicas,
        ),
    )
    return await supervise(planner.run(args.interval_s, stop), consumers, _close(connector, subscriber, runtime))


async def supervise(main: Coroutine[Any, Any, None], consumers: list[asyncio.Task[None]], close: Coroutine[Any, Any, None]) -> int:
    """Runs the planner loop while its input tasks live; always runs `close` (which stops
    local workers), whatever failed. 0 after a normal stop; 1 if an input task ended
    (its load view would go stale, so scaling on it would be wrong)."""
    loop_task = asyncio.create_task(main, name="planner-loop")
    status = 0
    try:
        done, _ = await asyncio.wait([loop_task, *consumers], return_when=asyncio.FIRST_COMPLETED)
        for task in consumers:
            if task in done:
                error = None if task.cancelled() else task.exception()
                log.error("planner input stopped; shutting down %s", kv(task=task.get_name(), error=repr(error)))
                status = 1
        if loop_task in done and loop_task.exception() is not None:
            raise loop_task.exception()  # type: ignore[misc]
    finally:
        for task in (loop_task, *consumers):
            task.cancel()
        # return_exceptions: a failed task must not skip `close` (that leaked every worker).
        for outcome in await asyncio.gather(loop_task, *consumers, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("planner task failed %s", kv(error=repr(outcome)))
        await asyncio.shield(close)
    return status


async def _close(connector: Connector, subscriber: EventSubscriber, runtime: Runtime) -> None:
    try:
        await connector.close()
    finally:
        try:
            await subscriber.close()
        finally:
            await runtime.close()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, component="planner")
    try:
        return run_main(_serve(args))
    except MixrouteError as exc:
        log.error("%s", exc)
        return 2
