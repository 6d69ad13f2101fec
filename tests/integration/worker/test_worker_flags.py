"""The worker flags added for multi-GPU hosts: `--device cuda:N` and `--kv-transport`."""

from __future__ import annotations

import argparse

import pytest

from mixroute.errors import ConfigError
from mixroute.worker.engines import parse_device
from mixroute.worker.main import add_arguments, settings_from_args


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model", "/m", *argv])


@pytest.mark.parametrize(("value", "parsed"), [("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("cuda:1", ("cuda", 1))])
def test_device_values(value: str, parsed: tuple[str, int]) -> None:
    assert parse_device(value) == parsed
    settings_from_args(_args("--device", value))


@pytest.mark.parametrize("value", ["tpu", "cuda:x", "cpu:1", "cuda:-1"])
def test_bad_device_is_a_config_error_naming_the_forms(value: str) -> None:
    with pytest.raises(ConfigError, match="use cpu, cuda or cuda:N"):
        settings_from_args(_args("--device", value))


def test_kv_transport_choices() -> None:
    assert _args().kv_transport == "auto"
    assert _args("--kv-transport", "host").kv_transport == "host"
    with pytest.raises(SystemExit):
        _args("--kv-transport", "nvlink")


def test_tensor_parallel_prefill_and_decode_workers_are_accepted() -> None:
    """The Helm chart's multi-node example runs prefill and decode workers with TP=2."""
    for worker_type in ("prefill", "decode"):
        settings = settings_from_args(_args("--worker-type", worker_type, "--tensor-parallel-size", "2"))
        assert settings.worker_type == worker_type
    with pytest.raises(ConfigError, match="--engine torch"):
        settings_from_args(_args("--engine", "mocker", "--tensor-parallel-size", "2"))
