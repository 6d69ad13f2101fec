"""Discovery keys and event subjects (the layout operators know from NVIDIA Dynamo)."""

from __future__ import annotations

from typing import NewType

WorkerId = NewType("WorkerId", int)
RequestId = NewType("RequestId", str)

INSTANCES_ROOT = "v1/instances"
KV_ROUTERS_ROOT = "v1/kv_routers"
EVENT_PUBLISHERS_ROOT = "v1/event_publishers"

COMPONENT_BACKEND = "backend"
"""Decode or aggregated ("both") workers."""
COMPONENT_PREFILL = "prefill"
ENDPOINT_GENERATE = "generate"

KV_EVENTS = "kv_events"
LOAD_METRICS = "load_metrics"


def instances_prefix(namespace: str, component: str | None = None, endpoint: str | None = None) -> str:
    parts = [INSTANCES_ROOT, namespace]
    if component is not None:
        parts.append(component)
        if endpoint is not None:
            parts.append(endpoint)
    return "/".join(parts) + "/"


def instance_key(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"{INSTANCES_ROOT}/{namespace}/{component}/{endpoint}/{instance_id:x}"


def parse_instance_key(key: str) -> tuple[str, str, str, WorkerId]:
    """Inverse of `instance_key`: (namespace, component, endpoint, instance_id)."""
    root, version_ns = INSTANCES_ROOT.split("/"), key.split("/")
    if version_ns[:2] != root or len(version_ns) != 6:
        raise ValueError(f"not an instance key: {key!r}")
    _, _, namespace, component, endpoint, hex_id = version_ns
    return namespace, component, endpoint, WorkerId(int(hex_id, 16))


def kv_router_key(namespace: str, router_id: str) -> str:
    return f"{KV_ROUTERS_ROOT}/{namespace}/{router_id}"


def event_subject(namespace: str, component: str, kind: str) -> str:
    """`namespace.{ns}.component.{component}.{kind}`, kind being kv_events or load_metrics."""
    return f"namespace.{namespace}.component.{component}.{kind}"
