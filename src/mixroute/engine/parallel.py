"""TensorParallel: one engine spread over N processes (one per GPU, or N CPU processes).

Megatron-style sharding of the Llama-family weights at load time:
- column-parallel: q/k/v (by attention head, whole GQA groups per rank) and gate/up
  (by intermediate row); each rank computes its own heads / slice of the MLP;
- row-parallel: o_proj and down_proj keep the matching input columns; their partial
  outputs are summed with one all_reduce each, so every rank holds the full hidden state;
- embeddings, norms and lm_head stay replicated.
Each rank's KV cache holds only its kv heads.

Rank 0 is the engine: it runs the scheduler, builds the step's input tensors and
attention metadata, sends them to the helper ranks over a pipe (pickled, on the CPU),
runs its shard of the forward pass, and samples. Helper ranks (`helper_main`, spawned
processes) loop: receive a message, act on their shard, repeat until told to stop.
Messages: `("step", inputs)` runs the forward; `("export", block_ids)` answers with the
blocks' K/V bytes of the rank's kv heads; `("import", block_ids, layers)` writes them.

KV export/import (disaggregation) uses the full-head layout on the wire whatever the TP
size: rank 0 gathers every rank's heads (`merge_kv_shards`, heads in rank order) on
export and splits them again on import (`split_kv_layers`), so a TP=2 prefill feeds a TP=1
decode worker and the other way round. Collectives use gloo on the CPU and NCCL on CUDA, over a group built from a
TCPStore on 127.0.0.1 (not the process-global default group, so one process may hold
several engines).
"""

from __future__ import annotations

import copy
import logging
import multiprocessing as mp
import pickle
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mixroute.engine.attention import AttentionMetadata
from mixroute.engine.config import EngineConfig
from mixroute.engine.kv_cache.kv_tensors import KvTensors
from mixroute.engine.model.config import ModelConfig
from mixroute.engine.model.llama import DecoderLayer, LlamaForCausalLM
from mixroute.engine.model.loader import load_model
from mixroute.engine.runner import ModelRunner
from mixroute.engine.scheduler import ScheduledBatch
from mixroute.engine.sequence import Sequence
from mixroute.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(seconds=120)
STARTUP_TIMEOUT_S = 120.0


# ---- the process group ----


@dataclass(slots=True)
class TensorParallel:
    rank: int
    world_size: int
    group: Any
    """A ProcessGroupGloo / ProcessGroupNCCL built directly from a store."""

    @classmethod
    def connect(cls, rank: int, world_size: int, port: int, device: torch.device, store: Any = None) -> TensorParallel:
        if store is None:
            store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timedelta(seconds=STARTUP_TIMEOUT_S))
        if device.type == "cuda":
            torch.cuda.set_device(device)
            group: Any = dist.ProcessGroupNCCL(store, rank, world_size, dist.ProcessGroupNCCL.Options())
        else:
            group = dist.ProcessGroupGloo(store, rank, world_size, COLLECTIVE_TIMEOUT)
        return cls(rank=rank, world_size=world_size, group=group)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self.group.allreduce([tensor]).wait()
        return tensor

    def shard(self, size: int) -> slice:
        per = size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def check_divisible(mc: ModelConfig, world_size: int) -> None:
    for name, value in (("num_attention_heads", mc.num_heads), ("num_key_value_heads", mc.num_kv_heads),
                        ("intermediate_size", mc.intermediate_size)):
        if value % world_size:
            raise ConfigError(f"tensor parallel size {world_size} does not divide the model's {name} ({value})")


# ---- sharding ----


class RowParallelLinear(nn.Module):
    """A Linear holding a slice of the input features; sums the partial outputs over ranks."""

    def __init__(self, linear: nn.Linear, tp: TensorParallel) -> None:
        super().__init__()
        self.linear = linear
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.linear(x))


def _rows(linear: nn.Linear, part: slice) -> nn.Linear:
    out = nn.Linear(1, 1, bias=linear.bias is not None, device="meta")
    out.weight = nn.Parameter(linear.weight[part].contiguous(), requires_grad=False)
    if linear.bias is not None:
        out.bias = nn.Parameter(linear.bias[part].contiguous(), requires_grad=False)  # type: ignore[misc]
    return out


def _columns(linear: nn.Linear, part: slice, keep_bias: bool) -> nn.Linear:
    has_bias = linear.bias is not None and keep_bias
    out = nn.Linear(1, 1, bias=has_bias, device="meta")
    out.weight = nn.Parameter(linear.weight[:, part].contiguous(), requires_grad=False)
    if has_bias:
        out.bias = nn.Parameter(linear.bias.clone(), requires_grad=False)  # type: ignore[misc, union-attr]
    return out


def shard_model(model: LlamaForCausalLM, tp: TensorParallel) -> None:
    """Cut an unfused, fully loaded model down to this rank's shard, in place."""
    mc = model.config
    check_divisible(mc, tp.world_size)
    hd = mc.head_dim
    heads = tp.shard(mc.num_heads)
    kv_heads = tp.shard(mc.num_kv_heads)
    q_part = slice(heads.start * hd, heads.stop * hd)
    kv_part = slice(kv_heads.start * hd, kv_heads.stop * hd)
    ffn = tp.shard(mc.intermediate_size)
    for layer in model.model.layers:
        assert isinstance(layer, DecoderLayer)
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = _rows(attn.q_proj, q_part)
        attn.k_proj = _rows(attn.k_proj, kv_part)
        attn.v_proj = _rows(attn.v_proj, kv_part)
        attn.o_proj = RowParallelLinear(_columns(attn.o_proj, q_part, keep_bias=tp.rank == 0), tp)  # type: ignore[assignment]
        attn.num_heads = mc.num_heads // tp.world_size
        attn.num_kv_heads = mc.num_kv_heads // tp.world_size
        mlp.gate_proj = _rows(mlp.gate_proj, ffn)
        mlp.up_proj = _rows(mlp.up_proj, ffn)
        # The bias is added once (on rank 0), not once per rank.
        mlp.down_proj = RowParallelLinear(_columns(mlp.down_proj, ffn, keep_bias=tp.rank == 0), tp)  # type: ignore[assignment]


def merge_kv_shards(shards: list[list[bytes]], dtype: torch.dtype, num_blocks: int, block_size: int,
                    head_dim: int) -> list[bytes]:
    """Per layer: every rank's `[2, n, block_size, local_heads, head_dim]` joined on the head axis."""
    out = []
    for per_rank in zip(*shards, strict=True):
        parts = [torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).view(2, num_blocks, block_size, -1, head_dim)
                 for raw in per_rank]
        out.append(torch.cat(parts, dim=3).contiguous().view(torch.uint8).numpy().tobytes())
    return out


def split_kv_layers(layers: list[bytes], world_size: int, dtype: torch.dtype, num_blocks: int, block_size: int,
                    num_kv_heads: int, head_dim: int) -> list[list[bytes]]:
    """The inverse of `merge_kv_shards`: per rank, per layer, that rank's kv heads."""
    per_rank: list[list[bytes]] = [[] for _ in range(world_size)]
    for raw in layers:
        full = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
        full = full.view(2, num_blocks, block_size, num_kv_heads, head_dim)
        for rank, part in enumerate(full.chunk(world_size, dim=3)):
            per_rank[rank].append(part.contiguous().view(torch.uint8).numpy().tobytes())
    return per_rank


def load_sharded(config: EngineConfig, tp: TensorParallel, device: torch.device, dtype: torch.dtype,
                 rope_len: int) -> LlamaForCausalLM:
    model = load_model(config.model_path, device, dtype, fuse=False)
    shard_model(model, tp)
    if config.fuse_projections:
        model.fuse()
    model.init_rope(rope_len, device, dtype)
    return model


# ---- the step message ----

Step = tuple[torch.Tensor, torch.Tensor, AttentionMetadata]


def _move(obj: Any, device: torch.device) -> Any:
    """A copy of the step with its tensors (and its metadata dataclasses') on `device`.

    Never in place: rank 0 sends a CPU copy of the step it is about to run itself on the GPU."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(o, device) for o in obj)
    if hasattr(obj, "__dataclass_fields__"):
        moved = copy.copy(obj)
        for name in obj.__dataclass_fields__:
            setattr(moved, name, _move(getattr(obj, name), device))
        return moved
    return obj


class TensorParallelRunner(ModelRunner):
    """Rank 0's runner: sends each step's inputs to the helpers, then runs its own shard."""

    def __init__(self, model: LlamaForCausalLM, kv: KvTensors, block_size: int, device: torch.device,
                 use_triton: bool, group: TensorParallelGroup) -> None:
        super().__init__(model, kv, block_size, device, use_triton)
        self.group = group

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[Sequence]]:
        if not batch.seqs:
            return None, []
        input_ids, positions, meta, sample_index, sampled = self._prepare(batch)
        self.group.send_step((input_ids, positions, meta))
        hidden = self.model(input_ids, positions, meta, self.kv.layers)
        if not sampled:
            return None, []
        return self.model.compute_logits(hidden[sample_index]), sampled


# ---- the helper processes ----


def helper_main(rank: int, world_size: int, port: int, config_json: str, rope_len: int, num_threads: int,
                conn: Connection) -> None:
    """A helper rank: build the shard, then (told the block count) the KV cache, then run every step rank 0 sends."""
    torch.set_num_threads(num_threads)
    config = EngineConfig.model_validate_json(config_json)
    device = torch.device(config.device, config.device_index + rank) if config.device == "cuda" else torch.device("cpu")
    dtype: torch.dtype = getattr(torch, config.dtype or "float32")
    try:
        tp = TensorParallel.connect(rank, world_size, port, device)
        model = load_sharded(config, tp, device, dtype, rope_len)
        conn.send_bytes(b"ready")
    except Exception as exc:  # noqa: BLE001 - reported to rank 0, which raises a ConfigError
        conn.send_bytes(b"error:" + f"{type(exc).__name__}: {exc}".encode())
        return
    try:
        num_blocks = int(conn.recv_bytes())
    except (EOFError, ValueError):
        return  # rank 0 failed before starting the cache
    mc = model.config
    kv = KvTensors(mc.num_layers, num_blocks, config.block_size, mc.num_kv_heads // world_size, mc.head_dim,
                   dtype, device)
    with torch.inference_mode():
        while True:
            try:
                raw = conn.recv_bytes()
            except EOFError:  # rank 0 went away
                return
            if not raw:
                return  # the stop message
            message = pickle.loads(raw)
            if message[0] == "step":
                input_ids, positions, meta = _move(message[1], device)
                model(input_ids, positions, meta, kv.layers)
            elif message[0] == "export":
                conn.send_bytes(pickle.dumps(kv.export_blocks(message[1])))
            elif message[0] == "import":
                kv.import_blocks(message[1], message[2])


class TensorParallelGroup:
    """Rank 0's handle on the helpers: starts them, sends steps, stops them."""

    def __init__(self, config: EngineConfig, rope_len: int) -> None:
        self.world_size = config.tensor_parallel_size
        self.device = torch.device(config.device, config.device_index) if config.device == "cuda" else torch.device("cpu")
        self.store = dist.TCPStore("127.0.0.1", 0, self.world_size, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=STARTUP_TIMEOUT_S))
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for rank in range(1, self.world_size):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=helper_main, name=f"mixroute-tp-rank{rank}", daemon=True,
                args=(rank, self.world_size, self.store.port, config.model_dump_json(), rope_len,
                      torch.get_num_threads(), theirs),
            )
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)
        try:
            self.tp = TensorParallel.connect(0, self.world_size, self.store.port, self.device, store=self.store)
            for rank, conn in enumerate(self.conns, start=1):
                if not conn.poll(STARTUP_TIMEOUT_S):
                    raise ConfigError(f"tensor parallel rank {rank} did not start within {STARTUP_TIMEOUT_S:.0f} s")
                reply = conn.recv_bytes()
                if reply != b"ready":
                    raise ConfigError(f"tensor parallel rank {rank} failed: {reply.decode(errors='replace')}")
        except BaseException:
            self.close()
            raise
        log.info("tensor parallel ready world_size=%d device=%s", self.world_size, self.device)

    def start(self, num_blocks: int) -> None:
        """Tell the helpers the KV cache size (known once rank 0 has loaded its shard)."""
        for conn in self.conns:
            conn.send_bytes(str(num_blocks).encode())

    def send_step(self, step: Step) -> None:
        cpu_step = _move(step, torch.device("cpu")) if self.device.type != "cpu" else step
        self._send_all(pickle.dumps(("step", cpu_step)))

    def export_blocks(self, block_ids: list[int]) -> list[list[bytes]]:
        """Ranks 1..N-1's shards of the blocks, in rank order (one bytes per layer each)."""
        self._send_all(pickle.dumps(("export", list(block_ids))))
        shards = []
        for rank, conn in enumerate(self.conns, start=1):
            if not conn.poll(STARTUP_TIMEOUT_S):
                raise EngineError(f"tensor parallel rank {rank} did not answer a KV export")
            shards.append(pickle.loads(conn.recv_bytes()))
        return shards

    def import_blocks(self, block_ids: list[int], shards: list[list[bytes]]) -> None:
        """`shards[r - 1]`: rank r's layers. Ordered before the next step on each pipe."""
        for rank, (conn, shard) in enumerate(zip(self.conns, shards, strict=True), start=1):
            self._check_alive(rank)
            conn.send_bytes(pickle.dumps(("import", list(block_ids), shard)))

    def _check_alive(self, rank: int) -> None:
        proc = self.procs[rank - 1]
        if not proc.is_alive():
            raise EngineError(f"tensor parallel rank {rank} exited (code {proc.exitcode})")

    def _send_all(self, raw: bytes) -> None:
        for rank, conn in enumerate(self.conns, start=1):
            self._check_alive(rank)
            conn.send_bytes(raw)

    def close(self, timeout: float = 10.0) -> None:
        for conn in self.conns:
            try:
                conn.send_bytes(b"")
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout)
            if proc.is_alive():
                log.warning("tensor parallel helper pid=%s did not stop; terminating", proc.pid)
                proc.terminate()
                proc.join(timeout)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []
