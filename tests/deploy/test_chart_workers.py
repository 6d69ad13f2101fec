"""Workers, GPUs, infrastructure and the planner: what the rendered manifests mean."""

from __future__ import annotations

import json

import yaml

from .chart import (
    FULLNAME,
    GATEWAY_KINDS,
    NAMESPACE,
    container,
    docs_of,
    env,
    find,
    flag,
    render,
    template_error,
    template_ok,
    workers,
)


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


def test_default_render_leaves_gpu_choice_to_the_device_plugin(helm: str) -> None:
    # The device plugin renumbers a pod's GPUs from 0: a pinned physical index would hide them.
    for scenario in ("default", "disaggregated", "aggregated", "values-multi-node"):
        docs = render(helm, scenario)
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        gpu_pods = [d for d in deployments if "nvidia.com/gpu" in container(d).get("resources", {}).get("limits", {})]
        assert gpu_pods, scenario
        for deployment in deployments:
            assert "CUDA_VISIBLE_DEVICES" not in env(deployment), (scenario, deployment["metadata"]["name"])


def test_pinned_layout_example(helm: str) -> None:
    docs = render(helm, "values-single-node-pinned")
    assert env(find(docs, "Deployment", f"{FULLNAME}-frontend"))["CUDA_VISIBLE_DEVICES"] == "0"
    assert sorted(env(w)["CUDA_VISIBLE_DEVICES"] for w in workers(docs)) == ["1", "2"]
    assert sorted(env(w)["CUDA_VISIBLE_DEVICES"] for w in workers(render(helm, "values-multi-model"))) == ["1", "2"]


def test_gpu_devices_follow_defaults_when_pinned(helm: str) -> None:
    docs = render(helm, "disaggregated-pinned")
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
    (init,) = worker["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "fetch"
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


def test_cpu_workers_request_no_gpu(helm: str) -> None:
    (worker,) = workers(render(helm, "cpu-mocker"))
    args = container(worker)["args"]
    assert flag(args, "--device") == "cpu"
    assert flag(args, "--engine") == "mocker"
    assert "CUDA_VISIBLE_DEVICES" not in env(worker)
    assert "nvidia.com/gpu" not in json.dumps(container(worker).get("resources", {}))


def test_external_etcd_and_nats(helm: str) -> None:
    docs = render(helm, "external-infra")
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    args = container(next(workers(docs)))["args"]
    assert flag(args, "--discovery") == "etcd://etcd.infra.svc:2379"
    assert flag(args, "--events") == "nats://nats.infra.svc:4222"
    err = template_error(helm, ["--set", "etcd.enabled=false"])
    assert "etcd.endpoint" in err
    # Brokerless ZeroMQ events (publishers found through etcd) instead of NATS.
    zmq = docs_of(template_ok(helm, ["--set", "nats.enabled=false", "--set", "nats.url=zmq"]))
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
