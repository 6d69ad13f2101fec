"""Sampler: per-request greedy / temperature / top-k / top-p sampling with optional seeds."""

from __future__ import annotations

import torch

from mixroute.engine.sequence import Sequence


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...], seed: int) -> None:
        self.eos_token_ids = eos_token_ids
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """One token per row of `logits` [S, vocab] (float32)."""
        logits = self._suppress_early_stop(logits, seqs)
        greedy = logits.argmax(dim=-1).tolist()
        out: list[int] = []
        for i, seq in enumerate(seqs):
            params = seq.sampling
            if params.temperature <= 0.0:
                out.append(int(greedy[i]))
            else:
                out.append(self._sample_row(logits[i], seq))
        return out

    def _suppress_early_stop(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        rows = [i for i, s in enumerate(seqs) if s.num_output_tokens < s.sampling.min_tokens]
        if not rows:
            return logits
        logits = logits.clone()
        for i in rows:
            params = seqs[i].sampling
            banned = list(params.stop_token_ids) + ([] if params.ignore_eos else list(self.eos_token_ids))
            if banned:
                logits[i, banned] = float("-inf")
        return logits

    def _sample_row(self, row: torch.Tensor, seq: Sequence) -> int:
        params = seq.sampling
        row = row.float().cpu() / params.temperature
        if 0 < params.top_k < row.shape[-1]:
            kth = torch.topk(row, params.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            cumulative = sorted_probs.cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = (cumulative - sorted_probs) >= params.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        generator = seq.generator if seq.generator is not None else self.generator
        return int(torch.multinomial(probs, 1, generator=generator).item())
