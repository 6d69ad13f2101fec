"""EngineConfig: everything that shapes one engine instance, validated at the edge."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["float32", "bfloat16", "float16"]


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    """A Hugging Face model directory (config.json, *.safetensors, tokenizer files)."""
    served_model_name: str | None = None
    """Name clients use; defaults to the directory name."""
    device: Literal["cpu", "cuda"] = "cpu"
    device_index: int = Field(default=0, ge=0)
    """Which GPU (CUDA ordinal as this process sees it) on cuda; tensor-parallel rank r uses
    device_index + r. Ignored on cpu."""
    dtype: DType | None = None
    """None: float32 on CPU, bfloat16 on CUDA."""
    block_size: int = Field(default=16, ge=1, le=1024)
    num_blocks: int | None = Field(default=None, ge=2)
    """None: derived (CPU: a fixed KV budget; CUDA: from gpu_memory_utilization)."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=1.0)
    cpu_kv_cache_bytes: int = Field(default=1 << 30, ge=1 << 20)
    """KV budget on CPU when num_blocks is None."""
    max_num_seqs: int = Field(default=64, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    """Token budget per step; None: 512 on CPU (keeps steps short so decodes are not
    stalled behind a long prefill), 2048 on CUDA."""
    max_model_len: int | None = Field(default=None, ge=2)
    """None: the model's max_position_embeddings, capped at 8192."""
    enable_prefix_caching: bool = True
    attention_backend: Literal["auto", "sdpa", "triton"] = "auto"
    enforce_eager: bool = False
    """Never replay decode steps from CUDA graphs (engine/cuda_graphs.py); CUDA + Triton only."""
    """Decode attention: auto = the Triton paged kernel on CUDA when available, else SDPA."""
    fuse_projections: bool = True
    """One GEMM for q/k/v and one for gate/up. Off only to mirror HF's kernels bit for bit."""
    worker_id: int = 0
    kv_hold_timeout_s: float = Field(default=30.0, gt=0.0)
    """How long a prefill-only request's blocks wait for export_kv/release_kv."""
    seed: int = 0
    tensor_parallel_size: int = Field(default=1, ge=1)
    """Processes the model is split over (heads and MLP columns); rank 0 is this process,
    the others are spawned helpers (one GPU each on CUDA; gloo on the CPU)."""
    kv_offload_host_blocks: int = Field(default=0, ge=0)
    """Host-memory blocks that cached blocks evicted from the device cache are copied to,
    to be loaded back on a later prefix hit instead of recomputed (0: no offload)."""
    kv_offload_disk_dir: str | None = None
    """Directory for a third tier: host entries pushed out are written here (emptied at start)."""
    kv_offload_disk_blocks: int = Field(default=0, ge=0)
    """Blocks the disk tier may hold."""

    @field_validator("model_path")
    @classmethod
    def _model_dir_exists(cls, value: str) -> str:
        path = Path(value).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{value!r} is not a model directory (no config.json); "
                "pass a Hugging Face directory or run `mixroute model prepare`"
            )
        return str(path)

    @model_validator(mode="after")
    def _fill_defaults(self) -> EngineConfig:
        if self.served_model_name is None:
            self.served_model_name = Path(self.model_path).name
        if self.dtype is None:
            self.dtype = "float32" if self.device == "cpu" else "bfloat16"
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = 512 if self.device == "cpu" else 2048
        if self.kv_offload_disk_dir is not None and (self.kv_offload_host_blocks < 1 or self.kv_offload_disk_blocks < 1):
            raise ValueError("kv_offload_disk_dir needs kv_offload_host_blocks >= 1 and kv_offload_disk_blocks >= 1")
        if self.kv_offload_host_blocks and self.tensor_parallel_size > 1:
            raise ValueError("KV offload is not supported with tensor_parallel_size > 1 yet")
        return self
