"""Per-worker load: what this frontend has sent (updated at each decision, released as
requests progress) combined with what workers report (`LoadMetrics` events).

The own bookkeeping is immediate but blind to other frontends; the reported numbers see
everything but lag. The load used for routing is the larger of the two, per quantity.

Active blocks are counted as the worker counts them: once per distinct block. Requests of
one prefix group on one worker share their prefix blocks, so the own estimate keeps a
reference count per sequence hash and counts each block once; summing per request would
charge a worker the shared prefix again for every request of the group it already serves,
pushing the group's next requests to other workers (and making the own estimate disagree
with the worker's reported `num_active_blocks`, which is deduplicated).

Blocks being prefilled: each worker also counts, per block, the in-flight requests that
are still computing it (routed, no first token yet). A request of the same prefix group
sent to that worker waits for those blocks instead of computing them again (the engine
scheduler's in-flight dedup), so the selector does not charge it that part of the
worker's queued prefill (`WorkerLoad.prefilling_shared`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mixroute.protocol.messages import LoadMetrics


@dataclass(slots=True)
class _Sent:
    worker_id: int
    prefill_tokens: int
    num_blocks: int
    block_hashes: tuple[int, ...] = ()
    prefill_hashes: tuple[int, ...] = ()
    """The blocks it computes (not cached on the worker when routed), until its first token."""


@dataclass(slots=True)
class WorkerLoad:
    num_active_blocks: int = 0
    """Blocks held by this frontend's in-flight requests on the worker."""
    num_prefill_tokens: int = 0
    """Prompt tokens of this frontend's requests still waiting for their first token."""
    num_requests: int = 0
    reported: LoadMetrics | None = None
    requests: set[str] = field(default_factory=set)
    block_refs: dict[int, int] = field(default_factory=dict)
    """Sequence hash -> number of this frontend's in-flight requests holding that block."""
    num_untracked_blocks: int = 0
    """Blocks of in-flight requests added without their hashes (counted per request)."""
    prefill_refs: dict[int, int] = field(default_factory=dict)
    """Sequence hash -> number of this frontend's requests on the worker still computing that block."""

    @property
    def unique_blocks(self) -> int:
        """Own estimate of the worker's referenced blocks, shared prefix blocks counted once."""
        return len(self.block_refs) + self.num_untracked_blocks

    @property
    def active_blocks(self) -> int:
        reported = self.reported.num_active_blocks if self.reported is not None else 0
        return max(self.unique_blocks, reported)

    def prefilling_shared(self, block_hashes: Sequence[int]) -> int:
        """How many of these blocks requests on this worker are computing right now."""
        refs = self.prefill_refs
        return sum(1 for h in block_hashes if h in refs) if refs else 0

    @property
    def prefill_tokens(self) -> int:
        reported = self.reported.num_active_prefill_tokens if self.reported is not None else 0
        return max(self.num_prefill_tokens, reported)


def chain_keys(local_hashes: Sequence[int]) -> list[int]:
    """Frontend-private identities for a prompt's blocks: block i's key depends on the
    local hashes of blocks 0..i, like a sequence hash, but costs one C-level tuple hash per
    block (the protocol's sequence hashes cost ~1 ms for a 4k-token prompt on the event
    loop). Only ever compared with other keys made here."""
    keys: list[int] = []
    key = 0
    for h in local_hashes:
        key = hash((key, h))
        keys.append(key)
    return keys


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

    def add_request(
        self,
        request_id: str,
        worker_id: int,
        prefill_tokens: int,
        num_blocks: int,
        block_hashes: Sequence[int] = (),
        num_cached_blocks: int = 0,
    ) -> None:
        """Account a request to a worker. `num_blocks`: blocks it adds (prompt blocks not
        cached there); `block_hashes`: identities of all its prompt blocks (`chain_keys`), for the
        deduplicated count (without them the request counts `num_blocks` on its own);
        `num_cached_blocks`: its leading blocks the worker holds (the rest it computes)."""
        load = self.get(worker_id)
        load.num_active_blocks += num_blocks
        load.num_prefill_tokens += prefill_tokens
        load.num_requests += 1
        load.requests.add(request_id)
        hashes = tuple(block_hashes)
        if hashes:
            refs = load.block_refs
            for h in hashes:
                refs[h] = refs.get(h, 0) + 1
        else:
            load.num_untracked_blocks += num_blocks
        computing = hashes[num_cached_blocks:] if prefill_tokens > 0 else ()
        if computing:
            refs = load.prefill_refs
            for h in computing:
                refs[h] = refs.get(h, 0) + 1
        self._sent[request_id] = _Sent(worker_id, prefill_tokens, num_blocks, hashes, computing)

    def mark_prefill_done(self, request_id: str) -> None:
        """First token arrived: the prompt no longer costs prefill time."""
        sent = self._sent.get(request_id)
        if sent is None or sent.prefill_tokens == 0:
            return
        load = self._workers.get(sent.worker_id)
        if load is not None:
            load.num_prefill_tokens -= sent.prefill_tokens
            _release(load.prefill_refs, sent.prefill_hashes)
        sent.prefill_tokens = 0
        sent.prefill_hashes = ()

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
        _release(load.prefill_refs, sent.prefill_hashes)
        if sent.block_hashes:
            _release(load.block_refs, sent.block_hashes)
        else:
            load.num_untracked_blocks -= sent.num_blocks


def _release(refs: dict[int, int], hashes: Sequence[int]) -> None:
    """Drop one reference to each hash."""
    for h in hashes:
        n = refs.get(h, 0) - 1
        if n > 0:
            refs[h] = n
        else:
            refs.pop(h, None)
