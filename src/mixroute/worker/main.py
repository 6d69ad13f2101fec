"""`mixroute worker`: host one engine (or several mocker engines), serve it on the request
plane, publish its KV events and load, register it in discovery; optionally serve the
OpenAI API for this worker alone (`--http-port`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal

from mixroute.errors import ConfigError, MixrouteError
from mixroute.logs import kv, setup_logging
from mixroute.protocol.messages import WorkerType
from mixroute.runtime.loop import run_main
from mixroute.runtime.options import add_runtime_arguments, open_runtime
from mixroute.worker.engines import ENGINES, parse_device
from mixroute.worker.instance import WorkerInstance, WorkerSettings
from mixroute.worker.kv_transfer import TRANSPORT_MODES

log = logging.getLogger("mixroute.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model and engine")
    m.add_argument("--model", required=False, default=None, help="model directory (config.json, weights, tokenizer)")
    m.add_argument("--served-model-name", default=None, help="name clients use (default: the directory name)")
    m.add_argument("--worker-type", choices=["prefill", "decode", "both"], default="both")
    m.add_argument("--is-prefill-worker", action="store_true", help="same as --worker-type prefill")
    m.add_argument("--engine", choices=sorted(ENGINES), default="torch")
    m.add_argument("--device", default="cpu", help="cpu, cuda, or cuda:N (GPU N; tensor-parallel rank r uses N+r)")
    m.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    m.add_argument("--block-size", type=int, default=16)
    m.add_argument("--num-blocks", type=int, default=None)
    m.add_argument("--max-num-seqs", type=int, default=None)
    m.add_argument("--max-num-batched-tokens", type=int, default=None)
    m.add_argument("--max-model-len", type=int, default=None)
    m.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    m.add_argument("--enforce-eager", action="store_true", help="never replay decode steps from CUDA graphs (they are used on CUDA with Triton attention)")
    m.add_argument("--tensor-parallel-size", type=int, default=1)
    m.add_argument("--no-prefix-caching", action="store_true")
    m.add_argument(
        "--kv-offload-host-blocks", type=int, default=0,
        help="host-memory blocks that cached KV blocks evicted from the device are copied to (0: off)",
    )
    m.add_argument("--kv-offload-disk-dir", default=None, help="also offload to files here (emptied at start)")
    m.add_argument("--kv-offload-disk-blocks", type=int, default=0, help="blocks the disk tier may hold")
    m.add_argument("--seed", type=int, default=0)
    r = parser.add_argument_group("serving")
    r.add_argument("--port", type=int, default=0, help="request-plane port (0: random)")
    r.add_argument("--http-port", type=int, default=None, help="also serve the OpenAI API for this worker")
    r.add_argument(
        "--kv-transport", choices=list(TRANSPORT_MODES), default="auto",
        help="disaggregated KV: auto = copy directly from a same-host prefill worker's cache "
        "(CUDA IPC / shared memory), else stream it; host = always stream over the request plane",
    )
    r.add_argument("--log-level", default=None)
    add_runtime_arguments(parser)
    try:
        from mixroute.mocker.config import add_mocker_arguments
    except ImportError:
        parser.add_argument("--num-workers", type=int, default=1, help="engines in this process (mocker only)")
    else:
        add_mocker_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    worker_type: WorkerType = "prefill" if args.is_prefill_worker else args.worker_type
    if args.model is None and args.engine != "mocker":
        raise ConfigError("--model is required: a model directory (try `mixroute model prepare`)")
    parse_device(args.device)
    if args.tensor_parallel_size < 1:
        raise ConfigError("--tensor-parallel-size must be at least 1")
    if args.tensor_parallel_size > 1 and args.engine != "torch":
        raise ConfigError("--tensor-parallel-size > 1 needs --engine torch")
    num_engines = getattr(args, "num_workers", 1) or 1
    if num_engines > 1 and args.engine != "mocker":
        raise ConfigError("--num-workers > 1 needs --engine mocker (one torch engine per process)")
    if num_engines > 1 and args.http_port:
        raise ConfigError("--http-port serves one engine; use it with --num-workers 1")
    return WorkerSettings(
        worker_type=worker_type,
        namespace=args.namespace,
        host=args.host,
        advertise_host=args.advertise_host,
        http_port=args.http_port,
        model_path=args.model or "",
    )


async def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    num_engines = getattr(args, "num_workers", 1) or 1
    instances = [WorkerInstance(args, settings, secrets.randbits(48)) for _ in range(num_engines)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runtime = await open_runtime(args)
    try:
        for instance in instances:
            await instance.start(runtime, port=args.port if num_engines == 1 else 0)
        return await _supervise(instances, stop)
    finally:
        for instance in instances:
            await asyncio.shield(instance.stop())
        await asyncio.shield(runtime.close())


async def _supervise(instances: list[WorkerInstance], stop: asyncio.Event) -> int:
    """Runs until a signal (0) or until a part of an instance dies (1): a worker whose
    engine thread or publisher is gone would keep its discovery record alive while every
    request to it hangs, so it deregisters (the caller's `stop`) and exits for a restart."""
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    watches = [asyncio.create_task(i.wait_failure(), name=f"watch-{i.worker_id:x}") for i in instances]
    try:
        done, _ = await asyncio.wait([stopping, *watches], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopping, *watches):
            task.cancel()
    for task in watches:
        if task in done:
            log.error("worker instance failed; deregistering and exiting %s", kv(reason=task.result()))
            return 1
    return 0


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, component="worker")
    try:
        return run_main(_serve(args))
    except MixrouteError as exc:
        log.error("worker failed %s", kv(error=exc))
        return 2
