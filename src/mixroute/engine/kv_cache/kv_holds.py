"""Prompts of finished prefill-only requests whose KV blocks wait for a decode worker.

One owner for the disaggregated-prefill hold, shared by the PyTorch engine and the
mocker: a finished request either frees its blocks or, when it was prefill-only and
computed its whole prompt, keeps them referenced under a transfer id until `take`
(export), `release`, or its deadline passes (so a dead decode worker leaks nothing).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager, cdiv
from mixroute.engine.sequence import Sequence
from mixroute.protocol.messages import (
    FinishReason,
    GenerateFrame,
    KvExportHeader,
    KvTransferHandle,
    Usage,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HeldKv:
    seq: Sequence
    deadline: float


class KvHolds:
    def __init__(self, kv: KvCacheManager, block_size: int, worker_id: int, timeout_s: float) -> None:
        self.kv = kv
        self.block_size = block_size
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self._held: dict[str, HeldKv] = {}

    def __len__(self) -> int:
        return len(self._held)

    def finish(self, seq: Sequence, reason: FinishReason) -> GenerateFrame:
        """The final frame of a request the scheduler no longer runs; frees or holds its blocks."""
        seq.finish_reason = reason
        usage = Usage(
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_output_tokens,
            cached_tokens=max(seq.num_cached_tokens, 0),
            imported_tokens=seq.num_imported_tokens,
        )
        frame = GenerateFrame(finish_reason=reason, usage=usage)
        if seq.prefill_only and reason != "abort" and seq.num_computed_tokens >= seq.num_prompt_tokens:
            frame.kv_transfer = self._hold(seq)
        else:
            self.kv.free(seq)
        return frame

    def _hold(self, seq: Sequence) -> KvTransferHandle:
        transfer_id = uuid.uuid4().hex
        self._held[transfer_id] = HeldKv(seq, time.monotonic() + self.timeout_s)
        seq.update_hashes(self.block_size)
        return KvTransferHandle(
            source_address="",
            worker_id=self.worker_id,
            transfer_id=transfer_id,
            block_ids=tuple(seq.block_ids[: self.num_prompt_blocks(seq)]),
            num_tokens=seq.num_prompt_tokens,
            block_hashes=tuple(self._prompt_hashes(seq)),
            first_token_id=seq.token_ids[seq.num_prompt_tokens],
        )

    def num_prompt_blocks(self, seq: Sequence) -> int:
        return cdiv(seq.num_prompt_tokens, self.block_size)

    def _prompt_hashes(self, seq: Sequence) -> list[int]:
        return list(seq.seq_hashes[: seq.num_prompt_tokens // self.block_size])

    def take(self, transfer_id: str) -> Sequence:
        """Hand over a held sequence for export; the caller frees it with `kv.free`.
        KeyError if the id is unknown or its hold expired."""
        return self._held.pop(transfer_id).seq

    def export_header(
        self, transfer_id: str, seq: Sequence, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype: str
    ) -> KvExportHeader:
        return KvExportHeader(
            transfer_id=transfer_id,
            token_ids=seq.token_ids[: seq.num_prompt_tokens],
            num_tokens=seq.num_prompt_tokens,
            block_size=self.block_size,
            num_blocks=self.num_prompt_blocks(seq),
            num_layers=num_layers,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            dtype=dtype,
            block_hashes=self._prompt_hashes(seq),
            first_token_id=seq.token_ids[seq.num_prompt_tokens],
        )

    def release(self, transfer_id: str) -> None:
        held = self._held.pop(transfer_id, None)
        if held is not None:
            self.kv.free(held.seq)

    def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        expired = [t for t, h in self._held.items() if h.deadline <= now]
        for transfer_id in expired:
            log.warning("kv hold expired transfer_id=%s", transfer_id)
            self.release(transfer_id)
        return len(expired)

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self._held.values()), default=None)
