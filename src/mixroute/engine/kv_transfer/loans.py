"""KvLoans: held prefill blocks lent to a same-host decode worker that copies them out of
the shared KV cache. The prefill keeps them referenced until the borrower says it is done
(`release`), falls back to a host-staged export (`take`), or the deadline passes (a
borrower that died leaks nothing)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager
from mixroute.engine.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Loan:
    seq: Sequence
    deadline: float


class KvLoans:
    def __init__(self, kv: KvCacheManager, timeout_s: float) -> None:
        self.kv = kv
        self.timeout_s = timeout_s
        self._lent: dict[str, Loan] = {}

    def __len__(self) -> int:
        return len(self._lent)

    def __contains__(self, transfer_id: str) -> bool:
        return transfer_id in self._lent

    def lend(self, transfer_id: str, seq: Sequence) -> None:
        self._lent[transfer_id] = Loan(seq, time.monotonic() + self.timeout_s)

    def take(self, transfer_id: str) -> Sequence:
        """Back from the borrower for another kind of export; KeyError if not lent."""
        return self._lent.pop(transfer_id).seq

    def release(self, transfer_id: str) -> bool:
        loan = self._lent.pop(transfer_id, None)
        if loan is None:
            return False
        self.kv.free(loan.seq)
        return True

    def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        expired = [t for t, loan in self._lent.items() if loan.deadline <= now]
        for transfer_id in expired:
            log.warning("kv loan expired transfer_id=%s", transfer_id)
            self.release(transfer_id)
        return len(expired)

    def next_deadline(self) -> float | None:
        return min((loan.deadline for loan in self._lent.values()), default=None)
