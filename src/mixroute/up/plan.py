"""What `mixroute up` starts: the children's command lines, decided from the options alone.

Kept free of side effects so the exact commands can be tested and printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixroute.protocol.names import COMPONENT_BACKEND, COMPONENT_PREFILL
from mixroute.up.options import UpOptions
from mixroute.up.supervisor import ChildSpec

STAGE_INFRA = 0
STAGE_WORKERS = 1
STAGE_FRONTEND = 2
STAGE_EDGE = 3
"""Router and Envoy: stopped first so no new request arrives while the rest stops."""


def offline_env() -> dict[str, str]:
    """Children never reach a model hub: everything they load is local (a user who set
    these variables keeps their values)."""
    return {name: os.environ.get(name, "1") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}


@dataclass(slots=True, frozen=True)
class ModelChoice:
    path: Path
    served_name: str


@dataclass(slots=True, frozen=True)
class WorkerGroup:
    component: str
    """Discovery component the group registers under (`backend` or `prefill`)."""
    worker_type: str
    count: int


def worker_groups(options: UpOptions) -> list[WorkerGroup]:
    if options.is_agg:
        return [WorkerGroup(COMPONENT_BACKEND, "both", options.num_workers)]
    groups = [WorkerGroup(COMPONENT_BACKEND, "decode", options.num_workers)]
    if options.num_prefill_workers > 0:
        groups.insert(0, WorkerGroup(COMPONENT_PREFILL, "prefill", options.num_prefill_workers))
    return groups


def runtime_args(options: UpOptions) -> list[str]:
    return [
        "--namespace", options.namespace,
        "--discovery", options.discovery_url,
        "--events", options.events_url,
    ]  # fmt: skip


def worker_specs(options: UpOptions, model: ModelChoice) -> list[ChildSpec]:
    specs = []
    for group in worker_groups(options):
        for index in range(group.count):
            argv = (
                *options.child_command, "worker",
                "--model", str(model.path),
                "--served-model-name", model.served_name,
                "--worker-type", group.worker_type,
                "--engine", options.engine,
                "--device", options.device,
                "--host", "127.0.0.1",
                "--port", "0",
                *runtime_args(options),
                *options.worker_args,
            )  # fmt: skip
            specs.append(
                ChildSpec(
                    f"worker-{group.worker_type}-{index}",
                    argv,
                    env=offline_env(),
                    stage=STAGE_WORKERS,
                    restart=True,
                )
            )
    return specs


def drain_timeout_s(options: UpOptions) -> float:
    """How long the router and the frontend let requests finish when the stack stops: the
    stop timeout less time to close, so that they end the rest with an error themselves
    rather than being killed mid-stream."""
    return max(0.0, options.stop_timeout_s - 5.0)


def frontend_spec(options: UpOptions) -> ChildSpec:
    argv = (
        *options.child_command, "frontend",
        "--host", options.host,
        "--http-port", str(options.frontend_port),
        "--router-mode", options.router_mode,
        "--drain-timeout-s", f"{drain_timeout_s(options):g}",
        *runtime_args(options),
        *options.frontend_args,
    )  # fmt: skip
    return ChildSpec("frontend", argv, env=offline_env(), stage=STAGE_FRONTEND)


def router_spec(options: UpOptions, config_path: Path, http_port: int) -> ChildSpec:
    """The semantic router: a proxy on the router port, or (with Envoy in front) an
    ext_proc server plus its own HTTP port for health and its API."""
    mode = (
        ["--mode", "extproc", "--extproc-port", str(options.extproc_port)]
        if options.has_envoy
        else ["--mode", "proxy"]
    )
    argv = (
        *options.child_command, "router",
        "--config", str(config_path),
        "--host", options.host,
        "--port", str(http_port),
        *mode,
        "--drain-timeout-s", f"{drain_timeout_s(options):g}",
        *options.router_args,
    )  # fmt: skip
    return ChildSpec("router", argv, env=offline_env(), stage=STAGE_EDGE)


def envoy_spec(envoy_binary: str, config_path: Path) -> ChildSpec:
    # No hot restart: it needs shared memory named by a base id, which would collide
    # between two stacks on one machine.
    argv = [envoy_binary, "-c", str(config_path), "--log-level", "warning", "--disable-hot-restart"]
    return ChildSpec("envoy", argv, stage=STAGE_EDGE)
