"""SharedKvTensors: the engine's KV cache as one tensor that a same-host process can map.

All layers' K and V live in one allocation, `buffer` of shape
[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]; `layers[i]` are views of
it (each contiguous, so attention kernels see exactly what a separate allocation gave).
One allocation means one handle per peer and one gather per transfer.

`share()` describes the buffer for another process: a CUDA IPC handle on GPUs, a named
shared-memory segment (torch's file_system strategy) on the CPU. On the CPU the first
share moves the buffer into shared memory in place (a copy that swaps the storage under
every view), so it must run where no forward pass is using the cache: on the engine thread
between steps.
"""

from __future__ import annotations

import uuid

import torch

from mixroute.engine.kv_cache.kv_tensors import KvTensors, dtype_name
from mixroute.errors import EngineError
from mixroute.protocol.messages import CudaIpcHandle, KvShareInfo, ShmHandle


class SharedKvTensors(KvTensors):
    def __init__(
        self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> None:
        # The base class's per-layer tensors are made on the meta device (free), then
        # replaced by views of the one real allocation.
        super().__init__(num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype, torch.device("meta"))
        shape = (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
        self.buffer = torch.zeros(shape, dtype=dtype, device=device)
        self.layers = [(self.buffer[i, 0], self.buffer[i, 1]) for i in range(num_layers)]
        self.share_id = uuid.uuid4().hex

    def share(self, host_id: str) -> KvShareInfo:
        """A handle on `buffer` for one peer process on this host (engine thread only)."""
        buf = self.buffer
        info = KvShareInfo(
            share_id=self.share_id, host_id=host_id, device=buf.device.type, shape=list(buf.shape),
            dtype=dtype_name(buf.dtype),
        )
        storage = buf.untyped_storage()
        if buf.device.type == "cuda":
            # One ref-counter slot per call: torch's receiving side releases it when its
            # mapping dies, so each peer gets its own share.
            (_device, handle, size, offset, counter_handle, counter_offset, event_handle,
             event_sync) = storage._share_cuda_()  # type: ignore[attr-defined]
            info.cuda = CudaIpcHandle(
                device_uuid=str(torch.cuda.get_device_properties(buf.device).uuid),
                storage_handle=handle, storage_size_bytes=size, storage_offset_bytes=offset,
                ref_counter_handle=counter_handle, ref_counter_offset=counter_offset,
                event_handle=event_handle, event_sync_required=bool(event_sync),
            )
        elif buf.device.type == "cpu":
            manager, handle, size = storage._share_filename_cpu_()  # type: ignore[attr-defined]
            info.shm = ShmHandle(manager_handle=manager, storage_handle=handle, storage_size_bytes=size)
        else:
            raise EngineError(f"KV sharing is not supported on device {buf.device}")
        return info

    def import_tensor(self, block_ids: list[int], blocks: torch.Tensor) -> None:
        """Write blocks given as [num_layers, 2, n, block_size, kv_heads, head_dim] into `block_ids`."""
        expected = (self.num_layers, 2, len(block_ids), self.block_size, self.num_kv_heads, self.head_dim)
        if tuple(blocks.shape) != expected or blocks.dtype != self.dtype:
            raise EngineError(f"imported KV blocks {tuple(blocks.shape)} {blocks.dtype} do not match {expected} {self.dtype}")
        device = self.buffer.device
        if blocks.device.type == "cuda":
            # Made on a transfer stream: keep the allocator from reusing it under this copy.
            blocks.record_stream(torch.cuda.current_stream(blocks.device))
        index = torch.tensor(block_ids, dtype=torch.long, device=device)
        self.buffer.index_copy_(2, index, blocks.to(device, non_blocking=True))
