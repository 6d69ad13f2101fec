"""Validity: `helm lint --strict`, `helm template` and `kubernetes-validate --strict` for
every scenario; bad values fail naming the key; the container args parse with the
components' own CLIs; the image and the chart agree."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .chart import (
    CHART,
    DUMPER,
    GATEWAY_KINDS,
    ROOT,
    SCENARIOS,
    container,
    flag,
    render,
    run_helm,
    template_error,
)


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
        path.write_text(yaml.dump_all(fresh, Dumper=DUMPER, sort_keys=False))
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
    lint = run_helm(helm, "lint", str(CHART), "--strict", *SCENARIOS[scenario])
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


def test_tensor_parallel_mismatch_fails(helm: str) -> None:
    err = template_error(
        helm,
        [
            "--set-json",
            'workers=[{"model":{"path":"/m","tensorParallelSize":2},"resources":{"limits":{"nvidia.com/gpu":1}}}]',
        ],
    )
    assert "tensorParallelSize=2 needs 2 GPUs" in err


COMPONENT_MAIN = {
    "worker": "mixroute.worker.main",
    "frontend": "mixroute.frontend.main",
    "router": "mixroute.router.main",
    "planner": "mixroute.planner.main",
}


def _parse_with_component(args: list[str]) -> argparse.Namespace:
    module_name = COMPONENT_MAIN[args[0]]
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
