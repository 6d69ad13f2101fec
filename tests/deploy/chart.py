"""Rendering the mixroute chart for the tests in this folder: the scenarios (one per
option the guide documents), `helm template` wrappers, and small accessors."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    "gated-secret": [
        "--set",
        "huggingface.existingSecret=hf-token-secret",
        "--set-json",
        'workerDefaults.initContainers=[{"name":"fetch","image":"busybox","command":["true"]}]',
    ],
    "disaggregated-pinned": [
        "--set",
        "gpu.pinDevices=true",
        "--set-json",
        (
            'workers=[{"workerType":"prefill","model":{"path":"/models/m"},"connector":"nixl"},'
            '{"workerType":"decode","model":{"path":"/models/m"},"connector":"nixl"}]'
        ),
    ],
    "gpu-overrides": [
        "--set",
        "gpu.pinDevices=true",
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
    "values-single-node-pinned": ["-f", str(EXAMPLES / "values-single-node-pinned.yaml")],
}


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


_cache: dict[str, list[Manifest]] = {}


def render(helm: str, scenario: str) -> list[Manifest]:
    if scenario not in _cache:
        _cache[scenario] = docs_of(template_ok(helm, SCENARIOS[scenario]))
    return _cache[scenario]


def template_ok(helm: str, values: list[str]) -> str:
    out = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values)
    assert out.returncode == 0, f"helm template {values} failed:\n{out.stderr}"
    return out.stdout


def template_error(helm: str, values: list[str]) -> str:
    out = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values)
    assert out.returncode != 0, f"helm template {values} should have failed"
    return out.stderr


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def docs_of(text: str) -> list[Manifest]:
    return [d for d in yaml.load_all(text, Loader=LOADER) if d]


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
