"""Model registry, event feed and routed backend against in-memory fakes of discovery,
the event plane and the request plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mixroute.errors import DiscoveryError, EventPlaneError, NotFoundError, PeerGoneError
from mixroute.frontend.disagg import DisaggSettings
from mixroute.frontend.engine_client import RoutedBackend
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.models import ModelRegistry, RouterSettings
from mixroute.frontend.preprocess import prepare_prompt
from mixroute.frontend.routing.feed import KvEventFeed
from mixroute.protocol.hashing import hash_prompt
from mixroute.protocol.messages import (
    GenerateFrame,
    GenerateRequest,
    InstanceInfo,
    KvCleared,
    KvEvent,
    KvEventBatch,
    KvStored,
    LoadMetrics,
    StoredBlock,
    Usage,
    encode,
    encode_json,
)
from mixroute.protocol.names import event_subject, instance_key
from mixroute.runtime.discovery.base import WatchEvent

NS = "t"


class FakeDiscovery:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.changes: asyncio.Queue[WatchEvent] = asyncio.Queue()

    async def put(self, key: str, value: bytes, *, leased: bool = True) -> None:
        self.keys[key] = value
        self.changes.put_nowait(WatchEvent("put", key, value))

    async def delete(self, key: str) -> None:
        self.keys.pop(key, None)
        self.changes.put_nowait(WatchEvent("delete", key, None))

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.keys.items() if k.startswith(prefix)}

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        while True:
            event = await self.changes.get()
            if event.key.startswith(prefix):
                yield event

    async def close(self) -> None: ...


class FakeSubscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def subscribe(self, subject_prefix: str) -> AsyncIterator[tuple[str, bytes]]:
        while True:
            yield await self.queue.get()

    async def close(self) -> None: ...


class FakeClient:
    """kv_dump answers from `dumps`; generate answers one token, or fails for `dead` addresses."""

    def __init__(self) -> None:
        self.dumps: dict[str, list[KvEvent]] = {}
        self.calls: list[tuple[str, str]] = []
        self.dead: set[str] = set()

    async def stream(self, address: str, endpoint: str, payload: bytes) -> AsyncIterator[bytes]:
        self.calls.append((address, endpoint))
        if address in self.dead:
            raise PeerGoneError(f"{address} is gone")
        if endpoint == "kv_dump":
            yield encode(KvEventBatch(worker_id=0, events=self.dumps.get(address, [])))
        else:
            yield encode(GenerateFrame(token_ids=[5], finish_reason="length", usage=Usage(prompt_tokens=3, completion_tokens=1)))

    async def close(self) -> None: ...


def _info(worker_id: int, model: str, path: Path, component: str = "backend") -> InstanceInfo:
    return InstanceInfo(
        instance_id=worker_id, namespace=NS, component=component, endpoint="generate",
        address=f"tcp://w{worker_id:x}:1", model=model, block_size=4,
        model_path=str(path), max_model_len=512,
    )  # fmt: skip


async def _eventually(check, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture
async def wired(tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    discovery, subscriber, client = FakeDiscovery(), FakeSubscriber(), FakeClient()
    registry = ModelRegistry(NS, RouterSettings("kv"))
    feed = KvEventFeed(NS, subscriber, client, registry.worker)  # type: ignore[arg-type]
    registry.on_worker_added = feed.worker_added
    tasks = [asyncio.create_task(registry.run(discovery)), asyncio.create_task(feed.run())]  # type: ignore[arg-type]
    yield discovery, subscriber, client, registry, feed
    for t in tasks:
        t.cancel()


async def test_models_come_and_go_with_their_workers(wired, tokenizer_dir: Path) -> None:  # type: ignore[no-untyped-def]
    discovery, _, _, registry, _ = wired
    await discovery.put(instance_key(NS, "backend", "generate", 1), encode_json(_info(1, "alpha", tokenizer_dir)))
    await discovery.put(instance_key(NS, "backend", "generate", 2), encode_json(_info(2, "beta", tokenizer_dir)))
    await _eventually(lambda: len(registry.entries()) == 2)
    assert registry.pool("alpha").entry.max_model_len == 512
    assert list(registry.pool("beta").workers) == [2]
    await discovery.delete(instance_key(NS, "backend", "generate", 2))
    await _eventually(lambda: [e.name for e in registry.entries()] == ["alpha"])
    with pytest.raises(NotFoundError, match="alpha"):
        registry.pool("beta")


async def test_feed_fetches_dumps_applies_events_and_metrics(wired, tokenizer_dir: Path) -> None:  # type: ignore[no-untyped-def]
    discovery, subscriber, client, registry, feed = wired
    tokens = list(range(12))
    local, seq = hash_prompt(tokens, 4)
    stored = KvStored(parent_hash=None, blocks=[StoredBlock(s, t) for t, s in zip(local, seq)])
    client.dumps["tcp://w1:1"] = [KvEvent(worker_id=1, event_id=4, data=KvCleared()), KvEvent(worker_id=1, event_id=4, data=stored)]
    await discovery.put(instance_key(NS, "backend", "generate", 1), encode_json(_info(1, "alpha", tokenizer_dir)))
    await _eventually(lambda: feed.num_dumps == 1)
    selector = registry.pool("alpha").decode
    assert selector.indexer.find_matches(local) == {1: 3}
    # A live event continuing the sequence is applied; one after a gap triggers a new dump.
    subject = event_subject(NS, "backend", "kv_events")
    cleared = KvEventBatch(worker_id=1, events=[KvEvent(worker_id=1, event_id=5, data=KvCleared())])
    subscriber.queue.put_nowait((subject, encode(cleared)))
    await _eventually(lambda: selector.indexer.find_matches(local) == {})
    assert 1 in selector.live_workers
    gap = KvEventBatch(worker_id=1, events=[KvEvent(worker_id=1, event_id=9, data=KvCleared())])
    subscriber.queue.put_nowait((subject, encode(gap)))
    await _eventually(lambda: feed.num_dumps == 2)
    metrics = LoadMetrics(worker_id=1, num_active_blocks=7, num_total_blocks=100, num_running=1, num_waiting=0)
    subscriber.queue.put_nowait((event_subject(NS, "backend", "load_metrics"), encode(metrics)))
    await _eventually(lambda: selector.loads.get(1).active_blocks == 7)


async def test_routed_backend_retries_a_dead_worker_once(wired, tokenizer_dir: Path) -> None:  # type: ignore[no-untyped-def]
    discovery, _, client, registry, _ = wired
    for w in (1, 2):
        await discovery.put(instance_key(NS, "backend", "generate", w), encode_json(_info(w, "alpha", tokenizer_dir)))
    await _eventually(lambda: bool(registry.entries()) and len(registry.pool("alpha").workers) == 2)
    client.dead.add("tcp://w1:1")
    client.dead.add("tcp://w2:1")
    backend = RoutedBackend(registry, client, ApiMetrics(), DisaggSettings())  # type: ignore[arg-type]
    entry = backend.model("alpha")
    request = GenerateRequest(request_id="r", token_ids=[1, 2, 3])
    with pytest.raises(PeerGoneError):
        [f async for f in backend.generate(entry, request, prepare_prompt([1, 2, 3], 4))]
    assert sorted(a for a, e in client.calls if e == "generate") == ["tcp://w1:1", "tcp://w2:1"]
    client.dead.discard("tcp://w2:1")
    client.calls.clear()
    frames = [f async for f in backend.generate(entry, GenerateRequest(request_id="s", token_ids=[1, 2, 3]), prepare_prompt([1, 2, 3], 4))]
    assert frames[-1].finish_reason == "length"
    assert registry.pool("alpha").decode.loads.get(1).num_requests == 0  # released after each attempt


class FlakyDiscovery(FakeDiscovery):
    """The first watch fails (etcd restarting) after the listing."""

    def __init__(self) -> None:
        super().__init__()
        self.num_watches = 0

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        self.num_watches += 1
        if self.num_watches == 1:
            await asyncio.sleep(0.05)
            raise DiscoveryError("etcd unavailable")
        async for event in super().watch_prefix(prefix):
            yield event


async def test_registry_reconciles_after_a_discovery_outage(tokenizer_dir: Path) -> None:
    discovery = FlakyDiscovery()
    registry = ModelRegistry(NS, RouterSettings("kv"))
    await discovery.put(instance_key(NS, "backend", "generate", 1), encode_json(_info(1, "alpha", tokenizer_dir)))
    discovery.changes = asyncio.Queue()  # the listing covers it
    task = asyncio.create_task(registry.run(discovery))  # type: ignore[arg-type]
    try:
        await _eventually(lambda: registry.worker(1) is not None)
        # During the outage worker 1 leaves and worker 2 joins; no watch event reports it.
        del discovery.keys[instance_key(NS, "backend", "generate", 1)]
        discovery.keys[instance_key(NS, "backend", "generate", 2)] = encode_json(_info(2, "alpha", tokenizer_dir))
        await _eventually(lambda: registry.worker(2) is not None and registry.worker(1) is None)
        assert discovery.num_watches == 2
    finally:
        task.cancel()


async def test_feed_subscribes_again_after_an_event_plane_failure() -> None:
    class FlakySubscriber(FakeSubscriber):
        def __init__(self) -> None:
            super().__init__()
            self.num_subscribes = 0

        async def subscribe(self, subject_prefix: str) -> AsyncIterator[tuple[str, bytes]]:
            self.num_subscribes += 1
            if self.num_subscribes == 1:
                raise EventPlaneError("NATS connection lost")
            async for item in super().subscribe(subject_prefix):
                yield item

    subscriber = FlakySubscriber()
    seen: list[int] = []
    feed = KvEventFeed(NS, subscriber, FakeClient(), lambda w: seen.append(w) or None)  # type: ignore[arg-type, func-returns-value]
    task = asyncio.create_task(feed.run())
    try:
        subscriber.queue.put_nowait((event_subject(NS, "backend", "kv_events"), encode(KvEventBatch(worker_id=7, events=[]))))
        await _eventually(lambda: seen == [7], timeout_s=5)
        assert subscriber.num_subscribes == 2
    finally:
        task.cancel()
