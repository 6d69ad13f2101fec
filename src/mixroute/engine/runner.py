"""ModelRunner: turns a ScheduledBatch into flat input tensors + AttentionMetadata, runs the model,
and returns the logits of the sequences that reach their last token this step."""

from __future__ import annotations

import torch

from mixroute.engine.attention import AttentionMetadata, DecodeBatch, PrefillChunk
from mixroute.engine.cuda_graphs import DecodeGraphs
from mixroute.engine.kv_cache.kv_tensors import KvTensors
from mixroute.engine.model.llama import LlamaForCausalLM
from mixroute.engine.scheduler import ScheduledBatch
from mixroute.engine.sequence import Sequence


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, kv: KvTensors, block_size: int, device: torch.device, use_triton: bool = False,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model = model
        self.kv = kv
        self.block_size = block_size
        self.device = device
        self.use_triton = use_triton
        self.graphs = graphs
        """Decode-only steps replay CUDA graphs when set (CUDA + Triton, one process)."""

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[Sequence]]:
        """Logits [S, vocab] (float32) for the sequences that sample a token, and those sequences."""
        if not batch.seqs:
            return None, []
        if self.graphs is not None and self.graphs.fits(batch.seqs, batch.num_new_tokens):
            return self._run_graph(batch.seqs, self.graphs)
        input_ids, positions, meta, sample_index, sampled = self._prepare(batch)
        hidden = self.model(input_ids, positions, meta, self.kv.layers)
        if not sampled:
            return None, []
        return self.model.compute_logits(hidden[sample_index]), sampled

    def _run_graph(self, seqs: list[Sequence], graphs: DecodeGraphs) -> tuple[torch.Tensor | None, list[Sequence]]:
        hidden = graphs.run(seqs)
        # A one-token step samples unless it is a one-token chunk inside a longer prompt.
        rows = [i for i, s in enumerate(seqs) if s.num_computed_tokens + 1 == s.num_tokens]
        if not rows:
            return None, []
        if len(rows) < len(seqs):
            hidden = hidden[torch.tensor(rows, dtype=torch.long, device=self.device)]
        return self.model.compute_logits(hidden), [seqs[i] for i in rows]

    def _prepare(
        self, batch: ScheduledBatch
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor, list[Sequence]]:
        bs = self.block_size
        dev = self.device
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        prefills: list[PrefillChunk] = []
        decode_index: list[int] = []
        decode_seqs: list[Sequence] = []
        sample_index: list[int] = []
        sampled: list[Sequence] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            offset = len(tokens)
            start = seq.num_computed_tokens
            end = start + num_new
            table = seq.block_ids
            tokens.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if num_new == 1:
                decode_index.append(offset)
                decode_seqs.append(seq)
            else:
                chunk = PrefillChunk(start=offset, num_tokens=num_new, context_len=end)
                if start > 0:
                    chunk.slots = self._context_slots(table, end)
                    rows = torch.arange(start, end, device=dev).unsqueeze(1)
                    chunk.mask = torch.arange(end, device=dev).unsqueeze(0) <= rows
                prefills.append(chunk)
            if end == seq.num_tokens:
                sample_index.append(offset + num_new - 1)
                sampled.append(seq)
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev), prefills=prefills)
        if decode_seqs:
            meta.decode = self._decode_batch(decode_seqs, decode_index)
        return (
            torch.tensor(tokens, dtype=torch.long, device=dev),
            torch.tensor(positions, dtype=torch.long, device=dev),
            meta,
            torch.tensor(sample_index, dtype=torch.long, device=dev),
            sampled,
        )

    def _context_slots(self, table: list[int], length: int) -> torch.Tensor:
        bs = self.block_size
        num_blocks = -(-length // bs)
        blocks = torch.tensor(table[:num_blocks], dtype=torch.long, device=self.device)
        return (blocks.unsqueeze(1) * bs + torch.arange(bs, device=self.device)).view(-1)[:length]

    def _decode_batch(self, seqs: list[Sequence], index: list[int]) -> DecodeBatch:
        bs = self.block_size
        dev = self.device
        lengths = [s.num_computed_tokens + 1 for s in seqs]
        max_len = max(lengths)
        max_blocks = -(-max_len // bs)
        table = [s.block_ids[:max_blocks] + [0] * (max_blocks - min(len(s.block_ids), max_blocks)) for s in seqs]
        token_index = torch.tensor(index, dtype=torch.long, device=dev)
        if self.use_triton:
            return DecodeBatch(
                token_index=token_index,
                block_tables=torch.tensor(table, dtype=torch.int32, device=dev),
                lengths=torch.tensor(lengths, dtype=torch.int32, device=dev),
            )
        blocks = torch.tensor(table, dtype=torch.long, device=dev)
        slot_grid = (blocks.unsqueeze(2) * bs + torch.arange(bs, device=dev)).view(len(seqs), -1)[:, :max_len]
        mask: torch.Tensor | None = None
        if min(lengths) != max_len:
            # Only padded rows need a mask; without one SDPA may pick a faster kernel.
            lens = torch.tensor(lengths, dtype=torch.long, device=dev)
            mask = (torch.arange(max_len, device=dev).unsqueeze(0) < lens.unsqueeze(1)).view(len(seqs), 1, 1, max_len)
        return DecodeBatch(token_index=token_index, slots=slot_grid, mask=mask)
