"""Request migration at the request-plane seam: a worker that dies mid-stream is replaced
by another that continues from the tokens already sent (fake request client; the real
processes are in tests/integration/frontend/test_migration_processes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from mixroute.errors import PeerGoneError
from mixroute.frontend.disagg import DisaggSettings
from mixroute.frontend.engine_client import RoutedBackend
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.migration import continuation, restate_usage
from mixroute.protocol.messages import (
    GenerateFrame,
    GenerateRequest,
    InstanceInfo,
    KvTransferHandle,
    SamplingParams,
    Usage,
    decoder,
    encode,
)

_request_decoder = decoder(GenerateRequest)


@dataclass
class Worker:
    """Emits `tokens` one per frame; dies (PeerGoneError) after `die_after` of them if set."""

    tokens: list[int]
    die_after: int | None = None
    received: list[GenerateRequest] = field(default_factory=list)


class FakeClient:
    def __init__(self, workers: dict[str, Worker]) -> None:
        self.workers = workers

    async def stream(self, address: str, endpoint: str, payload: bytes) -> AsyncIterator[bytes]:
        worker = self.workers[address]
        request = _request_decoder.decode(payload)
        worker.received.append(request)
        owed = request.sampling.max_tokens
        for i, token in enumerate(worker.tokens[:owed]):
            if worker.die_after is not None and i == worker.die_after:
                raise PeerGoneError(f"{address} died")
            last = i == owed - 1
            usage = Usage(prompt_tokens=len(request.token_ids), completion_tokens=i + 1, cached_tokens=len(request.token_ids) - 1) if last else None
            yield encode(GenerateFrame(token_ids=[token], finish_reason="length" if last else None, usage=usage))


@dataclass
class Decision:
    worker_id: int
    overlap_blocks: int = 0


class FakeSelector:
    """Picks the lowest worker id offered; records what it was offered."""

    name = "decode"

    def __init__(self) -> None:
        self.offered: list[list[int]] = []
        self.finished = 0

    def select(self, request_id: str, candidates: list[int], prompt: object) -> Decision:
        self.offered.append(sorted(candidates))
        return Decision(min(candidates))

    def first_token(self, request_id: str) -> None: ...

    def finish(self, request_id: str) -> None:
        self.finished += 1


class FakeRoute:
    def record(self, *args: object) -> None: ...


@dataclass
class FakePrompt:
    route: FakeRoute = field(default_factory=FakeRoute)


@dataclass
class FakeEntry:
    name: str = "m"


@dataclass
class FakePool:
    entry: FakeEntry = field(default_factory=FakeEntry)


def _workers(n: int) -> dict[int, InstanceInfo]:
    return {
        w: InstanceInfo(instance_id=w, namespace="ns", component="backend", endpoint="generate", address=f"tcp://w{w}:1")
        for w in range(1, n + 1)
    }


async def _run(backend: RoutedBackend, selector: FakeSelector, n: int, request: GenerateRequest) -> list[GenerateFrame]:
    frames = backend.generate_on(FakePool(), selector, _workers(n), request, FakePrompt())  # type: ignore[arg-type]
    return [frame async for frame in frames]


def _backend(client: FakeClient, limit: int = 3) -> tuple[RoutedBackend, ApiMetrics]:
    metrics = ApiMetrics()
    return RoutedBackend(None, client, metrics, DisaggSettings(), migration_limit=limit), metrics  # type: ignore[arg-type]


async def test_a_stream_whose_worker_dies_continues_on_another_worker() -> None:
    w1 = Worker(tokens=[10, 11, 12, 13, 14, 15], die_after=3)
    w2 = Worker(tokens=[23, 24, 25, 26, 27, 28])
    backend, metrics = _backend(FakeClient({"tcp://w1:1": w1, "tcp://w2:1": w2}))
    selector = FakeSelector()
    request = GenerateRequest(request_id="r", token_ids=[1, 2, 3, 4], sampling=SamplingParams(max_tokens=6, min_tokens=5, ignore_eos=True))

    frames = await _run(backend, selector, 2, request)

    tokens = [t for f in frames for t in f.token_ids]
    assert tokens == [10, 11, 12, 23, 24, 25]
    # The second worker got the prompt plus what was already sent, and only what is still owed.
    (sent,) = w2.received
    assert sent.token_ids == [1, 2, 3, 4, 10, 11, 12]
    assert sent.sampling.max_tokens == 3 and sent.sampling.min_tokens == 2 and sent.sampling.ignore_eos
    assert selector.offered == [[1, 2], [2]]  # the dead worker is not offered again
    assert selector.finished == 2
    final = frames[-1]
    assert final.finish_reason == "length"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (4, 6)
    assert final.usage.cached_tokens <= 4
    assert metrics.migrations.labels("m")._value.get() == 1


async def test_migration_limit_bounds_the_moves_and_zero_fails_the_stream() -> None:
    dying = {f"tcp://w{w}:1": Worker(tokens=[w * 10 + i for i in range(8)], die_after=1) for w in (1, 2, 3)}
    backend, _ = _backend(FakeClient(dying), limit=1)
    request = GenerateRequest(request_id="r", token_ids=[1], sampling=SamplingParams(max_tokens=8))
    got: list[int] = []
    with pytest.raises(PeerGoneError):
        async for frame in backend.generate_on(FakePool(), FakeSelector(), _workers(3), request, FakePrompt()):  # type: ignore[arg-type]
            got.extend(frame.token_ids)
    assert got == [10, 20]  # one token from the first worker, one from the single migration target
    assert not dying["tcp://w3:1"].received

    backend, _ = _backend(FakeClient({"tcp://w1:1": Worker(tokens=[5, 6, 7], die_after=1), "tcp://w2:1": Worker(tokens=[8])}), limit=0)
    with pytest.raises(PeerGoneError):
        await _run(backend, FakeSelector(), 2, request)


async def test_a_worker_dying_before_any_output_is_retried_not_migrated() -> None:
    w1 = Worker(tokens=[1, 2], die_after=0)
    w2 = Worker(tokens=[7, 8])
    backend, metrics = _backend(FakeClient({"tcp://w1:1": w1, "tcp://w2:1": w2}))
    request = GenerateRequest(request_id="r", token_ids=[3, 4], sampling=SamplingParams(max_tokens=2))
    frames = await _run(backend, FakeSelector(), 2, request)
    assert [t for f in frames for t in f.token_ids] == [7, 8]
    assert w2.received[0].token_ids == [3, 4]  # the original request, unchanged
    assert metrics.migrations.labels("m")._value.get() == 0


async def test_death_after_the_last_token_ends_the_stream_without_another_worker() -> None:
    w2 = Worker(tokens=[7])
    backend, _ = _backend(FakeClient({"tcp://w2:1": w2}))
    request = GenerateRequest(request_id="r", token_ids=[5], sampling=SamplingParams(max_tokens=3))

    async def dies_before_final_frame(address: str, endpoint: str, payload: bytes) -> AsyncIterator[bytes]:
        for token in (1, 2, 3):
            yield encode(GenerateFrame(token_ids=[token]))
        raise PeerGoneError("gone before the final frame")

    backend.client.stream = dies_before_final_frame  # type: ignore[method-assign]
    frames = await _run(backend, FakeSelector(), 2, request)
    assert [t for f in frames for t in f.token_ids] == [1, 2, 3]
    assert frames[-1].finish_reason == "length"
    assert frames[-1].usage is not None and frames[-1].usage.completion_tokens == 3
    assert not w2.received


def test_a_disaggregated_request_continues_aggregated() -> None:
    handle = KvTransferHandle(source_address="tcp://p:1", worker_id=9, transfer_id="t", block_ids=(1,), num_tokens=16)
    request = GenerateRequest(request_id="r", token_ids=[1, 2], sampling=SamplingParams(max_tokens=4), kv_transfer=handle)
    cont = continuation(request, [5])
    assert cont is not None
    assert cont.kv_transfer is None and not cont.prefill_only
    assert cont.token_ids == [1, 2, 5] and cont.sampling.max_tokens == 3
    assert request.token_ids == [1, 2]  # the original is not changed
    assert continuation(request, [5, 6, 7, 8]) is None


def test_restated_usage_counts_the_original_prompt_and_every_token() -> None:
    frame = GenerateFrame(finish_reason="stop", usage=Usage(prompt_tokens=12, completion_tokens=3, cached_tokens=11))
    usage = restate_usage(frame, num_prompt_tokens=9, num_generated_before=3).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (9, 6, 9)


async def test_a_request_that_cannot_be_encoded_leaves_no_load_counted() -> None:
    # The API bounds seed; past that bound msgpack cannot carry it. The selector must not
    # count the request as running on a worker it was never sent to.
    backend, _ = _backend(FakeClient({"tcp://w1:1": Worker(tokens=[1])}))
    selector = FakeSelector()
    request = GenerateRequest(request_id="r", token_ids=[1], sampling=SamplingParams(max_tokens=1, seed=2**70))
    with pytest.raises(OverflowError):
        await _run(backend, selector, 1, request)
    assert selector.offered == [] and selector.finished == 0
