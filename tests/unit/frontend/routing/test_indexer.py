from __future__ import annotations

from mixroute.frontend.routing.indexer import KvIndexer
from mixroute.protocol.hashing import hash_prompt
from mixroute.protocol.messages import KvCleared, KvEvent, KvRemoved, KvStored, StoredBlock

BS = 4


def _blocks(tokens: list[int]) -> tuple[list[int], list[int]]:
    local, seq = hash_prompt(tokens, BS)
    return list(local), list(seq)


def _stored(worker: int, event_id: int, tokens: list[int], start_block: int = 0) -> KvEvent:
    local, seq = _blocks(tokens)
    parent = seq[start_block - 1] if start_block else None
    blocks = [StoredBlock(s, t) for t, s in zip(local[start_block:], seq[start_block:])]
    return KvEvent(worker_id=worker, event_id=event_id, data=KvStored(parent_hash=parent, blocks=blocks))


PROMPT = list(range(16))  # 4 full blocks


def test_overlap_counts_leading_blocks_per_worker() -> None:
    idx = KvIndexer()
    idx.apply_event(_stored(1, 0, PROMPT))
    idx.apply_event(_stored(2, 0, PROMPT[:8]))
    local, _ = _blocks(PROMPT)
    assert idx.find_matches(local) == {1: 4, 2: 2}
    # A prompt diverging after block 1 matches only that block.
    other = PROMPT[:4] + [99] * 12
    assert idx.find_matches(_blocks(other)[0]) == {1: 1, 2: 1}
    assert idx.find_matches(_blocks([7] * 16)[0]) == {}


def test_continuation_via_parent_hash_and_removal() -> None:
    idx = KvIndexer()
    idx.apply_event(_stored(1, 0, PROMPT[:8]))
    idx.apply_event(_stored(1, 1, PROMPT, start_block=2))
    local, seq = _blocks(PROMPT)
    assert idx.find_matches(local) == {1: 4}
    idx.apply_event(KvEvent(worker_id=1, event_id=2, data=KvRemoved(block_hashes=[seq[2], seq[3]])))
    assert idx.find_matches(local) == {1: 2}
    idx.apply_event(KvEvent(worker_id=1, event_id=3, data=KvCleared()))
    assert idx.find_matches(local) == {}
    assert idx.num_blocks == 0


def test_non_contiguous_blocks_do_not_count() -> None:
    # Worker 2 holds blocks 0 and 2 but not 1 (stored through a different tree path is
    # impossible, so simulate by removing block 1 only): the overlap stops at the hole.
    idx = KvIndexer()
    idx.apply_event(_stored(2, 0, PROMPT))
    _, seq = _blocks(PROMPT)
    idx.apply_event(KvEvent(worker_id=2, event_id=1, data=KvRemoved(block_hashes=[seq[1]])))
    assert idx.find_matches(_blocks(PROMPT)[0]) == {2: 1}


def test_gap_requests_dump_and_buffers_until_applied() -> None:
    idx = KvIndexer()
    idx.apply_event(_stored(1, 0, PROMPT[:4]))
    assert idx.take_dump_requests() == []
    idx.apply_event(_stored(1, 5, PROMPT[:8]))  # ids 1..4 missed
    assert idx.take_dump_requests() == [1]
    assert idx.num_gaps == 1
    later = _stored(1, 7, PROMPT, start_block=2)
    idx.apply_event(later)  # buffered while the dump is in flight
    local, _ = _blocks(PROMPT)
    assert idx.find_matches(local) == {1: 1}
    # The dump reflects the state at event 6: blocks 0-1. Events up to 6 are dropped,
    # event 7 is replayed on top.
    dump = [KvEvent(worker_id=1, event_id=6, data=KvCleared()), _stored(1, 6, PROMPT[:8])]
    idx.apply_dump(1, dump)
    assert idx.find_matches(local) == {1: 4}
    assert idx.is_synced(1)
    idx.apply_event(_stored(1, 8, [5] * 4))
    assert idx.take_dump_requests() == []


def test_new_worker_from_discovery_requests_dump() -> None:
    idx = KvIndexer()
    idx.add_worker(3)
    assert idx.take_dump_requests() == [3]
    idx.apply_event(_stored(3, 12, PROMPT))  # buffered
    idx.apply_dump(3, [KvEvent(worker_id=3, event_id=11, data=KvCleared())])
    assert idx.find_matches(_blocks(PROMPT)[0]) == {3: 4}


def test_first_event_mid_stream_requests_dump() -> None:
    idx = KvIndexer()
    idx.apply_event(_stored(4, 30, PROMPT))
    assert idx.take_dump_requests() == [4]
    idx.dump_failed(4)  # replays the buffered events rather than losing them
    assert idx.find_matches(_blocks(PROMPT)[0]) == {4: 4}


def test_remove_worker_prunes_tree() -> None:
    idx = KvIndexer()
    idx.apply_event(_stored(1, 0, PROMPT))
    idx.apply_event(_stored(2, 0, PROMPT))
    idx.remove_worker(1)
    assert idx.find_matches(_blocks(PROMPT)[0]) == {2: 4}
    idx.remove_worker(2)
    assert idx.num_nodes == 0
