"""DecodeGraphs: decode-only steps replayed from CUDA graphs.

A decode step of a small model is bound by the CPU launching its kernels one by one
(~10 ms for 22 layers in eager PyTorch, whatever the batch; bench/results/multi-gpu.md).
A CUDA graph records the step's kernels once and replays them with one launch. Shapes in a
graph are fixed, so steps are padded to the next batch size bucket (1, 2, 4, 8, 16, 32, ...
up to max_num_seqs) and their inputs written into static buffers the graph reads:

- token ids and positions [bucket], cache slots for the new K/V [bucket];
- block tables [bucket, max blocks per sequence] and context lengths [bucket] for the
  Triton paged-decode kernel, which reads only the blocks a length covers.

Padding rows write their K/V into a scratch block that the block pool never hands out
(the KV cache has one block more than the pool) and attend to it alone; their outputs are
dropped. A graph is captured the first time its bucket is needed (a few hundred ms, once).
Prefill chunks, mixed steps and tensor-parallel engines stay eager.
"""

from __future__ import annotations

import logging
import time

import torch

from mixroute.engine.attention import AttentionMetadata, DecodeBatch
from mixroute.engine.kv_cache.kv_tensors import KvTensors
from mixroute.engine.model.llama import LlamaForCausalLM
from mixroute.engine.sequence import Sequence

log = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] + (8 if sizes[-1] < 32 else 32))
    return [s for s in sizes if s < max_batch] + [max_batch]


class DecodeGraphs:
    def __init__(
        self, model: LlamaForCausalLM, kv: KvTensors, block_size: int, max_model_len: int, max_batch: int,
        scratch_block: int, device: torch.device,
    ) -> None:
        if scratch_block >= kv.num_blocks:
            raise ValueError(f"scratch block {scratch_block} outside the KV cache of {kv.num_blocks} blocks")
        self.model = model
        self.kv = kv
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.device = device
        self.buckets = batch_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        self.max_blocks = -(-(max_model_len + 1) // block_size)
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(n, self.max_blocks, dtype=torch.int32, device=device)
        self.lengths = torch.ones(n, dtype=torch.int32, device=device)
        self.token_index = torch.arange(n, dtype=torch.long, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool: object | None = None

    def fits(self, seqs: list[Sequence], num_new_tokens: list[int]) -> bool:
        return len(seqs) <= self.max_batch and all(n == 1 for n in num_new_tokens)

    def run(self, seqs: list[Sequence]) -> torch.Tensor:
        """Hidden states [len(seqs), hidden] of one decode token per sequence (computing it
        also writes the token's K/V into the sequence's cache slot)."""
        n = len(seqs)
        bucket = next(b for b in self.buckets if b >= n)
        bs = self.block_size
        ids, positions, slots, lengths, tables = [], [], [], [], []
        for seq in seqs:
            p = seq.num_computed_tokens
            ids.append(seq.token_ids[p])
            positions.append(p)
            slots.append(seq.block_ids[p // bs] * bs + p % bs)
            lengths.append(p + 1)
            row = seq.block_ids[: -(-(p + 1) // bs)]
            tables.append(row + [self.scratch_block] * (self.max_blocks - len(row)))
        pad = bucket - n
        scratch_slot = self.scratch_block * bs
        host = torch.tensor(
            [ids + [0] * pad, positions + [0] * pad, slots + [scratch_slot] * pad, lengths + [1] * pad],
            dtype=torch.long,
        )
        table_host = torch.tensor(tables + [[self.scratch_block] * self.max_blocks] * pad, dtype=torch.int32)
        self.input_ids[:bucket].copy_(host[0], non_blocking=True)
        self.positions[:bucket].copy_(host[1], non_blocking=True)
        self.slots[:bucket].copy_(host[2], non_blocking=True)
        self.lengths[:bucket].copy_(host[3], non_blocking=True)
        self.block_tables[:bucket].copy_(table_host, non_blocking=True)
        graph, hidden = self.graphs.get(bucket) or self._capture(bucket)
        graph.replay()
        return hidden[:n]

    def _meta(self, bucket: int) -> AttentionMetadata:
        decode = DecodeBatch(
            token_index=self.token_index[:bucket], block_tables=self.block_tables[:bucket], lengths=self.lengths[:bucket]
        )
        return AttentionMetadata(slot_mapping=self.slots[:bucket], decode=decode)

    def _forward(self, bucket: int) -> torch.Tensor:
        return self.model(self.input_ids[:bucket], self.positions[:bucket], self._meta(bucket), self.kv.layers)

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        started = time.perf_counter()
        # Warm up on a side stream (lazy initialisations, Triton compiles) before capturing.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(bucket)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            hidden = self._forward(bucket)
        self._pool = graph.pool()
        self.graphs[bucket] = (graph, hidden)
        log.info("captured decode graph batch=%d in %.0f ms", bucket, (time.perf_counter() - started) * 1e3)
        return graph, hidden
