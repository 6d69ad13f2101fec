"""BlockPool: fixed-size KV blocks, their reference counts, the prefix cache, and KV events.

- Free blocks wait in one queue in LRU order: a freed block goes to the back, allocation
  takes from the front. A free block that still holds a cached prefix keeps its hash, so
  a later request can revive it; it is evicted (and a `removed` event emitted) only when
  the front of the queue reaches it.
- The pool is the only producer of KV events. Every change to the cached set emits one,
  with a monotonic id, so a subscriber that replays them rebuilds the same set.
- With an offload tier (`offload`, see kv_cache/offload.py) an evicted cached block is
  copied to host memory / disk instead of forgotten. The advertised set is the union of
  the tiers: a block is `stored` when it enters the first tier and `removed` when it leaves
  the last one, so the router counts a prefix the worker can load instead of recompute.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixroute.protocol.messages import (
    KvCleared,
    KvEvent,
    KvEventData,
    KvRemoved,
    KvStored,
    StoredBlock,
)

if TYPE_CHECKING:
    from mixroute.engine.kv_cache.offload import KvOffload


@dataclass(slots=True, eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    """Sequence hash when the block is in the prefix cache."""
    tokens_hash: int | None = None
    parent_hash: int | None = None
    cached_order: int = 0
    """When it was cached, so a dump lists parents before children."""


class BlockPool:
    def __init__(self, num_blocks: int, *, enable_caching: bool = True, worker_id: int = 0) -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.worker_id = worker_id
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, Block] = {}
        self._events: list[KvEvent] = []
        self._next_event_id = 0
        self._cache_counter = 0
        self.offload: KvOffload | None = None
        """Set by the engine when host/disk offload is configured."""

    # ---- allocation ----

    @property
    def num_free(self) -> int:
        """Blocks not referenced by any request (including evictable cached ones)."""
        return len(self._free)

    @property
    def num_active(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, count: int) -> list[Block]:
        if count > len(self._free):
            raise ValueError(f"asked for {count} blocks, {len(self._free)} free")
        out: list[Block] = []
        evicted: list[tuple[int, int, int | None, int]] = []
        evicted_ids: list[int] = []
        for _ in range(count):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                assert block.tokens_hash is not None
                evicted.append((block.block_hash, block.tokens_hash, block.parent_hash, block.cached_order))
                evicted_ids.append(block_id)
                self._uncache(block)
            block.ref_count = 1
            out.append(block)
        if evicted:
            if self.offload is not None:
                # Copied out before any forward pass reuses the blocks; gone only if pushed out of every tier.
                gone = [h for h in self.offload.save(evicted, evicted_ids) if h not in self._cached]
            else:
                gone = [h for h, *_ in evicted]
            if gone:
                self._emit(KvRemoved(block_hashes=gone))
        return out

    def touch(self, blocks: Iterable[Block]) -> None:
        """Take a reference on cached blocks found by a prefix lookup."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1

    def free(self, blocks: Iterable[Block]) -> None:
        """Drop one reference each; pass a request's blocks tail first so tails evict first."""
        for block in blocks:
            assert block.ref_count > 0, f"double free of block {block.block_id}"
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = None

    # ---- prefix cache ----

    def lookup(self, seq_hash: int) -> Block | None:
        return self._cached.get(seq_hash)

    def cache_blocks(
        self, blocks: Sequence[Block], seq_hashes: Sequence[int], local_hashes: Sequence[int], parent_hash: int | None
    ) -> None:
        """Register full, computed blocks under their hashes; emit `stored` for each consecutive run."""
        if not self.enable_caching:
            return
        run: list[StoredBlock] = []
        run_parent = parent_hash
        prev = parent_hash
        for block, seq_hash, local in zip(blocks, seq_hashes, local_hashes, strict=True):
            is_new = block.block_hash is None and seq_hash not in self._cached
            if is_new:
                block.block_hash, block.tokens_hash, block.parent_hash = seq_hash, local, prev
                block.cached_order = self._cache_counter
                self._cache_counter += 1
                self._cached[seq_hash] = block
            # A block loaded back from the offload tiers was never un-advertised.
            if is_new and (self.offload is None or seq_hash not in self.offload):
                if not run:
                    run_parent = prev
                run.append(StoredBlock(seq_hash, local))
            elif run:
                # Another request cached this content first (our copy stays private), or it
                # is advertised already: close the run so each event's chain is contiguous.
                self._emit(KvStored(parent_hash=run_parent, blocks=run))
                run = []
            prev = seq_hash
        if run:
            self._emit(KvStored(parent_hash=run_parent, blocks=run))

    def cached_hashes(self) -> set[int]:
        """The advertised set: device blocks and, with offload, host/disk entries."""
        if self.offload is None:
            return set(self._cached)
        return set(self._cached) | {h for h, _ in self.offload.entries()}

    def reset_cache(self) -> bool:
        """Forget every cached block that no request holds (every tier); False if some are held."""
        if any(b.ref_count > 0 for b in self._cached.values()):
            return False
        for block in list(self._cached.values()):
            self._uncache(block)
        if self.offload is not None:
            self.offload.clear()
        self._emit(KvCleared())
        return True

    def _uncache(self, block: Block) -> None:
        if block.block_hash is not None and self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = block.tokens_hash = block.parent_hash = None

    # ---- events ----

    @property
    def last_event_id(self) -> int:
        return self._next_event_id - 1

    def _emit(self, data: KvEventData) -> None:
        self._events.append(KvEvent(worker_id=self.worker_id, event_id=self._next_event_id, data=data))
        self._next_event_id += 1

    def drain_events(self) -> list[KvEvent]:
        events, self._events = self._events, []
        return events

    def dump_events(self) -> list[KvEvent]:
        """`cleared` + `stored` events rebuilding the cached set, all stamped with the last event id.

        A subscriber applies them, then continues with events whose id is greater.
        """
        last = self.last_event_id
        # seq_hash -> (cached_order, parent_hash, tokens_hash), over every tier.
        union: dict[int, tuple[int, int | None, int]] = {}
        if self.offload is not None:
            for seq_hash, entry in self.offload.entries():
                union[seq_hash] = (entry.cached_order, entry.parent_hash, entry.tokens_hash)
        for block in self._cached.values():
            assert block.block_hash is not None and block.tokens_hash is not None
            known = union.get(block.block_hash)
            if known is None or block.cached_order < known[0]:
                union[block.block_hash] = (block.cached_order, block.parent_hash, block.tokens_hash)
        out = [KvEvent(worker_id=self.worker_id, event_id=last, data=KvCleared())]
        for seq_hash, (_, parent, tokens) in sorted(union.items(), key=lambda item: item[1][0]):
            stored = KvStored(parent_hash=parent, blocks=[StoredBlock(seq_hash, tokens)])
            out.append(KvEvent(worker_id=self.worker_id, event_id=last, data=stored))
        return out
