"""Decode steps replayed from CUDA graphs compute what the eager engine computes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixroute.engine.cuda_graphs import batch_buckets
from tests.unit.engine.conftest import make_engine, make_prompts, run_batch


def test_batch_buckets_cover_every_size_up_to_the_limit() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 64]
    for limit in (3, 64, 100, 256):
        buckets = batch_buckets(limit)
        assert buckets == sorted(set(buckets)) and buckets[-1] == limit
        assert all(any(b >= n for b in buckets) for n in range(1, limit + 1))


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_graph_decode_matches_eager(tiny_dirs: dict[str, Path], arch: str) -> None:
    """Batches of 1..7 (padded to buckets 1, 2, 4, 8), shared prefixes, chunked prefills with
    one-token chunks (a 5-token budget): greedy tokens equal to the eager engine's."""
    overrides = {"device": "cuda", "dtype": "float32", "num_blocks": 96, "max_num_seqs": 8}
    eager = make_engine(tiny_dirs[arch], enforce_eager=True, **overrides)
    graphs = make_engine(tiny_dirs[arch], **overrides)
    assert eager.runner.graphs is None
    assert graphs.runner.graphs is not None
    # The cache has one block more than the pool: the padding rows' scratch block.
    assert graphs.kv_tensors.num_blocks == graphs.pool.num_blocks + 1 == 97
    prompts = make_prompts(7, seed=61, min_len=1, max_len=60)
    shared = make_prompts(3, seed=62, min_len=3, max_len=20, prefix=prompts[0][:40])
    for tag, batch in (("a", prompts[:1]), ("b", prompts[:3]), ("c", prompts), ("d", shared)):
        want, _ = run_batch(eager, batch, max_tokens=24, tag=tag, min_tokens=24)
        got, _ = run_batch(graphs, batch, max_tokens=24, tag=tag, min_tokens=24)
        assert got == want, tag
    assert set(graphs.runner.graphs.graphs) >= {1, 4, 8}
    small = make_engine(tiny_dirs[arch], max_num_batched_tokens=5, **overrides)
    got, _ = run_batch(small, prompts[:4], max_tokens=12, tag="e")
    want, _ = run_batch(eager, prompts[:4], max_tokens=12, tag="e")
    assert got == want
    for engine in (graphs, small):
        assert not engine.seqs and engine.pool.num_free == engine.pool.num_blocks  # nothing leaked
