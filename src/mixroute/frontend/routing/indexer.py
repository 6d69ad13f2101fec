"""The KV indexer: which worker holds which prompt prefix, built from workers' KV events.

A radix tree over `tokens_hash` chains (the local hash of each block's tokens): a node is
one block reached from the root through the blocks before it, so walking the tree with
a prompt's local block hashes visits exactly the prefixes some worker has cached.
Workers name their blocks by sequence hash (`block_hash` of a stored event), so each
worker also has a map from its sequence hashes to nodes, used for `parent_hash` lookups
and removals. Matching on tokens hashes, not on the engines' own ids, is what lets the
indexer consume events from engines whose sequence hashes differ from ours.

The tree is flat: a node is an int key, `hash((parent key, tokens_hash))` from root key
0 (the frontend's `chain_keys`, so a caller that has them skips the hashing), and
its fields live in dicts of ints: holders as a bitmask of worker slots, parent, number
of children. Dicts holding only ints are not tracked by the garbage collector, so an
index of a million blocks adds nothing to a full collection; the object-per-node tree
it replaces (a node, its children dict and its workers set) put ~100k containers in
front of every full collection on Workload A and paused the event loop 54-81 ms each.

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

ROOT = 0
"""Key of the root: the parent of every prompt's first block (`chain_keys` starts from it)."""


class _WorkerState:
    __slots__ = ("blocks", "is_synced", "last_event_id", "pending")

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}
        """This worker's sequence hash -> node key."""
        self.last_event_id = -1
        self.is_synced = False
        """False until the worker's history is known (first event 0, or a dump applied)."""
        self.pending: list[KvEvent] | None = None
        """Live events buffered while a dump is in flight (None when no dump is pending)."""


class KvIndexer:
    """Radix tree of cached blocks per worker; answers "how many leading blocks of this
    prompt does each worker hold"."""

    def __init__(self) -> None:
        self._holders: dict[int, int] = {}
        """Node key -> bitmask of the worker slots holding the block (0: only an inner node now)."""
        self._parent: dict[int, int] = {}
        """Node key -> its parent's key (ROOT for a first block)."""
        self._num_children: dict[int, int] = {}
        """Node key -> number of child nodes (absent: none)."""
        self._slots: dict[int, int] = {}
        """Worker id -> its bit in the holder masks."""
        self._slot_workers: list[int | None] = []
        """Bit -> worker id (None: free)."""
        self._workers: dict[int, _WorkerState] = {}
        self._dump_requests: set[int] = set()
        self.num_events = 0
        self.num_gaps = 0

    # ---- queries ----

    def find_matches(self, local_hashes: Sequence[int], keys: Sequence[int] | None = None) -> dict[int, int]:
        """Number of leading blocks of `local_hashes` cached, per worker (workers with 0 omitted).

        `keys`: the prompt's `chain_keys(local_hashes)` when the caller has them (they are
        the node keys), else computed on the way. Cost is one dict lookup and one integer
        AND per prompt block, independent of how many blocks are indexed; workers cache
        prompts whole, so along a chain the holder mask rarely changes."""
        holders = self._holders
        scores: dict[int, int] = {}
        current = -1  # every worker, until the first block narrows it
        depth = 0
        key = ROOT
        for i, h in enumerate(local_hashes):
            # Hashed on the way when not given: the walk usually stops well before the end.
            key = keys[i] if keys is not None else hash((key, h))
            mask = holders.get(key, 0) & current
            if mask != current:
                if depth:
                    self._score(current ^ mask, depth, scores)
                if not mask:
                    return scores
                current = mask
            depth += 1
        if depth:
            self._score(current, depth, scores)
        return scores

    def _score(self, mask: int, depth: int, scores: dict[int, int]) -> None:
        slot_workers = self._slot_workers
        while mask:
            low = mask & -mask
            worker_id = slot_workers[low.bit_length() - 1]
            if worker_id is not None:
                scores[worker_id] = depth
            mask ^= low

    @property
    def num_nodes(self) -> int:
        return len(self._holders)

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
        slot = self._slots.pop(worker_id, None)
        if slot is not None:
            self._slot_workers[slot] = None

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

    def _bit(self, worker_id: int) -> int:
        slot = self._slots.get(worker_id)
        if slot is None:
            try:
                slot = self._slot_workers.index(None)
                self._slot_workers[slot] = worker_id
            except ValueError:
                slot = len(self._slot_workers)
                self._slot_workers.append(worker_id)
            self._slots[worker_id] = slot
        return 1 << slot

    def _apply_data(self, worker_id: int, state: _WorkerState, event: KvEvent) -> None:
        data = event.data
        if isinstance(data, KvStored):
            self._store(worker_id, state, data)
        elif isinstance(data, KvRemoved):
            bit = self._bit(worker_id)
            for block_hash in data.block_hashes:
                key = state.blocks.pop(block_hash, None)
                if key is not None:
                    self._unlink(key, bit)
        elif isinstance(data, KvCleared):
            self._drop_blocks(worker_id, state)

    def _store(self, worker_id: int, state: _WorkerState, data: KvStored) -> None:
        blocks = state.blocks
        if data.parent_hash is None:
            parent = ROOT
        else:
            found = blocks.get(data.parent_hash)
            if found is None:
                # The parent was evicted or never seen: our view of this worker is stale.
                log.debug("stored block with unknown parent %s", kv(worker_id=worker_id))
                return
            parent = found
        bit = self._bit(worker_id)
        holders, parents, num_children = self._holders, self._parent, self._num_children
        for block in data.blocks:
            key = hash((parent, block.tokens_hash))
            mask = holders.get(key)
            if mask is None:
                holders[key] = bit
                parents[key] = parent
                if parent != ROOT:
                    num_children[parent] = num_children.get(parent, 0) + 1
            else:
                holders[key] = mask | bit
            old = blocks.get(block.block_hash)
            if old is not None and old != key:
                self._unlink(old, bit)
            blocks[block.block_hash] = key
            parent = key

    def _drop_blocks(self, worker_id: int, state: _WorkerState) -> None:
        bit = self._bit(worker_id)
        for key in state.blocks.values():
            self._unlink(key, bit)
        state.blocks.clear()

    def _unlink(self, key: int, bit: int) -> None:
        holders, num_children = self._holders, self._num_children
        mask = holders.get(key)
        if mask is None:
            return
        holders[key] = mask & ~bit
        # Prune empty leaves up the chain so the index does not grow without bound. (A
        # node may already be gone: one worker can name a chain by two sequence hashes.)
        while key != ROOT and not holders.get(key, 0) and key not in num_children:
            holders.pop(key, None)
            parent = self._parent.pop(key, ROOT)
            if parent == ROOT:
                return
            left = num_children.get(parent, 1) - 1
            if left:
                num_children[parent] = left
            else:
                num_children.pop(parent, None)
            key = parent

