from __future__ import annotations

from collections.abc import AsyncIterator

from mixroute.planner.load import LoadTable, pool_of_subject, subject_prefix
from mixroute.protocol import names
from mixroute.protocol.messages import LoadMetrics, encode


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def metrics(
    worker_id: int, active: int, total: int = 100, waiting: int = 0, prefill_tokens: int = 0
) -> bytes:
    return encode(
        LoadMetrics(
            worker_id=worker_id, num_active_blocks=active, num_total_blocks=total,
            num_running=1, num_waiting=waiting, num_active_prefill_tokens=prefill_tokens,
        )
    )  # fmt: skip


BACKEND = names.event_subject("dynamo", names.COMPONENT_BACKEND, names.LOAD_METRICS)
PREFILL = names.event_subject("dynamo", names.COMPONENT_PREFILL, names.LOAD_METRICS)


def test_subjects_map_to_pools() -> None:
    assert pool_of_subject(BACKEND) == "decode"
    assert pool_of_subject(PREFILL) == "prefill"
    assert (
        pool_of_subject(names.event_subject("dynamo", names.COMPONENT_BACKEND, names.KV_EVENTS))
        is None
    )
    assert (
        pool_of_subject(names.event_subject("a.b", names.COMPONENT_PREFILL, names.LOAD_METRICS))
        == "prefill"
    )
    assert pool_of_subject("junk") is None
    assert BACKEND.startswith(subject_prefix("dynamo")) and PREFILL.startswith(
        subject_prefix("dynamo")
    )


def test_sums_latest_report_per_worker_and_forgets_stale_ones() -> None:
    clock = Clock()
    table = LoadTable(stale_after_s=10, clock=clock)
    table.record_payload(BACKEND, metrics(1, active=10))
    table.record_payload(BACKEND, metrics(1, active=50, waiting=2))  # replaces worker 1's report
    table.record_payload(BACKEND, metrics(2, active=30))
    table.record_payload(PREFILL, metrics(7, active=5, prefill_tokens=900))
    decode = table.snapshot("decode")
    assert (
        decode.num_workers,
        decode.num_active_blocks,
        decode.num_total_blocks,
        decode.num_waiting,
    ) == (2, 80, 200, 2)
    assert decode.kv_utilization == 0.4
    assert table.snapshot("prefill").num_active_prefill_tokens == 900

    clock.now = 8
    table.record_payload(BACKEND, metrics(2, active=40))
    clock.now = 12  # worker 1 silent for 12 s > 10 s
    decode = table.snapshot("decode")
    assert (decode.num_workers, decode.num_active_blocks) == (1, 40)
    assert table.snapshot("prefill").num_workers == 0


def test_malformed_payload_is_dropped() -> None:
    table = LoadTable()
    table.record_payload(BACKEND, b"\x00not msgpack")
    table.record_payload(
        BACKEND,
        encode(
            LoadMetrics(
                worker_id=3, num_active_blocks=1, num_total_blocks=2, num_running=0, num_waiting=0
            )
        ),
    )
    assert table.snapshot("decode").num_workers == 1


async def test_consume_feeds_the_table() -> None:
    table = LoadTable()

    async def stream() -> AsyncIterator[tuple[str, bytes]]:
        yield BACKEND, metrics(1, active=25)
        yield PREFILL, metrics(2, active=1, prefill_tokens=64)

    await table.consume(stream())
    assert table.snapshot("decode").num_active_blocks == 25
    assert table.snapshot("prefill").num_active_prefill_tokens == 64


def test_model_filter_counts_only_that_models_workers() -> None:
    from mixroute.protocol.messages import InstanceInfo, encode_json
    from mixroute.runtime.discovery.base import WatchEvent

    def instance(worker_id: int, model: str) -> WatchEvent:
        key = names.instance_key(
            "dynamo", names.COMPONENT_BACKEND, names.ENDPOINT_GENERATE, worker_id
        )
        info = InstanceInfo(
            instance_id=worker_id,
            namespace="dynamo",
            component=names.COMPONENT_BACKEND,
            endpoint=names.ENDPOINT_GENERATE,
            address="tcp://127.0.0.1:1",
            model=model,
        )
        return WatchEvent("put", key, encode_json(info))

    table = LoadTable(model="qwen")
    table.record_instance(instance(1, "qwen"))
    table.record_instance(instance(2, "llama"))
    table.record_instance(WatchEvent("put", "v1/instances/not-an-instance", b"{}"))
    for worker_id in (1, 2, 3):  # 3: not (yet) in discovery
        table.record_payload(BACKEND, metrics(worker_id, active=10 * worker_id))
    decode = table.snapshot("decode")
    assert (decode.num_workers, decode.num_active_blocks) == (1, 10)

    table.record_instance(instance(3, "qwen"))
    assert table.snapshot("decode").num_active_blocks == 40
    key_1 = names.instance_key("dynamo", names.COMPONENT_BACKEND, names.ENDPOINT_GENERATE, 1)
    table.record_instance(WatchEvent("delete", key_1, None))
    assert table.snapshot("decode").num_active_blocks == 30
