from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from mixroute.errors import ConfigError
from mixroute.up import plan
from mixroute.up.options import add_arguments, normalize_url, options_from_args


def _options(*argv: str):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


MODEL = plan.ModelChoice(Path("/models/SmolLM2-135M-Instruct"), "SmolLM2-135M-Instruct")


def test_defaults_are_disaggregated_on_embedded_runtime(tmp_path: Path) -> None:
    options = _options("--run-dir", str(tmp_path))
    assert options.discovery_url == f"file://{tmp_path / 'discovery'}"
    assert options.events_url == "zmq"
    assert options.log_dir == tmp_path / "logs"
    assert options.router_url == "http://127.0.0.1:8080"
    assert options.frontend_url == "http://127.0.0.1:8000"
    specs = plan.worker_specs(options, MODEL)
    assert [s.name for s in specs] == ["worker-prefill-0", "worker-decode-0"]
    for spec, worker_type in zip(specs, ["prefill", "decode"], strict=True):
        argv = list(spec.argv)
        assert argv[:4] == [sys.executable, "-m", "mixroute", "worker"]
        assert _flag(argv, "--worker-type") == worker_type
        assert _flag(argv, "--model") == "/models/SmolLM2-135M-Instruct"
        assert _flag(argv, "--served-model-name") == "SmolLM2-135M-Instruct"
        assert _flag(argv, "--engine") == "torch"
        assert _flag(argv, "--device") == "cpu"
        assert _flag(argv, "--namespace") == "dynamo"
        assert _flag(argv, "--discovery") == options.discovery_url


def test_agg_and_worker_counts() -> None:
    agg = _options("--agg", "--workers", "3", "--prefill-workers", "5")
    assert [(g.component, g.worker_type, g.count) for g in plan.worker_groups(agg)] == [
        ("backend", "both", 3)
    ]
    assert [s.name for s in plan.worker_specs(agg, MODEL)] == [
        "worker-both-0",
        "worker-both-1",
        "worker-both-2",
    ]
    disagg = _options("--workers", "2", "--prefill-workers", "3")
    assert [(g.component, g.count) for g in plan.worker_groups(disagg)] == [
        ("prefill", 3),
        ("backend", 2),
    ]
    no_prefill = _options("--prefill-workers", "0")
    assert [g.worker_type for g in plan.worker_groups(no_prefill)] == ["decode"]


def test_real_servers_and_extra_args_reach_every_child() -> None:
    options = _options(
        "--etcd", "127.0.0.1:2379", "--nats", "nats://127.0.0.1:4333", "--namespace", "ns1",
        "--engine", "mocker", "--worker-args", "--num-blocks 64 --block-size 16",
        "--frontend-port", "9001", "--router-mode", "round-robin", "--frontend-args", "--kv-temperature 0.5",
    )  # fmt: skip
    worker = list(plan.worker_specs(options, MODEL)[0].argv)
    assert _flag(worker, "--discovery") == "etcd://127.0.0.1:2379"
    assert _flag(worker, "--events") == "nats://127.0.0.1:4333"
    assert _flag(worker, "--namespace") == "ns1"
    assert _flag(worker, "--engine") == "mocker"
    assert worker[-4:] == ["--num-blocks", "64", "--block-size", "16"]
    frontend = list(plan.frontend_spec(options).argv)
    assert frontend[3] == "frontend"
    assert _flag(frontend, "--http-port") == "9001"
    assert _flag(frontend, "--router-mode") == "round-robin"
    assert _flag(frontend, "--discovery") == "etcd://127.0.0.1:2379"
    assert frontend[-2:] == ["--kv-temperature", "0.5"]
    # Both doors stop draining before `up` would kill them (--stop-timeout, default 15 s).
    assert _flag(frontend, "--drain-timeout-s") == "10"
    assert _flag(list(plan.router_spec(options, Path("/c"), 1).argv), "--drain-timeout-s") == "10"
    short = _options("--stop-timeout", "3")
    assert _flag(list(plan.frontend_spec(short).argv), "--drain-timeout-s") == "0"


def test_router_modes() -> None:
    proxy = list(plan.router_spec(_options("--router-port", "9100"), Path("/c.yaml"), 9100).argv)
    assert _flag(proxy, "--mode") == "proxy"
    assert _flag(proxy, "--port") == "9100"
    assert _flag(proxy, "--config") == "/c.yaml"
    behind_envoy = list(
        plan.router_spec(_options("--envoy", "--extproc-port", "9200"), Path("/c.yaml"), 9300).argv
    )
    assert _flag(behind_envoy, "--mode") == "extproc"
    assert _flag(behind_envoy, "--extproc-port") == "9200"
    assert _flag(behind_envoy, "--port") == "9300"


def test_children_run_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    options = _options()
    for spec in [
        *plan.worker_specs(options, MODEL),
        plan.frontend_spec(options),
        plan.router_spec(options, Path("/c"), 1),
    ]:
        assert spec.env["HF_HUB_OFFLINE"] == "1"
        assert spec.env["TRANSFORMERS_OFFLINE"] == "0"  # the user's own setting wins


def test_stop_order_stages() -> None:
    options = _options()
    assert plan.router_spec(options, Path("/c"), 1).stage > plan.frontend_spec(options).stage
    assert (
        plan.frontend_spec(options).stage
        > plan.worker_specs(options, MODEL)[0].stage
        > plan.STAGE_INFRA
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:2379", "etcd://127.0.0.1:2379"),
        ("http://localhost:2380", "etcd://localhost:2380"),
        ("etcd://10.0.0.1", "etcd://10.0.0.1:2379"),
    ],
)
def test_normalize_etcd_url(url: str, expected: str) -> None:
    assert normalize_url(url, "etcd", 2379) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers"),
        (["--with-infra", "--etcd", "127.0.0.1:2379"], "--with-infra"),
        (["--router-port", "8000"], "ports must differ"),
        (["--frontend-port", "70000"], "not a TCP port"),
        (["--envoy", "--no-router"], "--envoy"),
        (["--model", "/definitely/not/here"], "not a Hugging Face model directory"),
        (["--config", "/definitely/not/here.yaml"], "no such file"),
        (["--etcd", "ftp://x:1"], "expected HOST:PORT"),
        (["--nats", "nats://h:port"], "not a number"),
        (["--worker-args", "'unterminated"], "--worker-args: No closing quotation"),
    ],
)
def test_bad_flags_say_what_to_change(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _options(*argv)
