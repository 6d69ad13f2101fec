"""KvCacheManager: the one boundary between the scheduler and the KV cache.

The scheduler asks `find_cached_prefix` for a waiting sequence, then `allocate` (blocks or
None: the caller preempts or waits), `commit` after a step computed tokens, and `free`.
"""

from __future__ import annotations

from mixroute.engine.kv_cache.block_pool import Block, BlockPool
from mixroute.engine.sequence import Sequence


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KvCacheManager:
    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    def find_cached_prefix(self, seq: Sequence) -> list[Block]:
        """Leading cached blocks of a not-yet-started sequence.

        At least one token is always left to compute, because the last prompt position's
        logits are needed to sample.
        """
        if not self.pool.enable_caching:
            return []
        seq.update_hashes(self.block_size)
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[Block] = []
        for seq_hash in seq.seq_hashes[:max_blocks]:
            block = self.pool.lookup(seq_hash)
            if block is None:
                break
            hits.append(block)
        if self.pool.offload is not None and len(hits) < max_blocks:
            hits += self._load_offloaded(seq, hits, max_blocks)
        return hits

    def _load_offloaded(self, seq: Sequence, hits: list[Block], max_blocks: int) -> list[Block]:
        """Bring the blocks that continue `hits` from host memory / disk back to the device.

        They become ordinary cached device blocks (no reference held), returned as hits.
        Loads only as many as there are free blocks beyond the request's own needs, so
        loading never starves the request it is for.
        """
        offload = self.pool.offload
        assert offload is not None
        start = len(hits)
        wanted = offload.chain(seq.seq_hashes[start:max_blocks])
        needed_after = cdiv(seq.num_tokens, self.block_size) - start - len(wanted)
        revived = sum(1 for b in hits if b.ref_count == 0)
        room = self.pool.num_free - revived - max(needed_after, 0)
        wanted = wanted[: max(room, 0)]
        if not wanted:
            return []
        data = offload.read(wanted)  # before allocating: making room may push these out of host memory
        if data is None:
            return []
        self.pool.touch(hits)  # allocating below evicts from the free queue, where these wait
        try:
            blocks = self.pool.allocate(len(wanted))
        finally:
            self.pool.free(reversed(hits))
        offload.write_device([b.block_id for b in blocks], data)
        parent = seq.seq_hashes[start - 1] if start > 0 else None
        end = start + len(blocks)
        self.pool.cache_blocks(blocks, seq.seq_hashes[start:end], seq.local_hashes[start:end], parent)
        self.pool.free(reversed(blocks))
        return blocks

    def allocate(self, seq: Sequence, num_new_tokens: int, cached: list[Block] | None = None) -> list[int] | None:
        """Grow `seq`'s blocks to hold its computed tokens, `cached` hits and `num_new_tokens`."""
        cached = cached or []
        total = seq.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        num_needed = cdiv(total, self.block_size) - len(seq.block_ids) - len(cached)
        num_revived = sum(1 for b in cached if b.ref_count == 0)
        if max(num_needed, 0) + num_revived > self.pool.num_free:
            return None
        if cached:
            self.pool.touch(cached)
            seq.block_ids.extend(b.block_id for b in cached)
            seq.num_committed_blocks = len(cached)
        if num_needed > 0:
            seq.block_ids.extend(b.block_id for b in self.pool.allocate(num_needed))
        return seq.block_ids

    def commit(self, seq: Sequence) -> None:
        """Register the sequence's newly full, computed blocks in the prefix cache."""
        num_full = seq.num_computed_tokens // self.block_size
        start = seq.num_committed_blocks
        if num_full <= start:
            return
        seq.update_hashes(self.block_size)
        blocks = [self.pool.blocks[i] for i in seq.block_ids[start:num_full]]
        parent = seq.seq_hashes[start - 1] if start > 0 else None
        self.pool.cache_blocks(blocks, seq.seq_hashes[start:num_full], seq.local_hashes[start:num_full], parent)
        seq.num_committed_blocks = num_full

    def free(self, seq: Sequence) -> None:
        self.pool.free(self.pool.blocks[i] for i in reversed(seq.block_ids))
        seq.block_ids = []
        seq.num_committed_blocks = 0
