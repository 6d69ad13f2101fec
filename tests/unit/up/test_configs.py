from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from mixroute.errors import ConfigError
from mixroute.up.envoy import envoy_config, find_envoy, write_envoy_config
from mixroute.up.options import add_arguments, options_from_args
from mixroute.up.router_config import local_router_config


def _options(*argv: str):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))


SHIPPED = {
    "auto_model_names": ["MoM", "auto"],
    "default_model": "shipped-model",
    "default_endpoint": "http://127.0.0.1:8000",
    "models": {
        "shipped-model": {
            "endpoint": "http://127.0.0.1:8000",
            "pii_policy": {"allow_by_default": False},
        },
        "other-model": {"reasoning_family": "qwen3"},
    },
    "categories": [
        {
            "name": "math",
            "model_scores": [
                {"model": "other-model", "score": 0.9},
                {"model": "shipped-model", "score": 0.5},
            ],
        },
        {"name": "other", "system_prompt": "be brief"},
    ],
    "cache": {"backend": "milvus", "milvus": {"uri": "./router-cache.db"}},
}


def test_local_router_config_serves_only_the_served_model(tmp_path: Path) -> None:
    out = local_router_config(SHIPPED, "my-model", "http://127.0.0.1:9001", tmp_path)
    assert out["default_model"] == "my-model"
    assert out["default_endpoint"] == "http://127.0.0.1:9001"
    # The default model's policy (PII blocking) is kept, its fixed endpoint dropped.
    assert out["models"] == {"my-model": {"pii_policy": {"allow_by_default": False}}}
    assert out["categories"][0]["model_scores"] == [{"model": "my-model", "score": 0.9}]
    assert out["categories"][1] == {"name": "other", "system_prompt": "be brief"}
    assert out["cache"]["milvus"]["uri"] == str(tmp_path / "router-cache.db")
    assert out["auto_model_names"] == ["MoM", "auto"]
    assert SHIPPED["default_model"] == "shipped-model"  # input untouched


def test_shipped_router_config_is_valid_once_filled(tmp_path: Path) -> None:
    from mixroute.router import config as router_config

    assert router_config.DEFAULT_CONFIG_PATH.is_file()
    from mixroute.up.router_config import write_router_config

    path = write_router_config(None, "my-model", "http://127.0.0.1:9001", tmp_path)
    # Alone in its directory: the router watches that directory for edits.
    assert path.parent != tmp_path and list(path.parent.iterdir()) == [path]
    config = router_config.load_config(path)
    assert config.default_model == "my-model"
    assert list(config.models) == ["my-model"]
    assert config.endpoint_for("my-model") == "http://127.0.0.1:9001"
    assert all(s.model == "my-model" for c in config.categories for s in c.model_scores)


def test_envoy_config_points_at_router_and_frontend() -> None:
    options = _options(
        "--envoy", "--router-port", "18080", "--frontend-port", "18000", "--extproc-port", "18051"
    )
    config = envoy_config(options, admin_port=18901)
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18080}
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}

    def port(name: str) -> int:
        return clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"
        ]["socket_address"]["port_value"]

    assert port("upstream") == 18000  # the frontend
    assert port("mixroute_extproc") == 18051
    # Per-model endpoints: resolved from the header the router sets.
    assert clusters["model_upstreams"]["cluster_type"]["name"] == "envoy.clusters.dynamic_forward_proxy"
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.ext_proc"
    mode = filters[0]["typed_config"]["processing_mode"]
    assert (mode["request_body_mode"], mode["response_body_mode"]) == ("BUFFERED", "STREAMED")
    assert filters[-1]["name"] == "envoy.filters.http.router"
    assert config["admin"]["address"]["socket_address"]["port_value"] == 18901


def test_envoy_accepts_the_generated_config(tmp_path: Path) -> None:
    try:
        envoy = find_envoy()
    except ConfigError as exc:
        pytest.skip(f"envoy not installed: {exc}")
    path = write_envoy_config(_options("--envoy", "--router-port", "18080"), tmp_path)
    assert yaml.safe_load(path.read_text())["static_resources"]
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("host", "upstream"), [("0.0.0.0", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")])
def test_envoy_reaches_servers_where_they_bind(host: str, upstream: str) -> None:
    config = envoy_config(_options("--envoy", "--host", host), admin_port=1)
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["address"] == host
    for cluster in config["static_resources"]["clusters"]:
        if "load_assignment" not in cluster:
            continue  # model_upstreams: hosts come from the router's x-mixroute-upstream
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert endpoint["address"]["socket_address"]["address"] == upstream
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_deploy_envoy_yaml_is_the_template_with_defaults() -> None:
    from mixroute.router.envoy_template import envoy_config_text

    shipped = (Path(__file__).parents[3] / "deploy" / "envoy" / "envoy.yaml").read_text()
    filled = envoy_config_text(
        listen_host="127.0.0.1", listen_port=8080, admin_port=9901, extproc_host="127.0.0.1",
        extproc_port=50051, upstream_host="127.0.0.1", upstream_port=8000,
    )
    # Same config below the comment header: regenerate envoy.yaml when the template changes.
    assert shipped[shipped.index("admin:"):] == filled[filled.index("admin:"):]
