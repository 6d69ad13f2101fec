"""KvTensors: the K and V tensors of every layer, [num_blocks, block_size, kv_heads, head_dim],
plus copying whole blocks out (export) and in (import) as raw bytes."""

from __future__ import annotations

import torch

from mixroute.errors import EngineError


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class KvTensors:
    def __init__(
        self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> None:
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.layers = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def export_blocks(self, block_ids: list[int]) -> list[bytes]:
        """Per layer: K and V of the blocks as [2, n, block_size, kv_heads, head_dim] bytes."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.layers[0][0].device)
        out = []
        for k, v in self.layers:
            data = torch.stack((k.index_select(0, index), v.index_select(0, index))).contiguous().cpu()
            out.append(data.view(torch.uint8).numpy().tobytes())
        return out

    def import_blocks(self, block_ids: list[int], layers: list[bytes]) -> None:
        if len(layers) != self.num_layers:
            raise EngineError(f"KV import has {len(layers)} layers, this model has {self.num_layers}")
        device = self.layers[0][0].device
        index = torch.tensor(block_ids, dtype=torch.long, device=device)
        shape = (2, len(block_ids), self.block_size, self.num_kv_heads, self.head_dim)
        for (k, v), raw in zip(self.layers, layers, strict=True):
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            data = flat.view(self.dtype).view(shape).to(device)
            k.index_copy_(0, index, data[0])
            v.index_copy_(0, index, data[1])
