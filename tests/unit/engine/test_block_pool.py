"""BlockPool / KvCacheManager: LRU free queue, ref counts, prefix cache, events."""

from __future__ import annotations

from mixroute.engine.kv_cache.block_pool import BlockPool
from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager
from mixroute.engine.sequence import Sequence
from mixroute.protocol.hashing import HASH_SEED, hash_prompt
from mixroute.protocol.messages import KvRemoved, KvStored, SamplingParams

from .conftest import replay


def seq(tokens: list[int], rid: str = "s") -> Sequence:
    return Sequence(request_id=rid, token_ids=list(tokens), num_prompt_tokens=len(tokens),
                    sampling=SamplingParams(), hash_seed=HASH_SEED)


def test_lru_order_and_eviction_events() -> None:
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.cache_blocks([a, b], [11, 12], [1, 2], parent_hash=None)
    stored = pool.drain_events()
    assert len(stored) == 1 and isinstance(stored[0].data, KvStored)
    assert stored[0].data.parent_hash is None and [x.block_hash for x in stored[0].data.blocks] == [11, 12]
    pool.free([b, a])  # tail first
    assert pool.num_free == 4 and pool.lookup(11) is a
    # Two never-used blocks come first, then b (freed before a), then a.
    got = pool.allocate(3)
    assert [x.block_id for x in got][-1] == b.block_id
    removed = pool.drain_events()
    assert isinstance(removed[0].data, KvRemoved) and removed[0].data.block_hashes == [12]
    assert pool.lookup(12) is None and pool.lookup(11) is a
    assert removed[0].event_id == stored[0].event_id + 1


def test_touch_revives_cached_free_block_and_refcounts() -> None:
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    pool.cache_blocks([a], [7], [7], None)
    pool.free([a])
    pool.touch([a])
    pool.touch([a])
    assert a.ref_count == 2 and pool.num_free == 2
    pool.free([a])
    assert pool.num_free == 2
    pool.free([a])
    assert pool.num_free == 3


def test_manager_prefix_hits_and_event_replay() -> None:
    pool = BlockPool(16)
    kv = KvCacheManager(pool, block_size=4)
    first = seq(list(range(10)), "a")
    assert kv.allocate(first, first.num_tokens) is not None
    first.num_computed_tokens = 10
    kv.commit(first)
    _, seq_hashes = hash_prompt(list(range(10)), 4)
    assert pool.cached_hashes() == set(seq_hashes)
    second = seq(list(range(8)) + [99, 98, 97], "b")
    hits = kv.find_cached_prefix(second)
    assert [b.block_id for b in hits] == first.block_ids[:2]
    # An exact repeat never hits its last block: one token must be computed for logits.
    repeat = seq(list(range(8)), "c")
    assert len(kv.find_cached_prefix(repeat)) == 1
    assert kv.allocate(second, 3, hits) is not None
    assert second.block_ids[:2] == first.block_ids[:2] and len(second.block_ids) == 3
    kv.free(first)
    kv.free(second)
    assert pool.num_free == 16
    assert replay(pool.drain_events()) == pool.cached_hashes()


def test_allocate_refuses_when_full() -> None:
    pool = BlockPool(2)
    kv = KvCacheManager(pool, block_size=4)
    s = seq([1] * 12)
    assert kv.allocate(s, 12) is None
    assert s.block_ids == [] and pool.num_free == 2


def test_caching_disabled_emits_nothing() -> None:
    pool = BlockPool(4, enable_caching=False)
    kv = KvCacheManager(pool, block_size=4)
    s = seq(list(range(8)))
    kv.allocate(s, 8)
    s.num_computed_tokens = 8
    kv.commit(s)
    assert pool.drain_events() == [] and kv.find_cached_prefix(seq(list(range(9)))) == []
