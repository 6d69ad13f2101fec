"""KV offload to host memory and disk: evicted cached blocks are copied out, loaded back
with the same contents on a later prefix hit, and advertised as one set over all tiers."""

from __future__ import annotations

import random

import pytest
import torch

from mixroute.engine.kv_cache.block_pool import BlockPool
from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager
from mixroute.engine.kv_cache.kv_tensors import KvTensors
from mixroute.engine.kv_cache.offload import KvOffload
from mixroute.engine.sequence import Sequence
from mixroute.errors import ConfigError
from mixroute.protocol.hashing import HASH_SEED
from mixroute.protocol.messages import KvRemoved, SamplingParams

from .conftest import replay

BLOCK = 4


def seq(tokens: list[int], rid: str = "s") -> Sequence:
    return Sequence(request_id=rid, token_ids=list(tokens), num_prompt_tokens=len(tokens),
                    sampling=SamplingParams(), hash_seed=HASH_SEED)


def make(num_blocks: int, host: int, tmp_path=None, disk: int = 0):
    tensors = KvTensors(2, num_blocks, BLOCK, 2, 3, torch.float32, torch.device("cpu"))
    pool = BlockPool(num_blocks)
    pool.offload = KvOffload(
        tensors, host, disk_dir=None if tmp_path is None else tmp_path / "kv", num_disk_blocks=disk
    )
    return tensors, pool, KvCacheManager(pool, BLOCK)


def compute(kv: KvCacheManager, tensors: KvTensors, s: Sequence) -> None:
    """Admit `s` and 'compute' its prompt: each block's K/V is a function of its tokens."""
    hits = kv.find_cached_prefix(s)
    assert kv.allocate(s, s.num_tokens - len(hits) * BLOCK, hits) is not None
    for i, block_id in enumerate(s.block_ids):
        tokens = s.token_ids[i * BLOCK : (i + 1) * BLOCK]
        if i >= len(hits):
            for layer, (k, v) in enumerate(tensors.layers):
                k[block_id] = expected_block(tokens, layer, 0)
                v[block_id] = expected_block(tokens, layer, 1)
    s.num_computed_tokens = s.num_tokens
    kv.commit(s)


def expected_block(tokens: list[int], layer: int, which: int) -> torch.Tensor:
    value = float(sum(t * (7 + j) for j, t in enumerate(tokens)) + 1000 * layer + 100 * which)
    return torch.full((BLOCK, 2, 3), value) + torch.arange(BLOCK).view(BLOCK, 1, 1)


def assert_contents(tensors: KvTensors, s: Sequence, num_blocks: int) -> None:
    for i in range(num_blocks):
        tokens = s.token_ids[i * BLOCK : (i + 1) * BLOCK]
        for layer, (k, v) in enumerate(tensors.layers):
            assert torch.equal(k[s.block_ids[i]], expected_block(tokens, layer, 0)), (i, layer)
            assert torch.equal(v[s.block_ids[i]], expected_block(tokens, layer, 1)), (i, layer)


def test_evicted_prefix_comes_back_from_host_memory_with_its_contents() -> None:
    tensors, pool, kv = make(num_blocks=6, host=8)
    first = seq(list(range(17)), "a")  # 4 full blocks + 1 partial
    compute(kv, tensors, first)
    kv.free(first)
    other = seq(list(range(100, 121)), "b")  # needs 6 blocks: evicts every cached block of `a`
    compute(kv, tensors, other)
    kv.free(other)
    assert all(pool.lookup(h) is None for h in first.seq_hashes[:4])
    assert len(pool.offload) >= 4
    events = pool.drain_events()
    # Nothing of `a` was ever un-advertised: it went to host memory, not away.
    removed = {h for e in events if isinstance(e.data, KvRemoved) for h in e.data.block_hashes}
    assert not removed & set(first.seq_hashes[:4])
    assert replay(events) == pool.cached_hashes() == replay(pool.dump_events())

    again = seq(list(range(17)) + [5, 6, 7], "c")
    hits = kv.find_cached_prefix(again)
    assert len(hits) == 4
    assert kv.allocate(again, again.num_tokens - 16, hits) is not None
    assert_contents(tensors, again, 4)
    assert pool.offload.stats["loaded_host"] == 4
    kv.free(again)
    assert pool.num_free == 6
    assert replay(events + pool.drain_events()) == pool.cached_hashes()


def test_full_host_tier_without_disk_drops_the_oldest_and_says_so() -> None:
    tensors, pool, kv = make(num_blocks=4, host=2)
    seqs = [seq([1000 * n + i for i in range(8)], f"s{n}") for n in range(4)]  # 2 blocks each
    events = []
    for s in seqs:
        compute(kv, tensors, s)
        kv.free(s)
        events += pool.drain_events()
    # Device holds the last two sequences, host the one before; the first is gone everywhere.
    assert replay(events) == pool.cached_hashes()
    gone = {h for e in events if isinstance(e.data, KvRemoved) for h in e.data.block_hashes}
    assert gone == set(seqs[0].seq_hashes[:2])
    assert len(pool.offload) == 2 and pool.offload.stats["dropped"] == 2
    assert len(kv.find_cached_prefix(seq(seqs[0].token_ids + [1]))) == 0


def test_disk_tier_round_trip_and_cleanup(tmp_path) -> None:
    tensors, pool, kv = make(num_blocks=4, host=1, tmp_path=tmp_path, disk=8)
    seqs = [seq([1000 * n + i for i in range(8)], f"s{n}") for n in range(4)]
    events = []
    for s in seqs:
        compute(kv, tensors, s)
        kv.free(s)
        events += pool.drain_events()
    pool.offload.flush()  # files are written in the background
    assert pool.offload.num_disk_used >= 3 and len(list((tmp_path / "kv").iterdir())) >= 3
    assert not any(isinstance(e.data, KvRemoved) for e in events)  # nothing lost yet
    again = seq(seqs[0].token_ids + [1], "again")
    hits = kv.find_cached_prefix(again)
    assert len(hits) == 2 and pool.offload.stats["loaded_disk"] >= 1
    assert kv.allocate(again, 1, hits) is not None
    assert_contents(tensors, again, 2)
    kv.free(again)
    assert replay(events + pool.drain_events()) == pool.cached_hashes()
    pool.offload.close()
    assert not (tmp_path / "kv").exists()


def test_disk_blocks_still_queued_for_writing_load_from_their_copy(tmp_path) -> None:
    import threading

    tensors, pool, kv = make(num_blocks=4, host=1, tmp_path=tmp_path, disk=8)
    gate = threading.Event()
    pool.offload._writer._executor.submit(gate.wait)  # hold every write in the queue
    seqs = [seq([1000 * n + i for i in range(8)], f"s{n}") for n in range(4)]
    for s in seqs:
        compute(kv, tensors, s)
        kv.free(s)
    assert pool.offload.num_disk_used >= 3 and not list((tmp_path / "kv").iterdir())
    again = seq(seqs[0].token_ids + [1], "again")
    hits = kv.find_cached_prefix(again)
    assert len(hits) == 2 and pool.offload.stats["loaded_disk"] >= 1
    assert kv.allocate(again, 1, hits) is not None
    assert_contents(tensors, again, 2)
    gate.set()
    pool.offload.close()


def test_a_disk_block_whose_file_is_gone_is_recomputed(tmp_path) -> None:
    tensors, pool, kv = make(num_blocks=4, host=1, tmp_path=tmp_path, disk=8)
    seqs = [seq([1000 * n + i for i in range(8)], f"s{n}") for n in range(4)]
    for s in seqs:
        compute(kv, tensors, s)
        kv.free(s)
    pool.offload.flush()
    for path in (tmp_path / "kv").iterdir():
        path.unlink()  # a failed write, or a disk cleaned under us
    again = seq(seqs[0].token_ids + [1], "again")
    hits = kv.find_cached_prefix(again)
    assert pool.offload.stats["loaded_disk"] == 0 and len(hits) < 2
    compute(kv, tensors, again)  # recomputed: same contents as the first time
    assert_contents(tensors, again, 2)
    pool.offload.close()


@pytest.mark.parametrize("with_disk", [False, True])
def test_a_batch_larger_than_host_memory_overflows_its_oldest_blocks(tmp_path, with_disk) -> None:
    """One eviction of 6 blocks into a 2-slot host tier: the last 2 stay in memory, the
    first 4 (evicted first: least recently used) go straight to disk, or are dropped."""
    tensors = KvTensors(2, 8, BLOCK, 2, 3, torch.float32, torch.device("cpu"))
    for block in range(8):
        for layer, (k, v) in enumerate(tensors.layers):
            k[block], v[block] = 10.0 * block + layer, -10.0 * block - layer
    offload = KvOffload(tensors, 2, disk_dir=tmp_path / "kv" if with_disk else None, num_disk_blocks=8)
    hashes = [101, 102, 103, 104, 105, 106]
    ids = [7, 6, 5, 4, 3, 2]
    dropped = offload.save([(h, h, None, i) for i, h in enumerate(hashes)], ids)
    assert dropped == ([] if with_disk else hashes[:4])
    assert offload.chain(hashes) == (hashes if with_disk else [])
    assert offload.chain(hashes[4:]) == hashes[4:]
    held = hashes if with_disk else hashes[4:]
    data = offload.read(held)
    for row, seq_hash in enumerate(held):
        block = ids[hashes.index(seq_hash)]
        for layer in range(2):
            assert torch.equal(data[row, layer, 0], torch.full((BLOCK, 2, 3), 10.0 * block + layer))
            assert torch.equal(data[row, layer, 1], torch.full((BLOCK, 2, 3), -10.0 * block - layer))
    if with_disk:
        assert offload.stats["to_disk"] == 4 and offload.stats["loaded_disk"] == 4
    offload.close()


def test_random_workload_keeps_events_and_contents_consistent(tmp_path) -> None:
    rng = random.Random(3)
    tensors, pool, kv = make(num_blocks=12, host=6, tmp_path=tmp_path, disk=6)
    prefixes = [[rng.randrange(50000) for _ in range(12)] for _ in range(6)]
    events = []
    for n in range(60):
        prompt = rng.choice(prefixes)[: rng.choice([4, 8, 12])] + [rng.randrange(50000) for _ in range(rng.randrange(1, 9))]
        s = seq(prompt, f"r{n}")
        compute(kv, tensors, s)
        assert_contents(tensors, s, s.num_tokens // BLOCK)
        kv.free(s)
        events += pool.drain_events()
        assert replay(events) == pool.cached_hashes()
    assert pool.num_free == 12 and all(b.ref_count == 0 for b in pool.blocks)
    assert pool.offload.stats["loaded_host"] + pool.offload.stats["loaded_disk"] > 0
    assert replay(pool.dump_events()) == pool.cached_hashes()
    assert pool.reset_cache() and pool.cached_hashes() == set() and len(pool.offload) == 0


def test_bad_settings_are_clear_errors(tmp_path) -> None:
    tensors = KvTensors(1, 2, BLOCK, 1, 1, torch.float32, torch.device("cpu"))
    with pytest.raises(ConfigError, match="at least one host block"):
        KvOffload(tensors, 0)
    with pytest.raises(ConfigError, match="num_disk_blocks"):
        KvOffload(tensors, 1, disk_dir=tmp_path / "d", num_disk_blocks=0)


@pytest.mark.parametrize("tiers", ["host", "disk"])
def test_engine_output_is_unchanged_when_the_prefix_comes_back_from_offload(tiers, tiny_dirs, reference, tmp_path) -> None:
    """A tiny engine whose device cache is too small to keep a shared prefix across filler
    requests: the prefix is loaded from host memory / disk (not recomputed), and greedy
    output still equals HF `generate`."""
    from .conftest import assert_clean, make_engine, make_prompts, run_batch

    offload = {"kv_offload_host_blocks": 64} if tiers == "host" else {
        "kv_offload_host_blocks": 1, "kv_offload_disk_dir": str(tmp_path / "kv"), "kv_offload_disk_blocks": 64}
    engine = make_engine(tiny_dirs["llama"], block_size=4, num_blocks=24, **offload)
    index: set[int] = set()
    shared = make_prompts(1, seed=41, min_len=40, max_len=40)[0]  # 10 blocks
    first = make_prompts(1, seed=42, prefix=shared, max_len=8)
    outputs, _ = run_batch(engine, first, tag="a")
    assert outputs[0] == reference.greedy("llama", first[0])
    filler = make_prompts(3, seed=43, min_len=60, max_len=60)  # 45 blocks over 24: evicts everything
    run_batch(engine, filler, tag="f", max_tokens=1)
    again = make_prompts(2, seed=44, prefix=shared, max_len=8)
    outputs, usage = run_batch(engine, again, tag="b")
    for i, prompt in enumerate(again):
        assert outputs[i] == reference.greedy("llama", prompt), f"prompt {i} differs"
    assert all(u.cached_tokens >= 40 for u in usage.values())
    stats = engine.pool.offload.stats
    assert stats["loaded_host" if tiers == "host" else "loaded_disk"] >= 10
    assert_clean(engine, index)
    engine.close()
    assert not (tmp_path / "kv").exists()


@pytest.mark.gpu
def test_gpu_offload_round_trip_matches_a_device_hit(tiny_dirs, tmp_path) -> None:
    """On CUDA (pinned host slots, host<->device copies): a prefix loaded back from host
    memory or disk gives the same greedy tokens as the same prefix kept on the device."""
    from .conftest import make_engine, make_prompts, run_batch

    shared = make_prompts(1, seed=51, min_len=64, max_len=64)[0]
    first = make_prompts(1, seed=52, prefix=shared, max_len=8)
    filler = make_prompts(4, seed=53, min_len=60, max_len=60)
    again = make_prompts(3, seed=54, prefix=shared, max_len=8)
    results = {}
    for name, extra in {
        "device": {"num_blocks": 512},
        "host": {"num_blocks": 40, "kv_offload_host_blocks": 128},
        "disk": {"num_blocks": 40, "kv_offload_host_blocks": 1, "kv_offload_disk_dir": str(tmp_path / "kv"),
                 "kv_offload_disk_blocks": 128},
    }.items():
        engine = make_engine(tiny_dirs["llama"], device="cuda", dtype="bfloat16", block_size=4, **extra)
        run_batch(engine, first, tag="a")
        run_batch(engine, filler, tag="f", max_tokens=1)
        outputs, usage = run_batch(engine, again, tag="b")
        assert all(u.cached_tokens >= 64 for u in usage.values()), name
        if engine.pool.offload is not None:
            assert engine.pool.offload.stats["loaded_host"] + engine.pool.offload.stats["loaded_disk"] >= 16
        results[name] = outputs
        engine.close()
    assert results["host"] == results["device"] and results["disk"] == results["device"]
