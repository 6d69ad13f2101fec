from __future__ import annotations

import msgspec
import pytest

from mixroute.protocol import messages as m
from mixroute.protocol.names import (
    event_subject,
    instance_key,
    instances_prefix,
    kv_router_key,
    parse_instance_key,
)


def test_keys_follow_dynamo_layout() -> None:
    key = instance_key("dynamo", "prefill", "generate", 0x1A2B)
    assert key == "v1/instances/dynamo/prefill/generate/1a2b"
    assert key.startswith(instances_prefix("dynamo", "prefill", "generate"))
    assert parse_instance_key(key) == ("dynamo", "prefill", "generate", 0x1A2B)
    assert kv_router_key("dynamo", "r1") == "v1/kv_routers/dynamo/r1"
    assert event_subject("dynamo", "backend", "kv_events") == "namespace.dynamo.component.backend.kv_events"
    with pytest.raises(ValueError):
        parse_instance_key("v1/other/x")


def test_kv_event_roundtrip_and_tagged_union() -> None:
    ev = m.KvEvent(worker_id=3, event_id=7, data=m.KvStored(parent_hash=None, blocks=[m.StoredBlock(1, 2)]))
    back = m.decoder(m.KvEvent).decode(m.encode(ev))
    assert back == ev
    removed = m.KvEvent(worker_id=3, event_id=8, data=m.KvRemoved(block_hashes=[1]))
    assert isinstance(m.decoder(m.KvEvent).decode(m.encode(removed)).data, m.KvRemoved)
    cleared = m.KvEvent(worker_id=3, event_id=9, data=m.KvCleared())
    assert isinstance(m.decoder(m.KvEvent).decode(m.encode(cleared)).data, m.KvCleared)


def test_generate_request_roundtrip_and_validation() -> None:
    req = m.GenerateRequest(request_id="r", token_ids=[1, 2, 3], sampling=m.SamplingParams(max_tokens=4))
    assert m.decoder(m.GenerateRequest).decode(m.encode(req)) == req
    with pytest.raises(msgspec.ValidationError):
        m.decoder(m.GenerateRequest).decode(msgspec.msgpack.encode({"request_id": 1}))


def test_a_newer_wire_version_is_rejected_with_both_versions_named() -> None:
    from mixroute.protocol.messages import WIRE_VERSION, KvEventBatch, LoadMetrics, decoder

    fields = {"worker_id": 1, "num_active_blocks": 0, "num_total_blocks": 8, "num_running": 0, "num_waiting": 0}
    assert decoder(LoadMetrics).decode(msgspec.msgpack.encode({"v": WIRE_VERSION, **fields})).worker_id == 1
    with pytest.raises(msgspec.ValidationError, match=f"wire version {WIRE_VERSION + 1}; this mixroute speaks {WIRE_VERSION}"):
        decoder(LoadMetrics).decode(msgspec.msgpack.encode({"v": WIRE_VERSION + 1, **fields}))
    event = {"v": WIRE_VERSION + 1, "worker_id": 1, "event_id": 0, "data": {"type": "cleared"}}
    with pytest.raises(msgspec.ValidationError, match=r"KvEvent has wire version .* at `\$.events\[0\]`"):
        decoder(KvEventBatch).decode(msgspec.msgpack.encode({"worker_id": 1, "events": [event]}))
