"""Stand-ins for `mixroute worker|frontend|router`, for testing `mixroute up`'s supervision
without models: `python fake_components.py <component> <its flags>`.

A fake worker registers a leased instance key in real (file) discovery and revokes it on
SIGTERM; the fake frontend and router answer their health URLs. `FAKE_BEHAVIOUR` in the
environment makes one misbehave: `<component>:crash` exits at once with an error line,
`<component>:hang` never becomes ready (a worker never registers), `<component>:crash-later` exits after 1 s (a worker: 3 s after registering).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread


def _behaviour(component: str) -> str:
    wanted = os.environ.get("FAKE_BEHAVIOUR", "")
    name, _, what = wanted.partition(":")
    return what if name == component else ""


def _serve(host: str, port: int, routes: dict[str, object]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in routes:
                self.send_error(404)
                return
            body = json.dumps(routes[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _until_sigterm(seconds_before_crash: float | None = None) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds_before_crash)
    except TimeoutError:
        print("fake: crashing after startup", flush=True)
        sys.exit(4)


async def worker(args: argparse.Namespace) -> None:
    from mixroute.protocol.messages import InstanceInfo
    from mixroute.protocol.names import instance_key
    from mixroute.runtime.discovery import open_discovery

    if _behaviour("worker") == "hang":
        await _until_sigterm()
        return
    component = "prefill" if args.worker_type == "prefill" else "backend"
    discovery = await open_discovery(args.discovery)
    instance_id = os.getpid()
    info = InstanceInfo(
        instance_id=instance_id, namespace=args.namespace, component=component,
        endpoint="generate", address="tcp://127.0.0.1:1", model=args.served_model_name,
        worker_type=args.worker_type,
    )  # fmt: skip
    import msgspec

    await discovery.put(
        instance_key(args.namespace, component, "generate", instance_id), msgspec.json.encode(info)
    )
    print(f"fake worker registered {instance_id:x}", flush=True)
    try:
        await _until_sigterm(3.0 if _behaviour("worker") == "crash-later" else None)
    finally:
        await discovery.close()
        print("fake worker revoked its lease", flush=True)


async def frontend(args: argparse.Namespace) -> None:
    if _behaviour("frontend") == "hang":
        await _until_sigterm()
        return
    model = os.environ.get("FAKE_MODEL", "fake-model")
    _serve(
        args.host,
        args.http_port,
        {"/health": {"status": "ok"}, "/v1/models": {"data": [{"id": model}]}},
    )
    await _until_sigterm(1.0 if _behaviour("frontend") == "crash-later" else None)


async def router(args: argparse.Namespace) -> None:
    _serve(args.host, args.port, {"/ready": {"ready": True}})
    await _until_sigterm(1.0 if _behaviour("router") == "crash-later" else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("component")
    for flag in ("--model", "--served-model-name", "--worker-type", "--engine", "--device", "--namespace",
                 "--discovery", "--events", "--host", "--port", "--http-port", "--router-mode", "--config",
                 "--mode", "--extproc-port", "--drain-timeout-s"):  # fmt: skip
        parser.add_argument(flag)
    args = parser.parse_args()
    for name in ("port", "http_port"):
        if getattr(args, name) is not None:
            setattr(args, name, int(getattr(args, name)))
    if _behaviour(args.component) == "crash":
        print(f"fake {args.component}: error: cannot start (simulated)", flush=True)
        sys.exit(3)
    asyncio.run({"worker": worker, "frontend": frontend, "router": router}[args.component](args))


if __name__ == "__main__":
    main()
