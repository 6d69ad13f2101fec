"""Attention over the paged KV cache.

One path serves CPU and CUDA: write this step's K/V into their slots, then
- prefill chunks: one SDPA call per sequence (causal; with an explicit mask when part of
  the context is already in the cache from an earlier chunk or a prefix-cache hit);
- decode tokens: all sequences in one SDPA call over their gathered, padded blocks, or on
  CUDA the Triton paged-decode kernel (triton_attention.py) that reads blocks in place.
The metadata is built once per step by the runner and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillChunk:
    start: int
    """Offset of the chunk's first token in the step's flat token list."""
    num_tokens: int
    context_len: int
    """Tokens the sequence has in the cache after this step (earlier context + this chunk)."""
    slots: torch.Tensor | None = None
    """Cache slots of the whole context; None when the chunk is the whole context."""
    mask: torch.Tensor | None = None
    """[num_tokens, context_len] bool, True where attention is allowed."""


@dataclass(slots=True)
class DecodeBatch:
    token_index: torch.Tensor
    """[D] positions of the decode tokens in the step's flat token list."""
    slots: torch.Tensor | None = None
    """[D, L] cache slots of each sequence's context, padded (SDPA path)."""
    mask: torch.Tensor | None = None
    """[D, 1, 1, L] bool, True for real context slots (SDPA path)."""
    block_tables: torch.Tensor | None = None
    """[D, max_blocks] int32 (Triton path)."""
    lengths: torch.Tensor | None = None
    """[D] int32 context lengths incl. the new token (Triton path)."""


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor
    """[T] the cache slot each new token's K/V goes to."""
    prefills: list[PrefillChunk] = field(default_factory=list)
    decode: DecodeBatch | None = None


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q [T, H, D], k/v [T, KVH, D], caches [num_blocks, block_size, KVH, D] -> [T, H, D]."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_flat = k_cache.view(-1, num_kv_heads, head_dim)
    v_flat = v_cache.view(-1, num_kv_heads, head_dim)
    k_flat.index_copy_(0, meta.slot_mapping, k)
    v_flat.index_copy_(0, meta.slot_mapping, v)
    gqa = q.shape[1] != num_kv_heads
    out = torch.empty_like(q)
    for chunk in meta.prefills:
        end = chunk.start + chunk.num_tokens
        qs = q[chunk.start : end].transpose(0, 1).unsqueeze(0)
        if chunk.slots is None:
            ks, vs = k[chunk.start : end], v[chunk.start : end]
        else:
            ks, vs = k_flat[chunk.slots], v_flat[chunk.slots]
        o = F.scaled_dot_product_attention(
            qs,
            ks.transpose(0, 1).unsqueeze(0),
            vs.transpose(0, 1).unsqueeze(0),
            attn_mask=chunk.mask,
            is_causal=chunk.mask is None,
            scale=scale,
            enable_gqa=gqa,
        )
        out[chunk.start : end] = o[0].transpose(0, 1)
    if meta.decode is not None and meta.decode.block_tables is not None:
        from mixroute.engine.triton_attention import paged_decode

        d = meta.decode
        assert d.lengths is not None and d.block_tables is not None
        out[d.token_index] = paged_decode(q[d.token_index], k_cache, v_cache, d.block_tables, d.lengths, scale)
    elif meta.decode is not None:
        d = meta.decode
        assert d.slots is not None
        qd = q[d.token_index].unsqueeze(2)
        kd = k_flat[d.slots].transpose(1, 2)
        vd = v_flat[d.slots].transpose(1, 2)
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=d.mask, scale=scale, enable_gqa=gqa)
        out[d.token_index] = o.squeeze(2)
    return out
