"""Sequence: one request's tokens, progress and blocks as the scheduler sees them."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mixroute.protocol.hashing import block_hashes, sequence_hashes
from mixroute.protocol.messages import FinishReason, SamplingParams

if TYPE_CHECKING:
    import torch

    from mixroute.engine.api import KvExport


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]
    """Prompt followed by the generated tokens."""
    num_prompt_tokens: int
    sampling: SamplingParams
    hash_seed: int
    prefill_only: bool = False
    imported: KvExport | None = None
    generator: torch.Generator | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_computed_tokens: int = 0
    """Tokens whose K/V are in the cache."""
    block_ids: list[int] = field(default_factory=list)
    num_committed_blocks: int = 0
    """Leading blocks already registered in the prefix cache."""
    local_hashes: list[int] = field(default_factory=list)
    seq_hashes: list[int] = field(default_factory=list)
    num_cached_tokens: int = -1
    """Prompt tokens found in the prefix cache at first schedule (-1: not scheduled yet)."""
    num_imported_tokens: int = 0
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.monotonic)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def update_hashes(self, block_size: int) -> None:
        """Extend the block hash chains over blocks that have become full."""
        num_full = len(self.token_ids) // block_size
        start = len(self.seq_hashes)
        if num_full <= start:
            return
        local = block_hashes(self.token_ids[start * block_size : num_full * block_size], block_size, self.hash_seed)
        parent = self.seq_hashes[-1] if self.seq_hashes else None
        self.local_hashes.extend(local)
        self.seq_hashes.extend(sequence_hashes(local, self.hash_seed, parent))
