"""The one block-hashing function, shared by the engine (KV events) and the frontend (routing).

Only full blocks are hashed. Scheme (as in NVIDIA Dynamo, so our indexer can consume
events from engines that publish in that format):

    block_hash[i] = xxh3_64(tokens of block i as little-endian u32, seed)
    seq_hash[0]   = block_hash[0]
    seq_hash[i]   = xxh3_64(le_u64(seq_hash[i-1]) + le_u64(block_hash[i]), seed)

`seed` is 1337, with a LoRA id / cache salt folded in when given, so that requests with
different adapters or salts never share cache entries.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NewType

import numpy as np
import xxhash

BlockHash = NewType("BlockHash", int)
"""Hash of one block's tokens alone (the `tokens_hash` of a KV event)."""
SequenceHash = NewType("SequenceHash", int)
"""Hash of a block and everything before it (the `block_hash` of a KV event)."""

HASH_SEED = 1337
DEFAULT_BLOCK_SIZE = 16

_PAIR = struct.Struct("<QQ")


def hash_seed(salt: str | int | None = None) -> int:
    """The xxh3 seed for a request: 1337, or 1337 mixed with a LoRA id / cache salt."""
    if salt is None or salt == "" or salt == 0:
        return HASH_SEED
    raw = salt.encode() if isinstance(salt, str) else struct.pack("<q", salt)
    return xxhash.xxh3_64_intdigest(raw, seed=HASH_SEED)


def block_hashes(
    token_ids: Sequence[int] | np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE, seed: int = HASH_SEED
) -> list[BlockHash]:
    """Local hashes of each full block of `token_ids` (a trailing partial block is ignored)."""
    num_full = len(token_ids) // block_size
    if num_full == 0:
        return []
    data = np.asarray(token_ids[: num_full * block_size], dtype="<u4").tobytes()
    stride = block_size * 4
    h = xxhash.xxh3_64_intdigest
    return [BlockHash(h(data[i : i + stride], seed=seed)) for i in range(0, len(data), stride)]


def sequence_hashes(local_hashes: Sequence[int], seed: int = HASH_SEED, parent: int | None = None) -> list[SequenceHash]:
    """Chain local block hashes into sequence hashes; `parent` continues an existing chain."""
    out: list[SequenceHash] = []
    prev = parent
    h = xxhash.xxh3_64_intdigest
    pack = _PAIR.pack
    for local in local_hashes:
        cur = local if prev is None else h(pack(prev, local), seed=seed)
        out.append(SequenceHash(cur))
        prev = cur
    return out


def hash_prompt(
    token_ids: Sequence[int] | np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE, salt: str | int | None = None
) -> tuple[list[BlockHash], list[SequenceHash]]:
    """Both hash lists of a prompt's full blocks, with the request's salt folded into the seed."""
    seed = hash_seed(salt)
    local = block_hashes(token_ids, block_size, seed)
    return local, sequence_hashes(local, seed)
