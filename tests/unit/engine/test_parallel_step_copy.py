"""Rank 0 sends each step to its tensor-parallel helpers as a CPU copy, then runs the same
step itself: the copy must leave rank 0's tensors where they were (on 2 GPUs an in-place
move put rank 0's slot mapping on the CPU and every TP step failed)."""

from __future__ import annotations

import torch

from mixroute.engine.attention import AttentionMetadata, DecodeBatch, PrefillChunk
from mixroute.engine.parallel import _move


def test_moving_a_step_copies_it_and_leaves_the_original_in_place() -> None:
    meta = AttentionMetadata(
        slot_mapping=torch.arange(6),
        prefills=[PrefillChunk(start=0, num_tokens=4, context_len=4, slots=torch.arange(4))],
        decode=DecodeBatch(token_index=torch.tensor([4, 5]), lengths=torch.tensor([3, 9], dtype=torch.int32)),
    )
    step = (torch.arange(6), torch.arange(6), meta)

    moved = _move(step, torch.device("meta"))

    ids, positions, moved_meta = moved
    assert ids.device.type == positions.device.type == "meta"
    assert moved_meta is not meta
    assert moved_meta.slot_mapping.device.type == "meta"
    assert moved_meta.prefills[0].slots is not None and moved_meta.prefills[0].slots.device.type == "meta"
    assert moved_meta.decode is not None and moved_meta.decode.token_index.device.type == "meta"
    assert moved_meta.prefills[0].num_tokens == 4
    # The original step is untouched: still on the CPU, same values.
    assert meta.slot_mapping.device.type == "cpu"
    assert meta.prefills[0].slots is not None and meta.prefills[0].slots.device.type == "cpu"
    assert meta.decode is not None and meta.decode.lengths is not None and meta.decode.lengths.device.type == "cpu"
    assert torch.equal(meta.slot_mapping, torch.arange(6))
