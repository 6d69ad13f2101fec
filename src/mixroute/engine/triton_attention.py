"""Paged decode attention for CUDA as a Triton kernel.

One program per (sequence, query head) walks the sequence's block table and keeps an
online softmax (running max and sum) in float32, so no padded K/V copy is gathered.
Used by `attention.paged_attention` for the decode tokens when running on CUDA and
Triton is importable; prefill chunks keep using SDPA.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs
    HAS_TRITON = False


if HAS_TRITON:

    @triton.jit
    def _decode_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lens_ptr, scale,
        stride_qt, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_ot, stride_oh,
        stride_tb,
        GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    ):
        seq = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        length = tl.load(lens_ptr + seq)
        dims = tl.arange(0, HEAD_DIM)
        offs = tl.arange(0, BLOCK_SIZE)
        q = tl.load(q_ptr + seq * stride_qt + head * stride_qh + dims).to(tl.float32)
        m = tl.full((), float("-inf"), tl.float32)
        total = tl.zeros((), tl.float32)
        acc = tl.zeros((HEAD_DIM,), tl.float32)
        num_blocks = tl.cdiv(length, BLOCK_SIZE)
        for b in range(num_blocks):
            block = tl.load(tables_ptr + seq * stride_tb + b).to(tl.int64)
            valid = b * BLOCK_SIZE + offs < length
            base = block * stride_kb + offs[:, None] * stride_ks + kv_head * stride_kh + dims[None, :]
            k = tl.load(k_ptr + base, mask=valid[:, None], other=0.0).to(tl.float32)
            scores = tl.sum(k * q[None, :], axis=1) * scale
            scores = tl.where(valid, scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=0))
            p = tl.exp(scores - m_new)
            alpha = tl.exp(m - m_new)
            v = tl.load(v_ptr + base, mask=valid[:, None], other=0.0).to(tl.float32)
            total = total * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m = m_new
        out = acc / total
        tl.store(out_ptr + seq * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def can_use(q: torch.Tensor, block_size: int) -> bool:
    return HAS_TRITON and q.is_cuda and _is_pow2(q.shape[-1]) and _is_pow2(block_size) and block_size >= 16


def paged_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, lengths: torch.Tensor, scale: float,
) -> torch.Tensor:
    """q [D, H, Dh]; caches [num_blocks, block_size, KVH, Dh]; tables [D, max_blocks] int32; lengths [D]."""
    num_seqs, num_heads, head_dim = q.shape
    out = torch.empty_like(q)
    group = num_heads // k_cache.shape[2]
    _decode_kernel[(num_seqs, num_heads)](
        q, k_cache, v_cache, out, block_tables, lengths, scale,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1),
        block_tables.stride(0),
        GROUP=group, BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim,
    )
    return out
