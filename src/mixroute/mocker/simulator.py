"""Simulator: the engine's real scheduler, KV cache manager and block pool, stepped with a
timing model instead of a forward pass.

`step()` mirrors `LLMEngine.step()` (schedule -> run -> postprocess) except that "run"
only prices the batch: prefill time for the tokens that missed the prefix cache plus one
decode step if any sequence decodes. Prefix caching, KV events, preemption, load metrics
and prefill-only holds are the engine's own code, so routing experiments see exactly the
cache behaviour a real worker would show. Output tokens are pseudo-random and never EOS,
so a request always generates `max_tokens` tokens (OSL is exact).

Not thread-safe: one asyncio task (MockerEngine's step loop) owns it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from mixroute.engine.api import KvExport
from mixroute.engine.kv_cache.block_pool import BlockPool
from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager, cdiv
from mixroute.engine.kv_cache.kv_holds import KvHolds
from mixroute.engine.scheduler import ScheduledBatch, Scheduler
from mixroute.engine.sequence import Sequence
from mixroute.errors import EngineError, RequestTooLongError
from mixroute.mocker.config import MockerConfig
from mixroute.protocol.hashing import hash_seed
from mixroute.protocol.messages import (
    FinishReason,
    GenerateFrame,
    GenerateRequest,
    KvEvent,
    LoadMetrics,
)

log = logging.getLogger(__name__)

MOCK_DTYPE = "mock"
"""The dtype a mocker's KV export declares: only another mocker accepts it."""


@dataclass(slots=True)
class StepResult:
    frames: list[tuple[str, GenerateFrame]]
    duration_ms: float
    """Simulated time of the step (already divided by the speedup ratio)."""
    num_prefill_tokens: int = 0
    num_decode_seqs: int = 0


class Simulator:
    def __init__(self, config: MockerConfig) -> None:
        self.config = config
        self.vocab_size, self.max_model_len, self.eos_token_ids = config.model_facts()
        self.block_size = config.block_size
        self.num_blocks = config.num_blocks
        self.pool = BlockPool(
            config.num_blocks,
            enable_caching=config.enable_prefix_caching,
            worker_id=config.worker_id,
        )
        self.kv = KvCacheManager(self.pool, config.block_size)
        self.scheduler = Scheduler(
            self.kv,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
        )
        self.timing = config.timing
        self.seqs: dict[str, Sequence] = {}
        self.held = KvHolds(self.kv, config.block_size, config.worker_id, config.kv_hold_timeout_s)
        self._rng = random.Random(config.seed ^ config.worker_id)
        eos = set(self.eos_token_ids)
        self._output_vocab = [t for t in range(min(self.vocab_size, 4096)) if t not in eos] or [0]

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # ---- requests ----

    def add_request(self, request: GenerateRequest, imported: KvExport | None = None) -> Sequence:
        prompt = list(request.token_ids)
        self._validate(request, prompt)
        seq = Sequence(
            request_id=request.request_id,
            token_ids=prompt,
            num_prompt_tokens=len(prompt),
            sampling=request.sampling,
            hash_seed=hash_seed(request.cache_salt),
            prefill_only=request.prefill_only,
        )
        if imported is not None:
            h = imported.header
            if (
                list(h.token_ids) != prompt
                or h.block_size != self.block_size
                or h.first_token_id is None
            ):
                raise EngineError(
                    "imported KV does not match this prompt or this mocker's block size"
                )
            seq.imported = imported
        self.seqs[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq

    def _validate(self, request: GenerateRequest, prompt: list[int]) -> None:
        if request.request_id in self.seqs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        if not prompt:
            raise EngineError("the prompt is empty; send at least one token")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise EngineError(f"prompt has token ids outside the vocabulary [0, {self.vocab_size})")
        if request.sampling.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1")
        total = len(prompt) + request.sampling.max_tokens
        if total > self.max_model_len:
            raise RequestTooLongError(
                f"prompt has {len(prompt)} tokens and max_tokens is {request.sampling.max_tokens}: {total} "
                f"exceeds the context of {self.max_model_len} tokens; shorten the prompt or lower max_tokens"
            )
        if cdiv(total, self.block_size) > self.num_blocks:
            raise RequestTooLongError(
                f"{total} tokens need {cdiv(total, self.block_size)} KV blocks but this mocker has only "
                f"{self.num_blocks}; shorten the request or raise --num-blocks"
            )

    def abort(self, request_id: str) -> GenerateFrame | None:
        seq = self.seqs.get(request_id)
        return None if seq is None else self._finish(seq, "abort")

    # ---- the step ----

    def step(self) -> StepResult:
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return StepResult([], 0.0)
        frames = self._apply_imports(batch)
        num_prefill, num_decode = self._price(batch)
        usage = self.pool.num_active / self.num_blocks
        duration = self.timing.step_ms(num_prefill, num_decode, usage)
        frames += self._postprocess(batch)
        return StepResult(frames, duration, num_prefill, num_decode)

    def _price(self, batch: ScheduledBatch) -> tuple[int, int]:
        """Tokens computed as prefill (prompt chunks, recomputes) and sequences that decode."""
        num_prefill = num_decode = 0
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if num_new == 1 and seq.num_computed_tokens >= seq.num_prompt_tokens:
                num_decode += 1
            else:
                num_prefill += num_new
        return num_prefill, num_decode

    def _apply_imports(self, batch: ScheduledBatch) -> list[tuple[str, GenerateFrame]]:
        frames = []
        for seq in batch.imports:
            header = seq.imported.header if seq.imported is not None else None
            assert header is not None and header.first_token_id is not None
            seq.num_computed_tokens = header.num_tokens
            seq.num_imported_tokens = seq.num_cached_tokens = header.num_tokens
            self.kv.commit(seq)
            seq.imported = None
            frames.append((seq.request_id, self._append_token(seq, header.first_token_id)))
        return frames

    def _postprocess(self, batch: ScheduledBatch) -> list[tuple[str, GenerateFrame]]:
        out: list[tuple[str, GenerateFrame]] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += num_new
            self.kv.commit(seq)
            if seq.num_computed_tokens >= seq.num_tokens:
                out.append(
                    (seq.request_id, self._append_token(seq, self._rng.choice(self._output_vocab)))
                )
        return out

    def _append_token(self, seq: Sequence, token: int) -> GenerateFrame:
        seq.token_ids.append(token)
        reason: FinishReason | None = None
        if (
            token in seq.sampling.stop_token_ids
            and seq.num_output_tokens >= seq.sampling.min_tokens
        ):
            reason = "stop"
        elif (
            seq.prefill_only
            or seq.num_output_tokens >= seq.sampling.max_tokens
            or seq.num_tokens >= self.max_model_len
        ):
            reason = "length"
        if reason is None:
            return GenerateFrame(token_ids=[token])
        frame = self._finish(seq, reason)
        frame.token_ids = [token]
        return frame

    def _finish(self, seq: Sequence, reason: FinishReason) -> GenerateFrame:
        self.scheduler.remove(seq)
        del self.seqs[seq.request_id]
        return self.held.finish(seq, reason)

    # ---- disaggregation: hold / export / release ----

    def export_kv(self, transfer_id: str) -> KvExport:
        """The held prompt's export (header only: a mocker has no tensors); frees the blocks."""
        seq = self.held.take(transfer_id)  # KeyError if unknown or expired
        try:
            header = self.held.export_header(
                transfer_id, seq, num_layers=0, num_kv_heads=0, head_dim=0, dtype=MOCK_DTYPE
            )
            return KvExport(header=header, layers=[])
        finally:
            self.kv.free(seq)

    def release_kv(self, transfer_id: str) -> None:
        self.held.release(transfer_id)

    def expire_held(self, now: float | None = None) -> int:
        return self.held.expire(now)

    # ---- observability ----

    def drain_events(self) -> list[KvEvent]:
        return self.pool.drain_events()

    def dump_events(self) -> list[KvEvent]:
        return self.pool.dump_events()

    def load_metrics(self) -> LoadMetrics:
        return LoadMetrics(
            worker_id=self.config.worker_id,
            num_active_blocks=self.pool.num_active,
            num_total_blocks=self.num_blocks,
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_active_prefill_tokens=self.scheduler.num_pending_prefill_tokens(),
            last_event_id=self.pool.last_event_id,
        )
