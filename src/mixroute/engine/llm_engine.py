"""LLMEngine: the synchronous engine. `step()` = schedule -> run -> postprocess.

Not thread-safe: one thread owns it (AsyncEngine's engine thread, or a test/benchmark).
"""

from __future__ import annotations

import logging

import torch

from mixroute.engine.api import KvExport
from mixroute.engine.config import EngineConfig
from mixroute.engine.cuda_graphs import DecodeGraphs
from mixroute.engine.kv_cache.block_pool import BlockPool
from mixroute.engine.kv_cache.kv_cache_manager import KvCacheManager, cdiv
from mixroute.engine.kv_cache.kv_holds import KvHolds
from mixroute.engine.kv_cache.kv_tensors import KvTensors, dtype_name
from mixroute.engine.kv_cache.offload import KvOffload
from mixroute.engine.kv_transfer.loans import KvLoans
from mixroute.engine.kv_transfer.peer_kv import DirectKvExport
from mixroute.engine.kv_transfer.shared_kv import SharedKvTensors
from mixroute.engine.model.config import ModelConfig
from mixroute.engine.model.llama import LlamaForCausalLM
from mixroute.engine.model.loader import load_model
from mixroute.engine.parallel import (
    TensorParallelGroup,
    TensorParallelRunner,
    check_divisible,
    load_sharded,
    merge_kv_shards,
    split_kv_layers,
)
from mixroute.engine.runner import ModelRunner
from mixroute.engine.sampler import Sampler
from mixroute.engine.scheduler import ScheduledBatch, Scheduler
from mixroute.engine.sequence import Sequence
from mixroute.errors import ConfigError, EngineError, RequestTooLongError
from mixroute.protocol.hashing import hash_seed
from mixroute.protocol.messages import (
    FinishReason,
    GenerateFrame,
    GenerateRequest,
    KvExportHeader,
    KvShareInfo,
    LoadMetrics,
)

log = logging.getLogger(__name__)

MAX_DEFAULT_MODEL_LEN = 8192


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device, config.device_index) if config.device == "cuda" else torch.device("cpu")
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
            if config.device_index + config.tensor_parallel_size > torch.cuda.device_count():
                raise ConfigError(
                    f"GPUs {config.device_index}..{config.device_index + config.tensor_parallel_size - 1} requested; "
                    f"torch sees {torch.cuda.device_count()}"
                )
            # Kernels that read the thread's current device (Triton) must see ours.
            torch.cuda.set_device(self.device)
        self.dtype: torch.dtype = getattr(torch, config.dtype or "float32")
        self.model_config = ModelConfig.from_dir(config.model_path)
        mc = self.model_config
        self.max_model_len = config.max_model_len or min(mc.max_position_embeddings, MAX_DEFAULT_MODEL_LEN)
        self.block_size = config.block_size
        assert config.max_num_batched_tokens is not None  # filled in by EngineConfig
        self.max_num_batched_tokens: int = config.max_num_batched_tokens
        self.eos_token_ids = mc.eos_token_ids
        self.tp_size = config.tensor_parallel_size
        self.local_kv_heads = mc.num_kv_heads // self.tp_size
        self.tp_group: TensorParallelGroup | None = None
        if self.tp_size > 1:
            self.model = self._load_tensor_parallel()
        else:
            self.model = load_model(config.model_path, self.device, self.dtype, fuse=config.fuse_projections)
            self.model.init_rope(self.max_model_len + 1, self.device, self.dtype)
        try:
            self.num_blocks = config.num_blocks or self._derive_num_blocks()
            if self.tp_group is not None:
                self.tp_group.start(self.num_blocks)
        except BaseException:
            self.close()
            raise
        use_triton = self._use_triton()
        use_graphs = use_triton and self.tp_group is None and not config.enforce_eager
        # With CUDA graphs the cache has one block more than the pool: padding rows of a
        # graph's batch write there (cuda_graphs.py).
        self.kv_tensors = SharedKvTensors(
            mc.num_layers, self.num_blocks + int(use_graphs), self.block_size, self.local_kv_heads, mc.head_dim,
            self.dtype, self.device,
        )
        self.pool = BlockPool(self.num_blocks, enable_caching=config.enable_prefix_caching, worker_id=config.worker_id)
        if config.kv_offload_host_blocks:
            self.pool.offload = KvOffload(
                self.kv_tensors, config.kv_offload_host_blocks,
                disk_dir=config.kv_offload_disk_dir, num_disk_blocks=config.kv_offload_disk_blocks,
            )
        self.kv = KvCacheManager(self.pool, self.block_size)
        self.scheduler = Scheduler(
            self.kv, max_num_seqs=config.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens
        )
        graphs = (
            DecodeGraphs(self.model, self.kv_tensors, self.block_size, self.max_model_len, config.max_num_seqs,
                         scratch_block=self.num_blocks, device=self.device)
            if use_graphs
            else None
        )
        self.runner = (
            ModelRunner(self.model, self.kv_tensors, self.block_size, self.device, use_triton, graphs)
            if self.tp_group is None
            else TensorParallelRunner(self.model, self.kv_tensors, self.block_size, self.device, use_triton, self.tp_group)
        )
        self.sampler = Sampler(self.eos_token_ids, config.seed)
        self.seqs: dict[str, Sequence] = {}
        self.held = KvHolds(self.kv, self.block_size, config.worker_id, config.kv_hold_timeout_s)
        self.loans = KvLoans(self.kv, config.kv_hold_timeout_s)
        self.last_step_was_idle = False
        """True when the last step could schedule nothing (every block held): the caller backs off."""
        log.info(
            "engine ready model=%s blocks=%d block_size=%d max_model_len=%d dtype=%s device=%s",
            config.served_model_name, self.num_blocks, self.block_size, self.max_model_len, config.dtype, config.device,
        )

    def _load_tensor_parallel(self) -> LlamaForCausalLM:
        """Start the helper ranks and load this process's shard (rank 0)."""
        check_divisible(self.model_config, self.tp_size)
        self.tp_group = TensorParallelGroup(self.config, self.max_model_len + 1)
        try:
            return load_sharded(self.config, self.tp_group.tp, self.device, self.dtype, self.max_model_len + 1)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the tensor-parallel helper processes; remove the disk offload tier's files."""
        pool = getattr(self, "pool", None)
        if pool is not None and pool.offload is not None:
            pool.offload.close()
            pool.offload = None
        if self.tp_group is not None:
            self.tp_group.close()
            self.tp_group = None

    def _use_triton(self) -> bool:
        from mixroute.engine import triton_attention

        backend = self.config.attention_backend
        if backend == "sdpa" or self.device.type != "cuda":
            if backend == "triton":
                raise ConfigError("attention_backend 'triton' needs device 'cuda'")
            return False
        probe = torch.empty(1, 1, self.model_config.head_dim, device=self.device)
        usable = triton_attention.can_use(probe, self.block_size)
        if backend == "triton" and not usable:
            raise ConfigError("the Triton kernel needs triton installed and power-of-two head_dim/block_size >= 16")
        return usable

    def _derive_num_blocks(self) -> int:
        mc = self.model_config
        per_block = KvTensors.bytes_per_block(
            mc.num_layers, self.block_size, self.local_kv_heads, mc.head_dim, self.dtype
        )
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - total * (1.0 - self.config.gpu_memory_utilization)
            # Leave room for activations of a full token budget.
            budget -= self.max_num_batched_tokens * mc.vocab_size * 4 * 2
        else:
            budget = self.config.cpu_kv_cache_bytes
        num_blocks = int(budget // per_block)
        # On CPU never allocate more than enough for max_num_seqs full-length sequences.
        cap = self.config.max_num_seqs * cdiv(self.max_model_len, self.block_size) + 1
        num_blocks = min(num_blocks, cap) if self.device.type == "cpu" else num_blocks
        if num_blocks < 2:
            raise ConfigError("not enough memory for the KV cache; lower max_num_batched_tokens or pass --num-blocks")
        return num_blocks

    # ---- requests ----

    def add_request(self, request: GenerateRequest, imported: KvExport | None = None) -> Sequence:
        prompt = list(request.token_ids)
        params = request.sampling
        self._validate(request, prompt)
        seq = Sequence(
            request_id=request.request_id,
            token_ids=prompt,
            num_prompt_tokens=len(prompt),
            sampling=params,
            hash_seed=hash_seed(request.cache_salt),
            prefill_only=request.prefill_only,
        )
        if params.seed is not None:
            seq.generator = torch.Generator(device="cpu")
            seq.generator.manual_seed(params.seed)
        if self.tp_size > 1 and isinstance(imported, DirectKvExport):
            raise EngineError("direct KV import is not supported with tensor parallelism; use the host-staged export")
        if imported is not None:
            self._validate_import(imported, prompt)
            seq.imported = imported
        self.seqs[seq.request_id] = seq
        self.scheduler.add(seq)
        return seq

    def _validate(self, request: GenerateRequest, prompt: list[int]) -> None:
        if request.request_id in self.seqs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        if not prompt:
            raise EngineError("the prompt is empty; send at least one token")
        vocab = self.model_config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise EngineError(f"prompt has token ids outside the vocabulary [0, {vocab})")
        params = request.sampling
        if params.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1")
        if not 0.0 < params.top_p <= 1.0 or params.temperature < 0 or params.top_k < 0:
            raise EngineError("sampling parameters out of range: need 0 < top_p <= 1, temperature >= 0, top_k >= 0")
        total = len(prompt) + params.max_tokens
        if total > self.max_model_len:
            raise RequestTooLongError(
                f"prompt has {len(prompt)} tokens and max_tokens is {params.max_tokens}: {total} exceeds the "
                f"model's context of {self.max_model_len} tokens; shorten the prompt or lower max_tokens"
            )
        if cdiv(total, self.block_size) > self.num_blocks:
            raise RequestTooLongError(
                f"{total} tokens need {cdiv(total, self.block_size)} KV blocks but this engine has only "
                f"{self.num_blocks}; shorten the request or start the worker with more --num-blocks"
            )

    def _validate_import(self, imported: KvExport, prompt: list[int]) -> None:
        h = imported.header
        mc = self.model_config
        if list(h.token_ids) != prompt or h.num_tokens != len(prompt):
            raise EngineError("imported KV does not belong to this prompt (token ids differ)")
        expected = (self.block_size, mc.num_layers, mc.num_kv_heads, mc.head_dim, dtype_name(self.dtype))
        got = (h.block_size, h.num_layers, h.num_kv_heads, h.head_dim, h.dtype)
        if got != expected:
            raise EngineError(f"imported KV layout {got} does not match this engine's {expected}")
        if isinstance(imported, DirectKvExport) and imported.blocks is not None:
            num_layers, num_blocks = imported.blocks.shape[0], imported.blocks.shape[2]
        else:
            num_layers, num_blocks = len(imported.layers), h.num_blocks
        if h.num_blocks != cdiv(h.num_tokens, self.block_size) or num_blocks != h.num_blocks or num_layers != mc.num_layers:
            raise EngineError("imported KV has the wrong number of blocks or layers")
        if h.first_token_id is None:
            raise EngineError("imported KV carries no first token")

    def abort(self, request_id: str) -> GenerateFrame | None:
        seq = self.seqs.get(request_id)
        if seq is None:
            return None
        return self._finish(seq, "abort")

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # ---- the step ----

    def step(self) -> list[tuple[str, GenerateFrame]]:
        batch = self.scheduler.schedule()
        self.last_step_was_idle = batch.is_empty
        if batch.is_empty:
            return []
        frames = self._apply_imports(batch)
        logits, sampled = self.runner.run(batch)
        new_tokens = self.sampler.sample(logits, sampled) if logits is not None else []
        return frames + self._postprocess(batch, dict(zip(map(id, sampled), new_tokens, strict=True)))

    def _apply_imports(self, batch: ScheduledBatch) -> list[tuple[str, GenerateFrame]]:
        """Copy imported KV into the blocks the scheduler gave; emit the prefill worker's first token."""
        frames = []
        for seq in batch.imports:
            imported = seq.imported
            assert imported is not None
            num_blocks = imported.header.num_blocks
            block_ids = seq.block_ids[:num_blocks]
            if isinstance(imported, DirectKvExport) and imported.blocks is not None:
                self.kv_tensors.import_tensor(block_ids, imported.blocks)
            elif self.tp_group is not None:
                mc = self.model_config
                shards = split_kv_layers(imported.layers, self.tp_size, self.dtype, num_blocks, self.block_size,
                                         mc.num_kv_heads, mc.head_dim)
                self.tp_group.import_blocks(block_ids, shards[1:])
                self.kv_tensors.import_blocks(block_ids, shards[0])
            else:
                self.kv_tensors.import_blocks(block_ids, imported.layers)
            seq.num_computed_tokens = imported.header.num_tokens
            seq.num_imported_tokens = seq.num_cached_tokens = imported.header.num_tokens
            self.kv.commit(seq)
            seq.imported = None
            assert imported.header.first_token_id is not None
            frames.append((seq.request_id, self._append_token(seq, imported.header.first_token_id)))
        return frames

    def _postprocess(self, batch: ScheduledBatch, new_tokens: dict[int, int]) -> list[tuple[str, GenerateFrame]]:
        out: list[tuple[str, GenerateFrame]] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += num_new
            self.kv.commit(seq)
            token = new_tokens.get(id(seq))
            if token is not None:
                out.append((seq.request_id, self._append_token(seq, token)))
        return out

    def _append_token(self, seq: Sequence, token: int) -> GenerateFrame:
        seq.token_ids.append(token)
        reason = self._stop_reason(seq, token)
        if reason is None and seq.prefill_only:
            reason = "length"
        if reason is None:
            return GenerateFrame(token_ids=[token])
        frame = self._finish(seq, reason)
        frame.token_ids = [token]
        return frame

    def _stop_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        params = seq.sampling
        is_stop = token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids)
        if is_stop and seq.num_output_tokens >= params.min_tokens:
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> GenerateFrame:
        self.scheduler.remove(seq)
        del self.seqs[seq.request_id]
        return self.held.finish(seq, reason)

    # ---- KV hold / export (disaggregated prefill) ----

    def export_kv(self, transfer_id: str) -> KvExport:
        """Host-staged export: the blocks as bytes; frees them. Also takes back blocks lent
        by `lend_kv` (a borrower whose direct copy failed falls back to this)."""
        seq = self.loans.take(transfer_id) if transfer_id in self.loans else self.held.take(transfer_id)
        try:
            header = self._export_header(transfer_id, seq)
            block_ids = seq.block_ids[: header.num_blocks]
            layers = self.kv_tensors.export_blocks(block_ids)
            if self.tp_group is not None:
                shards = [layers, *self.tp_group.export_blocks(block_ids)]
                layers = merge_kv_shards(shards, self.dtype, header.num_blocks, self.block_size, header.head_dim)
            return KvExport(header=header, layers=layers)
        finally:
            self.kv.free(seq)

    def _export_header(self, transfer_id: str, seq: Sequence) -> KvExportHeader:
        mc = self.model_config
        return self.held.export_header(
            transfer_id, seq, num_layers=mc.num_layers, num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim,
            dtype=dtype_name(self.dtype),
        )

    def share_kv(self, host_id: str) -> KvShareInfo:
        """The KV cache as a handle a same-host process maps (see `SharedKvTensors.share`)."""
        if self.tp_size > 1:
            raise EngineError("KV sharing is not supported with tensor parallelism yet")
        return self.kv_tensors.share(host_id)

    def lend_kv(self, transfer_id: str) -> KvExportHeader:
        """Direct export: a header naming the held blocks in the shared cache; they stay
        referenced until `release_kv`, `export_kv` or the hold timeout. KeyError if not held."""
        if self.tp_size > 1:
            raise EngineError("direct KV export is not supported with tensor parallelism; use the host-staged export")
        seq = self.held.take(transfer_id)
        self.loans.lend(transfer_id, seq)
        header = self._export_header(transfer_id, seq)
        header.transport = "direct"
        header.block_ids = list(seq.block_ids[: header.num_blocks])
        header.share_id = self.kv_tensors.share_id
        return header

    def release_kv(self, transfer_id: str) -> None:
        if not self.loans.release(transfer_id):
            self.held.release(transfer_id)

    def expire_held(self, now: float | None = None) -> int:
        return self.held.expire(now) + self.loans.expire(now)

    def next_hold_deadline(self) -> float | None:
        deadlines = [d for d in (self.held.next_deadline(), self.loans.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    # ---- observability ----

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
