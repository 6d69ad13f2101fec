from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mixroute.errors import ConfigError
from mixroute.runtime.discovery.file import FileDiscovery
from mixroute.runtime.options import RuntimeConfig, add_runtime_arguments, open_runtime


def _parse(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or argparse.ArgumentParser()
    add_runtime_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "MIXROUTE_NAMESPACE",
        "MIXROUTE_DISCOVERY",
        "MIXROUTE_EVENTS",
        "MIXROUTE_LEASE_TTL_S",
    ):
        monkeypatch.delenv(var, raising=False)
    args = _parse([])
    assert (args.namespace, args.discovery, args.events, args.host, args.advertise_host) == (
        "dynamo", None, "zmq", "127.0.0.1", None,
    )  # fmt: skip
    args = _parse(
        ["--namespace", "prod", "--discovery", "etcd://10.0.0.1:2379", "--events", "nats://n:4222",
         "--host", "0.0.0.0", "--advertise-host", "10.0.0.7", "--lease-ttl", "3"]
    )  # fmt: skip
    config = RuntimeConfig.from_args(args)
    assert config.namespace == "prod" and config.discovery == "etcd://10.0.0.1:2379"
    assert config.events == "nats://n:4222" and config.advertise_host == "10.0.0.7"
    assert config.lease_ttl_s == 3.0


def test_component_keeps_its_own_host_flag() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    args = _parse([], parser)
    assert args.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"namespace": "a/b"}, "namespace"),
        ({"discovery": "consul://x"}, "--discovery"),
        ({"events": "kafka://x"}, "--events"),
        ({"lease_ttl_s": 0}, "--lease-ttl"),
    ],
)
def test_bad_values_say_how_to_fix(override: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RuntimeConfig.from_args({}, **override)


async def test_open_runtime_bundles_all_planes(tmp_path: Path) -> None:
    async def echo(payload: bytes) -> AsyncIterator[bytes]:
        yield payload

    runtime = await open_runtime(discovery=f"file://{tmp_path}", namespace="t", lease_ttl_s=2)
    assert isinstance(runtime.discovery, FileDiscovery) and runtime.discovery.lease_ttl_s == 2
    server = await runtime.start_request_server({"echo": echo})
    assert [p async for p in runtime.request_client.stream(server.address, "echo", b"hi")] == [
        b"hi"
    ]
    subscriber = await runtime.event_subscriber()
    stream = subscriber.subscribe("namespace.t.")
    publisher = await runtime.event_publisher(name="mixroute-test")
    assert list(await runtime.discovery.get_prefix("v1/event_publishers/t/"))
    await runtime.close()
    assert await FileDiscovery(tmp_path).get_prefix("v1/") == {}, "closing revokes every leased key"
    await stream.aclose()
    del publisher
