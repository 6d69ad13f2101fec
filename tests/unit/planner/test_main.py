from __future__ import annotations

import argparse

import pytest

from mixroute.errors import ConfigError
from mixroute.planner import main
from mixroute.planner.connectors.local import LocalConnector


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    return parser.parse_args(argv)


def test_local_connector_from_flags() -> None:
    args = parse(
        "--decode-worker-args=--model /m --engine mocker",
        "--events", "nats://127.0.0.1:4222", "--discovery", "etcd://127.0.0.1:2379",
    )  # fmt: skip
    conn = main.build_connector(args)
    assert isinstance(conn, LocalConnector)
    assert conn.pools() == ("decode",)
    assert conn.command("decode")[3:] == [
        "worker", "--worker-type", "decode", "--model", "/m", "--engine", "mocker",
        "--namespace", "dynamo", "--events", "nats://127.0.0.1:4222", "--discovery", "etcd://127.0.0.1:2379",
    ]  # fmt: skip


def test_missing_targets_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--decode-worker-args"):
        main.build_connector(parse("--connector", "local"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="inside a pod"):
        main.build_connector(parse("--connector", "kubernetes", "--decode-deployment", "d"))
    with pytest.raises(ConfigError, match="--prefill-deployment and/or --decode-deployment"):
        main.build_connector(
            parse(
                "--connector",
                "kubernetes",
                "--k8s-api-url",
                "http://127.0.0.1:1",
                "--k8s-namespace",
                "x",
            )
        )


def test_run_reports_bad_config_without_a_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    args = parse("--connector", "local", "--min-replicas", "5", "--max-replicas", "2")
    assert main.run(args) == 2
    err = capfd.readouterr().err
    assert "max replicas (2) must be >= 1 and >= min replicas (5)" in err
    assert "Traceback" not in err


def test_planner_takes_the_shared_runtime_flags() -> None:
    args = parse("--lease-ttl", "5", "--namespace", "ns2", "--events", "nats://127.0.0.1:4222")
    assert (args.lease_ttl_s, args.namespace, args.events) == (5.0, "ns2", "nats://127.0.0.1:4222")
