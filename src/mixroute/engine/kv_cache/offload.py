"""KvOffload: the KV cache's second and third tiers, host memory and disk.

A cached block that the device pool evicts (to reuse its memory) is first copied here,
so a later request with the same prefix loads it back instead of recomputing it:
- host tier: a preallocated CPU tensor of `num_host_blocks` slots (pinned when the KV
  cache is on CUDA), least recently used slot reused first;
- disk tier (optional): a host entry pushed out of memory is written to one file per
  block under `disk_dir`, up to `num_disk_blocks` files, least recently used deleted first;
  files are written and deleted on a background thread (`file_writer.py`).

Entries are keyed by the block's sequence hash and keep its tokens hash and parent hash,
so the pool can advertise (and dump) them like device blocks: to the router, a block is
cached on a worker while it is in any tier (see BlockPool). The pool calls `save` while
choosing blocks to reuse, before any forward pass writes them, and `read` + `write_device`
while admitting a request, before its forward pass.

Copies on CUDA are asynchronous and go straight between device blocks and the pinned
host slots (no pageable bounce, no gather on the host, no pinned allocation per call):
`save` gathers the evicted blocks on the device and copies each run of consecutive slots
with one device-to-host copy; `read` copies host slots (and disk files, through a reused
pinned staging buffer) into a device tensor. All of them are queued on the device's
current stream, the one the forward pass runs on, so they are ordered with it and with
each other: a slot read by `read` and refilled by a later `save` is read first. The host
thread touches slot memory only to write a slot to disk, and waits for the stream first.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from mixroute.engine.kv_cache.file_writer import FileWriter
from mixroute.errors import ConfigError

# Queued disk writes hold a copy of their block: at most this many before an eviction
# waits for the oldest (a fixed bound, so the copies never approach the host tier's size).
_MAX_PENDING_WRITES = 256


class _KvLayers(Protocol):
    """What the offload needs of the device cache (KvTensors has it)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(slots=True)
class OffloadEntry:
    tokens_hash: int
    parent_hash: int | None
    cached_order: int
    slot: int = -1
    """Host slot, or -1 when the entry is only on disk."""


class KvOffload:
    def __init__(
        self,
        kv: _KvLayers,
        num_host_blocks: int,
        *,
        disk_dir: str | Path | None = None,
        num_disk_blocks: int = 0,
    ) -> None:
        if num_host_blocks < 1:
            raise ConfigError("KV offload needs at least one host block")
        if disk_dir is not None and num_disk_blocks < 1:
            raise ConfigError("KV offload to disk needs num_disk_blocks >= 1")
        self._kv = kv
        k0 = kv.layers[0][0]
        self.device = k0.device
        self.dtype = k0.dtype
        self.block_shape = tuple(k0.shape[1:])  # block_size, kv_heads, head_dim
        self.num_layers = len(kv.layers)
        self.num_host_blocks = num_host_blocks
        self.num_disk_blocks = num_disk_blocks if disk_dir is not None else 0
        self._host = torch.empty(
            (num_host_blocks, self.num_layers, 2, *self.block_shape),
            dtype=self.dtype,
            pin_memory=self.device.type == "cuda",
        )
        self._cuda = self.device.type == "cuda"
        self._staging = torch.empty(0)  # pinned rows for disk reads, grown on demand
        self._staging_free: torch.cuda.Event | None = None  # recorded after its last copy
        self._free_slots = list(range(num_host_blocks - 1, -1, -1))
        self._in_host: OrderedDict[int, None] = OrderedDict()
        self._on_disk: OrderedDict[int, None] = OrderedDict()
        self._entries: dict[int, OffloadEntry] = {}
        self.disk_dir: Path | None = None
        self._writer: FileWriter | None = None
        if disk_dir is not None:
            self.disk_dir = Path(disk_dir)
            try:
                # Files of an earlier process are not trusted: start empty.
                if self.disk_dir.exists():
                    shutil.rmtree(self.disk_dir)
                self.disk_dir.mkdir(parents=True)
            except OSError as exc:
                raise ConfigError(f"KV offload disk directory {self.disk_dir}: {exc}") from exc
            self._writer = FileWriter(max_pending=_MAX_PENDING_WRITES)
        self.stats = {"saved": 0, "loaded_host": 0, "loaded_disk": 0, "to_disk": 0, "dropped": 0}

    # ---- what is here ----

    def __contains__(self, seq_hash: int) -> bool:
        return seq_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_disk_used(self) -> int:
        return len(self._on_disk)

    def entries(self) -> Iterable[tuple[int, OffloadEntry]]:
        return self._entries.items()

    def chain(self, seq_hashes: Sequence[int]) -> list[int]:
        """The leading hashes of `seq_hashes` held in some tier."""
        out: list[int] = []
        for seq_hash in seq_hashes:
            if seq_hash not in self._entries:
                break
            out.append(seq_hash)
        return out

    # ---- device -> here ----

    def save(self, blocks: Sequence[tuple[int, int, int | None, int]], block_ids: Sequence[int]) -> list[int]:
        """Copy evicted device blocks (seq_hash, tokens_hash, parent_hash, cached_order) in.

        Returns the hashes this made leave every offload tier (pushed out of host memory
        with no disk tier, or out of the disk tier): the caller decides whether they are
        gone from the worker.
        """
        dropped: list[int] = []
        fresh: list[tuple[int, int, int | None, int, int]] = []
        for (seq_hash, tokens_hash, parent_hash, order), block_id in zip(blocks, block_ids, strict=True):
            entry = self._entries.get(seq_hash)
            if entry is not None and entry.slot >= 0:
                self._in_host.move_to_end(seq_hash)  # same content is already here
                continue
            fresh.append((seq_hash, tokens_hash, parent_hash, order, block_id))
        if not fresh:
            return []
        gathered = self._gather([f[4] for f in fresh])
        # Only the batch's last num_host_blocks fit in host memory; those before them
        # (evicted first: the least recently used) go straight to disk, or are dropped.
        num_over = max(0, len(fresh) - self.num_host_blocks)
        if num_over:
            self._overflow(fresh[:num_over], gathered[:num_over], dropped)
        slots: list[int] = []
        for seq_hash, tokens_hash, parent_hash, order, _ in fresh[num_over:]:
            slot = self._take_slot(dropped, keep=seq_hash)  # victims are older: this batch fits
            entry = self._entries.get(seq_hash)
            if entry is None:
                entry = self._entries[seq_hash] = OffloadEntry(tokens_hash, parent_hash, order)
            entry.slot = slot
            self._in_host[seq_hash] = None
            slots.append(slot)
        for row, slot, length in _runs(slots):
            rows = gathered[num_over + row : num_over + row + length]
            self._host[slot : slot + length].copy_(rows, non_blocking=self._cuda)
        self.stats["saved"] += len(slots)
        return [h for h in dropped if h not in self._entries]

    def _gather(self, block_ids: list[int]) -> torch.Tensor:
        """The blocks in the host layout [n, layers, 2, ...], gathered on the device."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        return torch.stack(
            [torch.stack((k.index_select(0, index), v.index_select(0, index)), dim=1) for k, v in self._kv.layers],
            dim=1,
        )

    def _overflow(
        self, fresh: list[tuple[int, int, int | None, int, int]], rows: torch.Tensor, dropped: list[int]
    ) -> None:
        """Blocks that do not fit in host memory: to disk, from one device-to-host copy."""
        if self.disk_dir is None:
            dropped.extend(seq_hash for seq_hash, *_ in fresh)
            self.stats["dropped"] += len(fresh)
            return
        on_host = rows.cpu()
        for (seq_hash, tokens_hash, parent_hash, order, _), data in zip(fresh, on_host, strict=True):
            if seq_hash in self._on_disk:
                self._on_disk.move_to_end(seq_hash)
                continue
            if seq_hash not in self._entries:
                self._entries[seq_hash] = OffloadEntry(tokens_hash, parent_hash, order)
            self._write_disk(seq_hash, data, dropped, keep=seq_hash)
        self.stats["saved"] += len(fresh)

    def _take_slot(self, dropped: list[int], keep: int) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        victim, _ = self._in_host.popitem(last=False)
        entry = self._entries[victim]
        slot, entry.slot = entry.slot, -1
        if self.disk_dir is not None:
            if victim not in self._on_disk:
                if self._cuda:
                    torch.cuda.current_stream(self.device).synchronize()  # its copy-in may be queued
                self._write_disk(victim, self._host[slot].clone(), dropped, keep)
            else:
                self._on_disk.move_to_end(victim)
        else:
            del self._entries[victim]
            dropped.append(victim)
            self.stats["dropped"] += 1
        return slot

    def _write_disk(self, seq_hash: int, data: torch.Tensor, dropped: list[int], keep: int) -> None:
        """Queue `data` (a CPU copy nobody changes) as the block's file, making room first."""
        assert self.disk_dir is not None
        while len(self._on_disk) >= self.num_disk_blocks:
            victim, _ = self._on_disk.popitem(last=False)
            self._disk().delete(self._path(victim))
            entry = self._entries[victim]
            if entry.slot < 0 and victim != keep:
                del self._entries[victim]
                dropped.append(victim)
                self.stats["dropped"] += 1
        # Written in the background; a failed write leaves no file and the block reads as
        # missing: recomputed, never lost work.
        self._disk().write(self._path(seq_hash), data)
        self._on_disk[seq_hash] = None
        self.stats["to_disk"] += 1

    def _disk(self) -> FileWriter:
        assert self._writer is not None
        return self._writer

    def _path(self, seq_hash: int) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{seq_hash:016x}.kv"

    # ---- here -> device ----

    def read(self, seq_hashes: Sequence[int]) -> torch.Tensor | None:
        """The blocks' contents, [n, layers, 2, block_size, kv_heads, head_dim] on the
        device (copies queued on its current stream), or None if one of them cannot be
        read (a disk file gone): the caller recomputes."""
        out = torch.empty((len(seq_hashes), self.num_layers, 2, *self.block_shape), dtype=self.dtype, device=self.device)
        rows, slots, disk = [], [], []
        for i, seq_hash in enumerate(seq_hashes):
            entry = self._entries[seq_hash]
            if entry.slot >= 0:
                rows.append(i)
                slots.append(entry.slot)
                self._in_host.move_to_end(seq_hash)
            else:
                disk.append((i, seq_hash))
        if disk and not self._read_disk(disk, out):
            return None
        for row, slot, length in _runs(slots):
            start = rows[row]
            if rows[row + length - 1] - start == length - 1:
                out[start : start + length].copy_(self._host[slot : slot + length], non_blocking=self._cuda)
            else:
                for j in range(length):
                    out[rows[row + j]].copy_(self._host[slot + j], non_blocking=self._cuda)
        self.stats["loaded_host"] += len(rows)
        return out

    def _read_disk(self, wanted: list[tuple[int, int]], out: torch.Tensor) -> bool:
        """Files -> pinned staging rows -> `out` rows; False if a file cannot be read."""
        if self._staging_free is not None:
            self._staging_free.synchronize()  # the staging rows' last copies are done
        if self._staging.shape[0] < len(wanted):
            self._staging = torch.empty(
                (len(wanted), self.num_layers, 2, *self.block_shape), dtype=self.dtype, pin_memory=self._cuda
            )
        for j, (_, seq_hash) in enumerate(wanted):
            queued = self._disk().pending(self._path(seq_hash))
            if queued is not None:
                self._staging[j].copy_(queued)
                self._on_disk.move_to_end(seq_hash)
                continue
            target = self._staging[j].view(torch.uint8).view(-1).numpy()
            try:
                with open(self._path(seq_hash), "rb") as f:
                    if f.readinto(memoryview(target)) != target.size:
                        return False
            except OSError:
                return False
            self._on_disk.move_to_end(seq_hash)
        for j, (i, _) in enumerate(wanted):
            out[i].copy_(self._staging[j], non_blocking=self._cuda)
        if self._cuda:
            self._staging_free = torch.cuda.Event()
            self._staging_free.record(torch.cuda.current_stream(self.device))
        self.stats["loaded_disk"] += len(wanted)
        return True

    def write_device(self, block_ids: Sequence[int], data: torch.Tensor) -> None:
        """Copy `read`'s result into device blocks."""
        index = torch.tensor(list(block_ids), dtype=torch.long, device=self.device)
        for layer, (k, v) in enumerate(self._kv.layers):
            k.index_copy_(0, index, data[:, layer, 0])
            v.index_copy_(0, index, data[:, layer, 1])

    # ---- whole cache ----

    def clear(self) -> list[int]:
        """Forget everything; returns the hashes that were held."""
        held = list(self._entries)
        for seq_hash in self._on_disk:
            self._disk().delete(self._path(seq_hash))
        self._entries.clear()
        self._in_host.clear()
        self._on_disk.clear()
        self._free_slots = list(range(self.num_host_blocks - 1, -1, -1))
        return held

    def flush(self) -> None:
        """Wait until the disk tier's queued writes and deletes are on disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        self.clear()
        if self._writer is not None:
            self._writer.close()
        if self.disk_dir is not None:
            shutil.rmtree(self.disk_dir, ignore_errors=True)


def _runs(slots: list[int]) -> list[tuple[int, int, int]]:
    """(first row, first slot, length) of each run of consecutive slots in `slots`."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] + 1:
            runs.append((start, slots[start], i - start))
            start = i
    return runs
