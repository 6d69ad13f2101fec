"""The Envoy config that puts this router (as an ext_proc server) in front of the
upstreams: `envoy.template.yaml` beside this file, which deploy/envoy/envoy.template.yaml
links to and `mixroute up --envoy` and the integration tests fill in."""

from __future__ import annotations

from pathlib import Path
from string import Template

ENVOY_TEMPLATE = Path(__file__).with_name("envoy.template.yaml")


def envoy_config_text(
    *, listen_host: str, listen_port: int, admin_port: int, extproc_host: str, extproc_port: int,
    upstream_host: str, upstream_port: int,
) -> str:
    """The template with its placeholders filled: YAML text Envoy reads with `-c`."""
    return Template(ENVOY_TEMPLATE.read_text()).substitute(
        listen_host=listen_host, listen_port=listen_port, admin_port=admin_port,
        extproc_host=extproc_host, extproc_port=extproc_port,
        upstream_host=upstream_host, upstream_port=upstream_port,
    )
