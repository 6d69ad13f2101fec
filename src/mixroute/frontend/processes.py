"""Several frontend processes on one port (`mixroute frontend --processes N`).

One Python process parses every request, tokenizes every prompt and streams every token
of every response on one event loop thread. With N processes the kernel spreads incoming
connections over N listening sockets bound to the same address (`SO_REUSEPORT`), so N
event loops (and N tokenizer pools) share the work.

Each process is a whole frontend: its own discovery watch, its own KV event
subscription and indexer (every process receives every worker's events and load
metrics), its own load accounting and admission limit. They share nothing else: a
process does not see the requests the others have just routed until the workers' KV
events and load metrics say so, as with several frontend replicas.

The first process (index 0, the one started) binds first, so `--http-port 0` resolves to
one port for all, then starts the others (multiprocessing, spawn) and serves too. The
others start listening only once their view of the workers is ready, so no connection
reaches a process that does not know the models yet. If any process exits, the first
one stops the rest and exits 1; the others exit when the first one is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import socket
from multiprocessing.process import BaseProcess

from mixroute.logs import kv

log = logging.getLogger(__name__)

_WATCH_S = 0.2
"""How often processes check on each other."""
_STOP_GRACE_S = 10.0


def bind_listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on (host, port); with `reuse_port`, other processes may bind
    the same address and the kernel spreads new connections over all of them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def start_others(args: argparse.Namespace, count: int) -> list[BaseProcess]:
    """Start processes 1..count-1 (spawned: a fresh interpreter, no state copied from this
    one's event loop or threads)."""
    context = multiprocessing.get_context("spawn")
    procs = []
    for index in range(1, count):
        proc = context.Process(target=_other_main, args=(args, index, os.getpid()), name=f"mixroute-frontend-{index}")
        proc.start()
        log.info("frontend process started %s", kv(index=index, pid=proc.pid))
        procs.append(proc)
    return procs


async def watch_others(procs: list[BaseProcess]) -> None:
    """Returns when one of the other processes has exited (the caller then stops)."""
    while True:
        for index, proc in enumerate(procs, start=1):
            if proc.exitcode is not None:
                log.error("frontend process exited %s", kv(index=index, pid=proc.pid, exitcode=proc.exitcode))
                return
        await asyncio.sleep(_WATCH_S)


async def watch_parent(parent_pid: int) -> None:
    """Returns when the first process is gone (this process was re-parented)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(_WATCH_S)
    log.error("the first frontend process is gone; stopping %s", kv(parent_pid=parent_pid))


def stop_others(procs: list[BaseProcess]) -> None:
    for proc in procs:
        if proc.exitcode is None:
            proc.terminate()  # SIGTERM: a graceful stop
    for proc in procs:
        proc.join(_STOP_GRACE_S)
        if proc.exitcode is None:
            proc.kill()
            proc.join(5.0)


def _other_main(args: argparse.Namespace, index: int, parent_pid: int) -> None:
    from mixroute.frontend.main import run_process

    code = run_process(args, index=index, parent_pid=parent_pid)
    with contextlib.suppress(Exception):
        logging.shutdown()
    os._exit(code)
