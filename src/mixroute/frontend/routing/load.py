"""Per-worker load: what this frontend has sent (updated at each decision, released as
requests progress) combined with what workers report (`LoadMetrics` events).

The own bookkeeping is immediate but blind to other frontends; the reported numbers see
everything but lag. The load used for routing is the larger of the two, per quantity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixroute.protocol.messages import LoadMetrics


@dataclass(slots=True)
class _Sent:
    worker_id: int
    prefill_tokens: int
    num_blocks: int


@dataclass(slots=True)
class WorkerLoad:
    num_active_blocks: int = 0
    """Blocks held by this frontend's in-flight requests on the worker."""
    num_prefill_tokens: int = 0
    """Prompt tokens of this frontend's requests still waiting for their first token."""
    num_requests: int = 0
    reported: LoadMetrics | None = None
    requests: set[str] = field(default_factory=set)

    @property
    def active_blocks(self) -> int:
        reported = self.reported.num_active_blocks if self.reported is not None else 0
        return max(self.num_active_blocks, reported)

    @property
    def prefill_tokens(self) -> int:
        reported = self.reported.num_active_prefill_tokens if self.reported is not None else 0
        return max(self.num_prefill_tokens, reported)


class LoadTracker:
    """Owned by the frontend's event loop thread, like the indexer."""

    def __init__(self) -> None:
        self._workers: dict[int, WorkerLoad] = {}
        self._sent: dict[str, _Sent] = {}

    def get(self, worker_id: int) -> WorkerLoad:
        load = self._workers.get(worker_id)
        if load is None:
            load = self._workers[worker_id] = WorkerLoad()
        return load

    def items(self) -> list[tuple[int, WorkerLoad]]:
        return list(self._workers.items())

    def remove_worker(self, worker_id: int) -> None:
        load = self._workers.pop(worker_id, None)
        if load is not None:
            for request_id in load.requests:
                self._sent.pop(request_id, None)

    def update_metrics(self, metrics: LoadMetrics) -> None:
        self.get(metrics.worker_id).reported = metrics

    def add_request(self, request_id: str, worker_id: int, prefill_tokens: int, num_blocks: int) -> None:
        load = self.get(worker_id)
        load.num_active_blocks += num_blocks
        load.num_prefill_tokens += prefill_tokens
        load.num_requests += 1
        load.requests.add(request_id)
        self._sent[request_id] = _Sent(worker_id, prefill_tokens, num_blocks)

    def mark_prefill_done(self, request_id: str) -> None:
        """First token arrived: the prompt no longer costs prefill time."""
        sent = self._sent.get(request_id)
        if sent is None or sent.prefill_tokens == 0:
            return
        load = self._workers.get(sent.worker_id)
        if load is not None:
            load.num_prefill_tokens -= sent.prefill_tokens
        sent.prefill_tokens = 0

    def finish_request(self, request_id: str) -> None:
        sent = self._sent.pop(request_id, None)
        if sent is None:
            return
        load = self._workers.get(sent.worker_id)
        if load is None:
            return
        load.num_prefill_tokens -= sent.prefill_tokens
        load.num_active_blocks -= sent.num_blocks
        load.num_requests -= 1
        load.requests.discard(request_id)
