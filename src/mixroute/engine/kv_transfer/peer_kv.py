"""PeerKv: the decode side's mapping of a same-host prefill engine's shared KV cache.

`copy_blocks` gathers a request's blocks out of the peer's cache and copies them to this
engine's device: on GPUs one gather kernel on the peer's GPU, then one device-to-device
copy (NVLink or PCIe peer-to-peer; the same GPU when both workers share one), on private
streams so the copy overlaps this engine's own forward passes. It returns only once the
copy is complete, so the caller may release the prefill's hold straight after.

`DirectKvExport` carries the copied blocks into `LLMEngine.add_request(imported=...)`,
where they are scattered into the blocks the scheduler allocates (a device-local copy).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from mixroute.engine.api import KvExport
from mixroute.errors import EngineError
from mixroute.protocol.messages import KvShareInfo


@dataclass(slots=True)
class DirectKvExport(KvExport):
    blocks: torch.Tensor | None = None
    """[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] on the importing device."""


def local_cuda_index(device_uuid: str) -> int:
    """This process's ordinal for the GPU with that UUID (CUDA_VISIBLE_DEVICES renumbers GPUs)."""
    for index in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(index).uuid) == device_uuid:
            return index
    raise EngineError(f"the prefill's GPU {device_uuid} is not visible to this process")


def map_shared(info: KvShareInfo) -> torch.Tensor:
    """The peer's KV buffer as a tensor of this process (no copy)."""
    dtype: torch.dtype = getattr(torch, info.dtype)
    shape = tuple(info.shape)
    stride = torch.empty(shape, device="meta").stride()
    if info.device == "cuda" and info.cuda is not None:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        if not torch.cuda.is_available():
            raise EngineError("the prefill's KV cache is on a GPU but this process sees no CUDA device")
        h = info.cuda
        return rebuild_cuda_tensor(  # type: ignore[no-any-return]
            torch.Tensor, shape, stride, 0, torch.UntypedStorage, dtype, local_cuda_index(h.device_uuid),
            h.storage_handle, h.storage_size_bytes, h.storage_offset_bytes, False,
            h.ref_counter_handle, h.ref_counter_offset, h.event_handle, h.event_sync_required,
        )
    if info.device == "cpu" and info.shm is not None:
        s = info.shm
        storage = torch.UntypedStorage._new_shared_filename_cpu(  # type: ignore[attr-defined]
            s.manager_handle, s.storage_handle, s.storage_size_bytes
        )
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
        return torch._utils._rebuild_tensor(typed, 0, shape, stride)  # type: ignore[no-any-return]
    raise EngineError(f"unsupported KV share (device {info.device!r})")


class PeerKv:
    def __init__(self, info: KvShareInfo) -> None:
        self.info = info
        self.tensor = map_shared(info)
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._lock = threading.Lock()
        """One copy at a time per peer: the copies share this mapping's streams."""

    @property
    def share_id(self) -> str:
        return self.info.share_id

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def copy_blocks(self, block_ids: list[int], device: torch.device) -> torch.Tensor:
        """Blocks `block_ids` of the peer as [layers, 2, n, block_size, kv_heads, head_dim] on `device`."""
        src = self.tensor
        num_blocks = src.shape[2]
        if not block_ids or min(block_ids) < 0 or max(block_ids) >= num_blocks:
            raise EngineError(f"block ids outside the peer's cache of {num_blocks} blocks")
        if src.device.type != "cuda":
            index = torch.tensor(block_ids, dtype=torch.long)
            return src.index_select(2, index).to(device)
        with self._lock, contextlib.ExitStack() as stack:
            # The copy runs on the source GPU's current stream and fences the destination's
            # current stream (torch's rule for cross-device copies): make both private.
            streams = [self._stream(src.device)]
            if device != src.device:
                streams.append(self._stream(device))
            for stream in streams:
                stack.enter_context(torch.cuda.stream(stream))
            index = torch.tensor(block_ids, dtype=torch.long, device=src.device)
            gathered = src.index_select(2, index)
            out = torch.empty(gathered.shape, dtype=gathered.dtype, device=device)
            out.copy_(gathered, non_blocking=True)
            for stream in streams:
                stream.synchronize()
        return out
