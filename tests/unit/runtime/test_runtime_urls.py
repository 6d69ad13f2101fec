from __future__ import annotations

import pytest

from mixroute.errors import DiscoveryError, EventPlaneError
from mixroute.runtime.discovery.etcd import parse_etcd_url
from mixroute.runtime.events import open_event_publisher
from mixroute.runtime.events.nats import nats_subject_for_prefix
from mixroute.runtime.requests import parse_address


def test_etcd_urls() -> None:
    assert parse_etcd_url("etcd://127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert parse_etcd_url("etcd://etcd.svc:1234/") == ("etcd.svc", 1234)
    assert parse_etcd_url("etcd://") == ("127.0.0.1", 2379)
    with pytest.raises(DiscoveryError, match="etcd://HOST:PORT"):
        parse_etcd_url("etcd://host:port")


def test_request_plane_addresses() -> None:
    assert parse_address("tcp://127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert parse_address("tcp://[::1]:5555") == ("::1", 5555)


@pytest.mark.parametrize(
    ("prefix", "subject", "must_filter"),
    [
        ("namespace.dynamo.component.backend.", "namespace.dynamo.component.backend.>", False),
        (
            "namespace.dynamo.component.backend.kv_events",
            "namespace.dynamo.component.backend.>",
            True,
        ),
        ("name", ">", True),
        ("", ">", False),
    ],
)
def test_nats_subject_for_prefix(prefix: str, subject: str, must_filter: bool) -> None:
    assert nats_subject_for_prefix(prefix) == (subject, must_filter)


async def test_unknown_events_url_and_unreachable_nats() -> None:
    with pytest.raises(EventPlaneError, match="use zmq or nats"):
        await open_event_publisher("kafka://x")
    with pytest.raises(EventPlaneError, match="cannot connect to NATS"):
        await open_event_publisher("nats://127.0.0.1:1")


def test_advertised_host() -> None:
    import socket

    from mixroute.runtime.address import advertised_host, url_host

    assert advertised_host("127.0.0.1") == "127.0.0.1"
    assert advertised_host("0.0.0.0", "10.1.2.3") == "10.1.2.3"
    wildcard = advertised_host("0.0.0.0")
    assert wildcard not in ("0.0.0.0", "")
    socket.inet_aton(wildcard)  # a real IPv4 address of this machine
    assert url_host("::1") == "[::1]" and url_host("10.0.0.1") == "10.0.0.1"


async def test_servers_on_all_interfaces_advertise_a_reachable_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mixroute.runtime.discovery import open_discovery
    from mixroute.runtime.requests import start_request_server

    async def echo(payload: bytes):  # type: ignore[no-untyped-def]
        yield payload

    server = await start_request_server(
        "0.0.0.0", 0, advertise_host="127.0.0.1", endpoints={"echo": echo}
    )
    assert server.address == f"tcp://127.0.0.1:{server.port}"
    await server.stop()
    discovery = await open_discovery(f"file://{tmp_path}")
    publisher = await open_event_publisher(
        "zmq", discovery=discovery, host="0.0.0.0", advertise_host="127.0.0.1"
    )
    assert publisher.address.startswith("tcp://127.0.0.1:")  # type: ignore[attr-defined]
    await publisher.close()
    await discovery.close()
