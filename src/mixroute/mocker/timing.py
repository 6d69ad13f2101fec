"""The timing model that stands in for the forward pass.

Defaults are the polynomial fits NVIDIA Dynamo's mocker uses, so a mocker fleet here and
one there produce comparable latencies for the same workload:

- prefill of N uncached tokens in one batch: ``4.209989e-7*N^2 + 0.01518344*N + 16.50142`` ms
- one decode step: ``max(1, -25.74*p^2 + 54.01*p + 5.74)`` ms, p = fraction of KV blocks in use

``speedup_ratio`` divides every time, so a long experiment can run faster than real time
while keeping the relative costs (and so the routing trade-offs) intact.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixroute.errors import ConfigError


@dataclass(slots=True, frozen=True)
class TimingModel:
    prefill_a: float = 4.209989e-7
    """Quadratic coefficient (ms / token^2) of the prefill time."""
    prefill_b: float = 0.01518344
    prefill_c: float = 16.50142
    decode_a: float = -25.74
    """Quadratic coefficient (ms) of the decode step time in the KV usage fraction."""
    decode_b: float = 54.01
    decode_c: float = 5.74
    decode_min_ms: float = 1.0
    speedup_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not self.speedup_ratio > 0:
            raise ConfigError(f"speedup_ratio must be > 0, got {self.speedup_ratio}")

    def prefill_ms(self, num_uncached_tokens: int) -> float:
        """Time to prefill a batch holding `num_uncached_tokens` tokens that missed the cache.

        Zero tokens (every prompt fully cached) costs nothing: no forward pass runs."""
        if num_uncached_tokens <= 0:
            return 0.0
        n = float(num_uncached_tokens)
        return (self.prefill_a * n * n + self.prefill_b * n + self.prefill_c) / self.speedup_ratio

    def decode_ms(self, kv_usage: float) -> float:
        """Time of one decode step with `kv_usage` (0..1) of the KV blocks in use."""
        p = min(max(kv_usage, 0.0), 1.0)
        ms = self.decode_a * p * p + self.decode_b * p + self.decode_c
        return max(self.decode_min_ms, ms) / self.speedup_ratio

    def step_ms(
        self, num_uncached_prefill_tokens: int, num_decode_seqs: int, kv_usage: float
    ) -> float:
        """A mixed step (chunked prefill + decodes): prefill time plus, if any sequence
        decodes, one decode step. Dynamo's mocker charges the two the same way."""
        ms = self.prefill_ms(num_uncached_prefill_tokens)
        if num_decode_seqs > 0:
            ms += self.decode_ms(kv_usage)
        return ms
