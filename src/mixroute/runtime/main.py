"""Operator tools for the runtime: look into discovery and the event plane, or run the
infrastructure servers by hand.

    python3 -m mixroute.runtime ls [--prefix v1/]          # keys and values now
    python3 -m mixroute.runtime watch [--prefix v1/instances/]
    python3 -m mixroute.runtime events [--subject namespace.dynamo.]   # tail the event plane
    python3 -m mixroute.runtime infra                     # etcd + nats-server until Ctrl-C

All take the runtime flags (--discovery, --events, --namespace, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from mixroute.errors import MixrouteError
from mixroute.runtime.loop import run_main
from mixroute.runtime.options import add_runtime_arguments, open_runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["ls", "watch", "events", "infra"], help="what to do")
    parser.add_argument("--prefix", default="v1/", help="discovery key prefix (ls, watch)")
    parser.add_argument(
        "--subject", default=None, help="event subject prefix (events; default namespace.<ns>.)"
    )
    add_runtime_arguments(parser)


def _show(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return f"<{len(value)} bytes>"


async def _inspect(args: argparse.Namespace) -> int:
    runtime = await open_runtime(args)
    try:
        if args.action == "ls":
            for key, value in sorted((await runtime.discovery.get_prefix(args.prefix)).items()):
                print(f"{key} {_show(value)}")
        elif args.action == "watch":
            async for event in runtime.discovery.watch_prefix(args.prefix):
                shown = "" if event.value is None else _show(event.value)
                print(f"{event.kind} {event.key} {shown}", flush=True)
        else:
            subscriber = await runtime.event_subscriber(name="mixroute-runtime-tail")
            prefix = args.subject if args.subject is not None else f"namespace.{runtime.namespace}."
            async for subject, payload in subscriber.subscribe(prefix):
                print(f"{subject} {len(payload)} bytes", flush=True)
    finally:
        await asyncio.shield(runtime.close())
    return 0


async def _infra() -> int:
    from mixroute.runtime.infra import EtcdProcess, NatsProcess

    # Started on this (the main) thread, not a worker thread: the servers' parent-death
    # signal is tied to the thread that forked them. Blocking here is startup only.
    etcd = EtcdProcess.start()
    try:
        nats = NatsProcess.start()
    except BaseException:
        etcd.stop()
        raise
    print(
        f"--discovery {etcd.url} --events {nats.url}  (NATS monitoring {nats.monitor_url})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        nats.stop()
        etcd.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "infra":
            return run_main(_infra())
        return run_main(_inspect(args))
    except KeyboardInterrupt:
        return 130
    except MixrouteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m mixroute.runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args())
