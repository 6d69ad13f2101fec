"""Runtime flags and the `Runtime` bundle every component's main opens once.

parser = argparse.ArgumentParser()
add_runtime_arguments(parser)      # --namespace --discovery --events --host --advertise-host --lease-ttl
args = parser.parse_args()
runtime = await open_runtime(args)
server = await runtime.start_request_server({"generate": handler}, port=args.port)
await runtime.discovery.put(instance_key(...), info)
publisher = await runtime.event_publisher(name=f"mixroute-worker-{worker_id:x}")
...
await runtime.close()
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mixroute.errors import ConfigError
from mixroute.logs import kv
from mixroute.runtime.discovery import (
    DEFAULT_LEASE_TTL_S,
    Discovery,
    default_discovery_url,
    open_discovery,
)
from mixroute.runtime.events import (
    DEFAULT_EVENTS_URL,
    EventPublisher,
    EventSubscriber,
    open_event_publisher,
    open_event_subscriber,
)
from mixroute.runtime.requests import Handler, TcpRequestClient, TcpRequestServer

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "dynamo"
DEFAULT_HOST = "127.0.0.1"


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = DEFAULT_NAMESPACE
    discovery: str = ""
    """Empty means `default_discovery_url()`."""
    events: str = DEFAULT_EVENTS_URL
    host: str = DEFAULT_HOST
    advertise_host: str | None = None
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(
                f"namespace {value!r} must be letters, digits, '_' or '-' (it is part of keys and subjects)"
            )
        return value

    @field_validator("discovery")
    @classmethod
    def _discovery(cls, value: str) -> str:
        if value and not value.startswith(("file://", "etcd://")):
            raise ValueError(
                f"--discovery {value!r}: use file:///path/to/run-dir or etcd://HOST:PORT"
            )
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: str) -> str:
        if value not in ("zmq", "zmq://") and not value.startswith("nats://"):
            raise ValueError(f"--events {value!r}: use zmq or nats://HOST:PORT")
        return value

    @field_validator("lease_ttl_s")
    @classmethod
    def _ttl(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("--lease-ttl must be a positive number of seconds")
        return value

    @classmethod
    def from_args(
        cls, args: argparse.Namespace | Mapping[str, Any], **overrides: Any
    ) -> RuntimeConfig:
        values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
        values.update(overrides)
        picked = {name: values[name] for name in cls.model_fields if values.get(name) is not None}
        try:
            return cls(**picked)
        except ValidationError as exc:
            problems = "; ".join(
                str(err["msg"]).removeprefix("Value error, ") for err in exc.errors()
            )
            raise ConfigError(f"bad runtime options: {problems}") from None


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the runtime flags (those the parser does not have yet, so a component that
    defines its own `--host` keeps it)."""
    group = parser.add_argument_group("runtime (discovery, events, request plane)")
    existing = set(parser._option_string_actions)

    def add(flag: str, **kwargs: Any) -> None:
        if flag not in existing:
            group.add_argument(flag, **kwargs)

    add(
        "--namespace",
        default=os.environ.get("MIXROUTE_NAMESPACE", DEFAULT_NAMESPACE),
        help="namespace of keys and subjects (default: %(default)s)",
    )
    add(
        "--discovery",
        default=os.environ.get("MIXROUTE_DISCOVERY") or None,
        metavar="URL",
        help="file:///path/to/run-dir or etcd://HOST:PORT "
        "(default: file://$MIXROUTE_RUN_DIR or file:///tmp/mixroute-<uid>/discovery)",
    )
    add(
        "--events",
        default=os.environ.get("MIXROUTE_EVENTS", DEFAULT_EVENTS_URL),
        metavar="URL",
        help="event plane: zmq (no broker) or nats://HOST:PORT (default: %(default)s)",
    )
    add("--host", default=DEFAULT_HOST, help="interface to bind servers on (default: %(default)s)")
    add(
        "--advertise-host",
        default=None,
        help="host others use to reach this process (default: --host; needed with --host 0.0.0.0)",
    )
    add(
        "--lease-ttl",
        dest="lease_ttl_s",
        type=float,
        default=float(os.environ.get("MIXROUTE_LEASE_TTL_S", DEFAULT_LEASE_TTL_S)),
        metavar="SECONDS",
        help="discovery lease TTL: how long a dead process stays registered (default: %(default)s)",
    )


@dataclass
class Runtime:
    """Discovery + event plane factories + request plane, opened once per process."""

    config: RuntimeConfig
    discovery: Discovery
    request_client: TcpRequestClient
    _publishers: list[EventPublisher] = field(default_factory=list)
    _subscribers: list[EventSubscriber] = field(default_factory=list)
    _servers: list[TcpRequestServer] = field(default_factory=list)
    _closed: bool = False

    @property
    def namespace(self) -> str:
        return self.config.namespace

    async def event_publisher(self, name: str | None = None) -> EventPublisher:
        """A started publisher; `name` names the NATS connection (e.g. mixroute-worker-1a)."""
        publisher = await open_event_publisher(
            self.config.events,
            discovery=self.discovery,
            namespace=self.namespace,
            host=self.config.host,
            advertise_host=self.config.advertise_host,
            name=name,
        )
        self._publishers.append(publisher)
        return publisher

    async def event_subscriber(self, name: str | None = None) -> EventSubscriber:
        subscriber = await open_event_subscriber(
            self.config.events, discovery=self.discovery, namespace=self.namespace, name=name
        )
        self._subscribers.append(subscriber)
        return subscriber

    async def start_request_server(
        self, endpoints: Mapping[str, Handler] | None = None, *, port: int = 0
    ) -> TcpRequestServer:
        """A started request server on `--host:port` (0: random); `.address` is advertised
        with `--advertise-host`."""
        server = TcpRequestServer(self.config.host, port, advertise_host=self.config.advertise_host)
        for name, handler in (endpoints or {}).items():
            server.add_endpoint(name, handler)
        await server.start()
        self._servers.append(server)
        return server

    async def close(self) -> None:
        """Stops servers, closes event plane and client, then revokes the discovery lease."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            await server.stop()
        closables: list[EventPublisher | EventSubscriber] = [*self._publishers, *self._subscribers]
        for closable in closables:
            try:
                await closable.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                log.warning(
                    "runtime close step failed %s",
                    kv(what=type(closable).__name__, error=repr(exc)),
                )
        await self.request_client.close()
        await self.discovery.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_runtime(
    args: argparse.Namespace | RuntimeConfig | Mapping[str, Any] | None = None, **overrides: Any
) -> Runtime:
    """Opens discovery and the request client from parsed flags, a config, or keywords
    (`open_runtime(discovery="etcd://...", events="nats://...")`)."""
    if isinstance(args, RuntimeConfig):
        config = args.model_copy(update=overrides) if overrides else args
    else:
        config = RuntimeConfig.from_args(args or {}, **overrides)
    discovery = await open_discovery(
        config.discovery or default_discovery_url(), lease_ttl_s=config.lease_ttl_s
    )
    log.info(
        "runtime opened %s",
        kv(
            namespace=config.namespace,
            discovery=config.discovery or default_discovery_url(),
            events=config.events,
        ),
    )
    return Runtime(config=config, discovery=discovery, request_client=TcpRequestClient())
