"""`mixroute up` flags and the typed options they become.

Every port has a flag so that tests (and two stacks on one machine) never collide on
the well-known defaults.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from mixroute.errors import ConfigError

EngineKind = Literal["torch", "mocker"]
RouterMode = Literal["kv", "round-robin", "random"]


def default_run_dir() -> Path:
    base = os.environ.get("MIXROUTE_RUN_DIR")
    return Path(base) if base else Path(f"/tmp/mixroute-{os.getuid()}") / "up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("model and workers")
    models.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="HF model directory (default: SmolLM2-135M-Instruct, prepared once from the packaged GGUF)",
    )
    models.add_argument(
        "--served-model-name",
        metavar="NAME",
        default=None,
        help="model name clients use (default: the model directory's name)",
    )
    models.add_argument(
        "--agg", action="store_true", help="one aggregated worker instead of prefill + decode"
    )
    models.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=1,
        help="decode workers (aggregated workers with --agg)",
    )
    models.add_argument(
        "--prefill-workers",
        metavar="N",
        type=int,
        default=1,
        help="prefill workers (ignored with --agg)",
    )
    models.add_argument(
        "--engine",
        choices=["torch", "mocker"],
        default="torch",
        help="torch: real forward passes; mocker: simulated timing (fast demo)",
    )
    models.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where workers run"
    )
    models.add_argument(
        "--worker-args",
        metavar="ARGS",
        default="",
        help="extra flags for every worker, one shell-quoted string; a value that starts "
        "with - needs the = form: --worker-args='--max-num-seqs 8'",
    )

    routing = parser.add_argument_group("routing")
    routing.add_argument(
        "--router-mode",
        choices=["kv", "round-robin", "random"],
        default="kv",
        help="frontend worker choice",
    )
    routing.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="semantic router YAML (default: the shipped config, filled with the served model)",
    )
    routing.add_argument(
        "--no-router",
        action="store_true",
        help="start no semantic router (frontend and workers only)",
    )
    routing.add_argument(
        "--envoy",
        action="store_true",
        help="Envoy on the router port, calling the router over ext_proc",
    )
    routing.add_argument(
        "--frontend-args", metavar="ARGS", default="", help="extra flags for the frontend"
    )
    routing.add_argument(
        "--router-args", metavar="ARGS", default="", help="extra flags for the semantic router"
    )

    net = parser.add_argument_group("addresses")
    net.add_argument(
        "--host", metavar="HOST", default="127.0.0.1", help="address the HTTP servers bind"
    )
    net.add_argument(
        "--router-port",
        metavar="PORT",
        type=int,
        default=8080,
        help="semantic router (or Envoy) HTTP port",
    )
    net.add_argument(
        "--frontend-port", metavar="PORT", type=int, default=8000, help="frontend HTTP port"
    )
    net.add_argument(
        "--extproc-port",
        metavar="PORT",
        type=int,
        default=50051,
        help="router ext_proc gRPC port (with --envoy)",
    )
    net.add_argument(
        "--router-http-port",
        metavar="PORT",
        type=int,
        default=0,
        help="router's own HTTP port with --envoy (0: a free port)",
    )
    net.add_argument(
        "--envoy-admin-port",
        metavar="PORT",
        type=int,
        default=0,
        help="Envoy admin port (0: a free port)",
    )

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--namespace", metavar="NS", default="dynamo")
    runtime.add_argument(
        "--run-dir",
        metavar="DIR",
        default=None,
        help="state directory (default: $MIXROUTE_RUN_DIR or /tmp/mixroute-<uid>/up)",
    )
    runtime.add_argument(
        "--log-dir",
        metavar="DIR",
        default=None,
        help="one log file per child (default: RUN_DIR/logs)",
    )
    runtime.add_argument(
        "--etcd",
        default=None,
        metavar="URL",
        help="join this etcd (http://127.0.0.1:2379) instead of file discovery",
    )
    runtime.add_argument(
        "--nats",
        default=None,
        metavar="URL",
        help="join this NATS server (nats://127.0.0.1:4222) instead of ZeroMQ events",
    )
    runtime.add_argument(
        "--with-infra",
        action="store_true",
        help="start local etcd and nats-server on loopback and use them",
    )
    runtime.add_argument(
        "--ready-timeout",
        metavar="S",
        type=float,
        default=900.0,
        help="seconds to wait for every component to be ready",
    )
    runtime.add_argument(
        "--stop-timeout",
        metavar="S",
        type=float,
        default=15.0,
        help="seconds between SIGTERM and SIGKILL at shutdown",
    )


@dataclass(slots=True, frozen=True)
class UpOptions:
    model: Path | None
    served_model_name: str | None
    is_agg: bool
    num_workers: int
    num_prefill_workers: int
    engine: EngineKind
    device: str
    router_mode: RouterMode
    config: Path | None
    has_router: bool
    has_envoy: bool
    host: str
    router_port: int
    frontend_port: int
    extproc_port: int
    router_http_port: int
    envoy_admin_port: int
    namespace: str
    run_dir: Path
    log_dir: Path
    etcd_url: str | None
    """Normalized to `etcd://host:port`."""
    nats_url: str | None
    """Normalized to `nats://host:port`."""
    with_infra: bool
    ready_timeout_s: float
    stop_timeout_s: float
    worker_args: list[str] = field(default_factory=list)
    frontend_args: list[str] = field(default_factory=list)
    router_args: list[str] = field(default_factory=list)
    child_command: tuple[str, ...] = (sys.executable, "-m", "mixroute")
    """How children are started (`<child_command> worker ...`); tests swap in fakes."""

    @property
    def discovery_url(self) -> str:
        return self.etcd_url or f"file://{self.run_dir / 'discovery'}"

    @property
    def events_url(self) -> str:
        return self.nats_url or "zmq"

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches the servers bound to `--host`."""
        return _connect_host(self.host)

    @property
    def frontend_url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.frontend_port}"

    @property
    def router_url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.router_port}"


def options_from_args(args: argparse.Namespace) -> UpOptions:
    """Validate the flags; raises ConfigError saying what to change."""
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.prefill_workers < 0:
        raise ConfigError("--prefill-workers must be 0 or more")
    if args.with_infra and (args.etcd or args.nats):
        raise ConfigError(
            "--with-infra starts its own etcd and NATS; drop --etcd/--nats, or drop --with-infra"
        )
    if args.envoy and args.no_router:
        raise ConfigError(
            "--envoy calls the semantic router; it cannot be combined with --no-router"
        )
    ports = {"--router-port": args.router_port, "--frontend-port": args.frontend_port}
    if args.envoy:
        ports["--extproc-port"] = args.extproc_port
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise ConfigError(f"{flag} {port} is not a TCP port (1-65535)")
    if len(set(ports.values())) != len(ports):
        raise ConfigError(f"ports must differ: {ports}")
    model = Path(args.model).expanduser().resolve() if args.model else None
    if (
        model is not None
        and not (model / "config.json").is_file()
        and not (model / "tokenizer_config.json").is_file()
    ):
        raise ConfigError(
            f"--model {args.model}: not a Hugging Face model directory (no config.json or tokenizer_config.json)"
        )
    config = Path(args.config).expanduser().resolve() if args.config else None
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {args.config}: no such file")
    run_dir = Path(args.run_dir).expanduser().resolve() if args.run_dir else default_run_dir()
    log_dir = Path(args.log_dir).expanduser().resolve() if args.log_dir else run_dir / "logs"
    return UpOptions(
        model=model,
        served_model_name=args.served_model_name,
        is_agg=args.agg,
        num_workers=args.workers,
        num_prefill_workers=0 if args.agg else args.prefill_workers,
        engine=args.engine,
        device=args.device,
        router_mode=args.router_mode,
        config=config,
        has_router=not args.no_router,
        has_envoy=args.envoy,
        host=args.host,
        router_port=args.router_port,
        frontend_port=args.frontend_port,
        extproc_port=args.extproc_port,
        router_http_port=args.router_http_port,
        envoy_admin_port=args.envoy_admin_port,
        namespace=args.namespace,
        run_dir=run_dir,
        log_dir=log_dir,
        etcd_url=normalize_url(args.etcd, "etcd", 2379) if args.etcd else None,
        nats_url=normalize_url(args.nats, "nats", 4222) if args.nats else None,
        with_infra=args.with_infra,
        ready_timeout_s=args.ready_timeout,
        stop_timeout_s=args.stop_timeout,
        worker_args=_split("--worker-args", args.worker_args),
        frontend_args=_split("--frontend-args", args.frontend_args),
        router_args=_split("--router-args", args.router_args),
    )


def _split(flag: str, value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc} in {value!r} (one shell-quoted string)") from None


def normalize_url(url: str, scheme: str, default_port: int) -> str:
    """`127.0.0.1:2379`, `http://127.0.0.1:2379`, `etcd://...` -> `etcd://127.0.0.1:2379`."""
    text = url.strip()
    if "://" not in text:
        text = f"{scheme}://{text}"
    parsed = urlparse(text)
    if parsed.scheme not in (scheme, "http", "https", "tls") or not parsed.hostname:
        raise ConfigError(f"--{scheme} {url!r}: expected HOST:PORT or {scheme}://HOST:PORT")
    try:
        port = parsed.port or default_port
    except ValueError:
        raise ConfigError(f"--{scheme} {url!r}: the port is not a number") from None
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{scheme}://{host}:{port}"


def _connect_host(host: str) -> str:
    """Where a client on this machine connects when a server binds `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
