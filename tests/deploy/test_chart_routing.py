"""The request path: router mode to the frontend, the router's ConfigMap, the Envoy
Gateway resources, and the install notes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixroute.router.config import RouterConfig

from .chart import (
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    ROOT,
    container,
    docs_of,
    find,
    flag,
    render,
    run_helm,
    template_error,
    template_ok,
)


@pytest.mark.parametrize("mode", ["kv", "round-robin", "random"])
def test_router_mode_reaches_frontend(helm: str, mode: str) -> None:
    docs = render(helm, "default" if mode == "kv" else f"router-{mode}")
    args = container(find(docs, "Deployment", f"{FULLNAME}-frontend"))["args"]
    assert args[0] == "frontend"
    assert flag(args, "--router-mode") == mode
    assert flag(args, "--http-port") == "8000"
    assert flag(args, "--host") == "0.0.0.0"


def test_router_configmap_is_mounted_and_points_at_frontend(helm: str) -> None:
    docs = render(helm, "default")
    router = find(docs, "Deployment", f"{FULLNAME}-router")
    configmap = find(docs, "ConfigMap", f"{FULLNAME}-router")
    args = container(router)["args"]
    assert args[0] == "router"
    config_path = Path(flag(args, "--config"))
    (volume,) = [v for v in router["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    (mount,) = [m for m in container(router)["volumeMounts"] if m["name"] == volume["name"]]
    assert Path(mount["mountPath"]) == config_path.parent
    assert config_path.name in configmap["data"]
    assert flag(args, "--extproc-port") == "50051"
    assert flag(args, "--port") == "8080"

    config = yaml.safe_load(configmap["data"][config_path.name])
    frontend_svc = find(docs, "Service", f"{FULLNAME}-frontend")
    (port,) = frontend_svc["spec"]["ports"]
    assert config["default_endpoint"] == f"http://{frontend_svc['metadata']['name']}:{port['port']}"
    # The Service selects the frontend pods and targets their HTTP port.
    frontend = find(docs, "Deployment", f"{FULLNAME}-frontend")
    assert frontend_svc["spec"]["selector"] == frontend["spec"]["template"]["metadata"]["labels"]
    assert port["targetPort"] in {p["name"] for p in container(frontend)["ports"]}


def test_router_config_is_accepted_by_the_router(helm: str) -> None:
    for scenario in ("default", "values-multi-model"):
        text = find(render(helm, scenario), "ConfigMap", f"{FULLNAME}-router")["data"][
            "config.yaml"
        ]
        data = yaml.safe_load(text)
        config = RouterConfig.model_validate(data)
        assert config.default_endpoint == f"http://{FULLNAME}-frontend:8000"


def test_gateway_routes_through_the_router_extproc(helm: str) -> None:
    docs = render(helm, "gateway")
    gateway = find(docs, "Gateway", FULLNAME)
    (listener,) = gateway["spec"]["listeners"]
    route = find(docs, "HTTPRoute", FULLNAME)
    assert route["spec"]["parentRefs"][0]["name"] == FULLNAME
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    frontend_svc = find(docs, "Service", f"{FULLNAME}-frontend")
    assert backend == {"name": frontend_svc["metadata"]["name"], "port": 8000}

    policy = find(docs, "EnvoyPatchPolicy", f"{FULLNAME}-extproc")
    assert policy["spec"]["targetRef"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": FULLNAME,
    }
    listener_patch, cluster_patch = policy["spec"]["jsonPatches"]
    assert listener_patch["name"] == f"{NAMESPACE}/{FULLNAME}/{listener['name']}"
    filt = listener_patch["operation"]["value"]
    assert filt["name"] == "envoy.filters.http.ext_proc"
    cluster_name = filt["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    mode = filt["typed_config"]["processing_mode"]
    assert (mode["request_body_mode"], mode["response_body_mode"]) == ("BUFFERED", "STREAMED")
    # The same modes as the router's own Envoy config (deploy/envoy), where one exists.
    envoy = ROOT / "deploy" / "envoy" / "envoy.yaml"
    if envoy.exists():
        text = envoy.read_text()
        for key, value in mode.items():
            assert f"{key}: {value}" in text, f"{key}: {value} differs from deploy/envoy/envoy.yaml"
    cluster = cluster_patch["operation"]["value"]
    assert cluster_patch["name"] == cluster["name"] == cluster_name
    socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    router_svc = find(docs, "Service", f"{FULLNAME}-router")
    assert socket["address"] == f"{router_svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert socket["port_value"] == 50051
    assert 50051 in {p["port"] for p in router_svc["spec"]["ports"]}

    eg_values = yaml.safe_load(
        (ROOT / "deploy" / "gateway" / "envoy-gateway-values.yaml").read_text()
    )
    assert eg_values["config"]["envoyGateway"]["extensionApis"]["enableEnvoyPatchPolicy"] is True


def test_gateway_can_target_the_router_proxy(helm: str) -> None:
    docs = docs_of(
        template_ok(helm, ["--set", "gateway.enabled=true", "--set", "gateway.backend=router"])
    )
    (backend,) = find(docs, "HTTPRoute", FULLNAME)["spec"]["rules"][0]["backendRefs"]
    assert backend == {"name": f"{FULLNAME}-router", "port": 8080}
    assert not [d for d in docs if d["kind"] == "EnvoyPatchPolicy"]
    err = template_error(helm, ["--set", "gateway.enabled=true", "--set", "router.mode=proxy"])
    assert "extproc" in err


def test_notes_have_port_forward_and_curl(helm: str) -> None:
    out = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "--set",
        "gateway.enabled=true",
    )
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert f"port-forward svc/{FULLNAME}-router 8080:8080" in notes
    assert f"port-forward svc/{FULLNAME}-frontend 8000:8000" in notes
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in notes
    assert '"model": "SmolLM2-135M-Instruct"' in notes
