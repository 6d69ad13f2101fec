from __future__ import annotations

import argparse

import pytest

from mixroute.errors import ConfigError
from mixroute.frontend import main as frontend_main
from mixroute.worker.main import add_arguments, settings_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_prefill_flag_and_components() -> None:
    args = _parse("--model", "/m", "--is-prefill-worker", "--namespace", "ns1", "--discovery", "etcd://127.0.0.1:2379")
    settings = settings_from_args(args)
    assert (settings.worker_type, settings.component, settings.namespace) == ("prefill", "prefill", "ns1")
    assert settings_from_args(_parse("--model", "/m", "--worker-type", "decode")).component == "backend"
    assert settings_from_args(_parse("--model", "/m")).component == "backend"
    assert settings_from_args(_parse("--model", "/m", "--tensor-parallel-size", "2")).worker_type == "both"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ((), "--model is required"),
        (("--model", "/m", "--engine", "mocker", "--tensor-parallel-size", "2"), "tensor-parallel"),
        (("--model", "/m", "--tensor-parallel-size", "0"), "at least 1"),
        (("--model", "/m", "--num-workers", "3"), "mocker"),
        (("--engine", "mocker", "--num-workers", "3", "--http-port", "9000"), "--http-port"),
    ],
)
def test_bad_flags_say_how_to_fix(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings_from_args(_parse(*argv))


def test_frontend_flags() -> None:
    parser = argparse.ArgumentParser()
    frontend_main.add_arguments(parser)
    args = parser.parse_args(["--router-mode", "round-robin", "--kv-temperature", "0.5", "--events", "nats://127.0.0.1:4222"])
    assert (args.router_mode, args.kv_temperature, args.http_port, args.host) == ("round-robin", 0.5, 8000, "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args(["--router-mode", "fastest"])


def test_frontend_kv_overlap_weight_reaches_the_selector() -> None:
    from mixroute.frontend.routing.selector import DEFAULT_OVERLAP_WEIGHT, WorkerSelector

    parser = argparse.ArgumentParser()
    frontend_main.add_arguments(parser)
    settings = frontend_main.router_settings_from_args(parser.parse_args(["--kv-overlap-weight", "1.5"]))
    assert WorkerSelector("kv", overlap_weight=settings.overlap_weight).overlap_weight == 1.5
    default = frontend_main.router_settings_from_args(parser.parse_args([]))
    assert default.overlap_weight is None
    assert WorkerSelector("kv", overlap_weight=default.overlap_weight).overlap_weight == DEFAULT_OVERLAP_WEIGHT
    with pytest.raises(ConfigError, match="--kv-overlap-weight"):
        frontend_main.router_settings_from_args(parser.parse_args(["--kv-overlap-weight", "-1"]))


def test_frontend_limit_flags() -> None:
    parser = argparse.ArgumentParser()
    frontend_main.add_arguments(parser)
    limits = frontend_main.limits_from_args(parser.parse_args([]))
    assert (limits.max_request_bytes, limits.max_inflight_requests) == (4 * 1024 * 1024, 512)
    assert limits.request_idle_timeout_s > 0 and limits.request_timeout_s == 0
    args = parser.parse_args(["--max-request-bytes", "100", "--max-inflight-requests", "0", "--request-timeout-s", "30"])
    limits = frontend_main.limits_from_args(args)
    assert (limits.max_request_bytes, limits.max_inflight_requests, limits.request_timeout_s) == (100, 0, 30.0)
    with pytest.raises(ConfigError, match="--request-idle-timeout-s"):
        frontend_main.limits_from_args(parser.parse_args(["--request-idle-timeout-s", "-1"]))
