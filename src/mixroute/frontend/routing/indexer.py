"""The KV indexer: which worker holds which prompt prefix, built from workers' KV events.

A radix tree over `tokens_hash` chains (the local hash of each block's tokens): a node is
one block reached from the root through the blocks before it, so walking the tree with
a prompt's local block hashes visits exactly the prefixes some worker has cached. Each
node keeps the set of workers holding it. Workers name their blocks by sequence hash
(`block_hash` of a stored event), so each worker also has a map from its sequence hashes
to nodes, used for `parent_hash` lookups and removals. Matching on tokens hashes, not on
the engines' own ids, is what lets the indexer consume events from engines whose
sequence hashes differ from ours.

Event ids: each worker's events carry a monotonic id. The indexer remembers the last id
applied per worker; a gap (or events from a worker it has never synced) makes it report
that worker as needing a full dump (`take_dump_requests`). While a dump is pending the
worker's live events are buffered, then replayed on top of the dump (stores and removals
are idempotent, so replaying events older than the dump's snapshot converges).

Not thread-safe by design: it belongs to the event loop thread of the frontend (its
event task applies events; route decisions read it synchronously between awaits).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from mixroute.logs import kv
from mixroute.protocol.messages import KvCleared, KvEvent, KvRemoved, KvStored, StoredBlock

log = logging.getLogger(__name__)


class _Node:
    __slots__ = ("children", "parent", "tokens_hash", "workers")

    def __init__(self, tokens_hash: int, parent: _Node | None) -> None:
        self.tokens_hash = tokens_hash
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.workers: set[int] = set()


class _WorkerState:
    __slots__ = ("blocks", "is_synced", "last_event_id", "pending")

    def __init__(self) -> None:
        self.blocks: dict[int, _Node] = {}
        """This worker's sequence hash -> node."""
        self.last_event_id = -1
        self.is_synced = False
        """False until the worker's history is known (first event 0, or a dump applied)."""
        self.pending: list[KvEvent] | None = None
        """Live events buffered while a dump is in flight (None when no dump is pending)."""


class KvIndexer:
    """Radix tree of cached blocks per worker; answers "how many leading blocks of this
    prompt does each worker hold"."""

    def __init__(self) -> None:
        self._root = _Node(0, None)
        self._workers: dict[int, _WorkerState] = {}
        self._dump_requests: set[int] = set()
        self.num_events = 0
        self.num_gaps = 0

    # ---- queries ----

    def find_matches(self, local_hashes: Sequence[int]) -> dict[int, int]:
        """Number of leading blocks of `local_hashes` cached, per worker (workers with 0 omitted).

        Cost is one dict lookup and one C-level subset test per prompt block, independent of
        how many blocks are indexed. Workers cache prompts whole, so along a chain the
        holders rarely change: the subset test (no allocation) answers most steps, and a
        new, smaller set is built only where some holder's run ends. `current` may be a
        node's own set; it is only read, never changed."""
        scores: dict[int, int] = {}
        node = self._root.children.get(local_hashes[0]) if local_hashes else None
        if node is None:
            return scores
        current = node.workers
        depth = 1
        rest = iter(local_hashes)
        next(rest)
        for h in rest:
            child = node.children.get(h)
            if child is None:
                break
            holders = child.workers
            if not current <= holders:
                kept = current & holders
                for w in current - kept:
                    scores[w] = depth
                if not kept:
                    return scores
                current = kept
            node = child
            depth += 1
        for w in current:
            scores[w] = depth
        return scores

    @property
    def num_blocks(self) -> int:
        return sum(len(s.blocks) for s in self._workers.values())

    def worker_ids(self) -> list[int]:
        return list(self._workers)

    def num_worker_blocks(self, worker_id: int) -> int:
        state = self._workers.get(worker_id)
        return 0 if state is None else len(state.blocks)

    def is_synced(self, worker_id: int) -> bool:
        state = self._workers.get(worker_id)
        return state is not None and state.is_synced

    # ---- membership and dumps ----

    def add_worker(self, worker_id: int) -> None:
        """A worker appeared in discovery: ask for its dump so blocks cached before we started count."""
        if worker_id not in self._workers:
            self._workers[worker_id] = _WorkerState()
            self._request_dump(worker_id)

    def remove_worker(self, worker_id: int) -> None:
        state = self._workers.pop(worker_id, None)
        self._dump_requests.discard(worker_id)
        if state is not None:
            self._drop_blocks(worker_id, state)

    def take_dump_requests(self) -> list[int]:
        """Workers whose dump the caller should fetch now (each reported once per need)."""
        out = list(self._dump_requests)
        self._dump_requests.clear()
        return out

    def dump_failed(self, worker_id: int) -> None:
        """Fetching the dump failed: replay what was buffered and ask again on the next gap."""
        state = self._workers.get(worker_id)
        if state is None or state.pending is None:
            return
        pending, state.pending = state.pending, None
        for event in pending:
            self._apply_ordered(worker_id, state, event)

    def apply_dump(self, worker_id: int, events: Iterable[KvEvent]) -> None:
        """Replace this worker's blocks with a dump (a `cleared` then `stored` events)."""
        state = self._workers.get(worker_id)
        if state is None:
            state = self._workers[worker_id] = _WorkerState()
        self._drop_blocks(worker_id, state)
        dump_last = -1
        for event in events:
            self._apply_data(worker_id, state, event)
            dump_last = max(dump_last, event.event_id)
        pending, state.pending = state.pending or [], None
        state.is_synced = True
        if dump_last >= 0:
            state.last_event_id = dump_last
            pending = [e for e in pending if e.event_id > dump_last]
        elif pending:
            state.last_event_id = pending[0].event_id - 1
        else:
            state.is_synced = False  # next live event starts the sequence
        for event in pending:
            self._apply_ordered(worker_id, state, event)

    # ---- own decisions (approximate mode) ----

    def store_blocks(self, worker_id: int, local_hashes: Sequence[int], seq_hashes: Sequence[int]) -> None:
        """Record a prompt's blocks on a worker without event-id bookkeeping (approximate mode)."""
        state = self._workers.get(worker_id)
        if state is None:
            state = self._workers[worker_id] = _WorkerState()
            state.is_synced = True
        blocks = [StoredBlock(s, t) for t, s in zip(local_hashes, seq_hashes)]
        self._store(worker_id, state, KvStored(parent_hash=None, blocks=blocks))

    def remove_blocks(self, worker_id: int, seq_hashes: Sequence[int]) -> None:
        state = self._workers.get(worker_id)
        if state is not None:
            self._apply_data(worker_id, state, KvEvent(worker_id=worker_id, event_id=-1, data=KvRemoved(block_hashes=list(seq_hashes))))

    # ---- live events ----

    def apply_event(self, event: KvEvent) -> None:
        self.num_events += 1
        worker_id = event.worker_id
        state = self._workers.get(worker_id)
        if state is None:
            state = self._workers[worker_id] = _WorkerState()
            if event.event_id != 0:
                self._request_dump(worker_id)
        if state.pending is not None:
            state.pending.append(event)
            return
        self._apply_ordered(worker_id, state, event)

    def _apply_ordered(self, worker_id: int, state: _WorkerState, event: KvEvent) -> None:
        if state.is_synced and event.event_id <= state.last_event_id:
            return  # duplicate or already covered by a dump
        expected = state.last_event_id + 1
        if state.is_synced and event.event_id != expected:
            self.num_gaps += 1
            log.warning("kv event gap %s", kv(worker_id=worker_id, expected=expected, got=event.event_id))
            self._request_dump(worker_id)
            state.pending = [event]
            return
        # Not synced only right after a dump whose events carried no ids: this event starts
        # the sequence.
        state.is_synced = True
        state.last_event_id = event.event_id
        self._apply_data(worker_id, state, event)

    def _request_dump(self, worker_id: int) -> None:
        state = self._workers[worker_id]
        if state.pending is None:
            state.pending = []
        self._dump_requests.add(worker_id)

    # ---- tree edits ----

    def _apply_data(self, worker_id: int, state: _WorkerState, event: KvEvent) -> None:
        data = event.data
        if isinstance(data, KvStored):
            self._store(worker_id, state, data)
        elif isinstance(data, KvRemoved):
            for block_hash in data.block_hashes:
                node = state.blocks.pop(block_hash, None)
                if node is not None:
                    self._unlink(node, worker_id)
        elif isinstance(data, KvCleared):
            self._drop_blocks(worker_id, state)

    def _store(self, worker_id: int, state: _WorkerState, data: KvStored) -> None:
        if data.parent_hash is None:
            parent = self._root
        else:
            found = state.blocks.get(data.parent_hash)
            if found is None:
                # The parent was evicted or never seen: our view of this worker is stale.
                log.debug("stored block with unknown parent %s", kv(worker_id=worker_id))
                return
            parent = found
        blocks = state.blocks
        for block in data.blocks:
            node = parent.children.get(block.tokens_hash)
            if node is None:
                node = _Node(block.tokens_hash, parent)
                parent.children[block.tokens_hash] = node
            node.workers.add(worker_id)
            old = blocks.get(block.block_hash)
            if old is not None and old is not node:
                self._unlink(old, worker_id)
            blocks[block.block_hash] = node
            parent = node

    def _drop_blocks(self, worker_id: int, state: _WorkerState) -> None:
        for node in state.blocks.values():
            self._unlink(node, worker_id)
        state.blocks.clear()

    def _unlink(self, node: _Node, worker_id: int) -> None:
        node.workers.discard(worker_id)
        # Prune empty leaves up the chain so the tree does not grow without bound.
        while node.parent is not None and not node.workers and not node.children:
            parent = node.parent
            if parent.children.get(node.tokens_hash) is node:
                del parent.children[node.tokens_hash]
            node = parent
