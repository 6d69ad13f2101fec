"""FileWriter: the KV offload's disk tier writes and deletes files off the request's path.

Writing an evicted block to disk used to happen inside the step that evicted it (one file
per block, hundreds per step when a long prompt pushes a long prefix out). Here one
background thread does the file work in the order it was asked for (a delete queued after
a write of the same path runs after it), and a file whose write is still queued is read
from the bytes handed over, so the caller never waits for the disk except to bound the
memory held by queued writes.

A write that fails (disk full) leaves no file behind: the block then reads as missing and
the request recomputes it, as for any file that is gone.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch


class FileWriter:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max(1, max_pending)
        self.failed = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kv-disk")
        self._pending: OrderedDict[Path, tuple[Future[None], torch.Tensor]] = OrderedDict()

    def write(self, path: Path, data: torch.Tensor) -> None:
        """Queue `data` (a CPU tensor the caller no longer changes) to be written to `path`."""
        self._prune()
        while len(self._pending) >= self.max_pending:
            _, (future, _) = self._pending.popitem(last=False)
            future.result()
        self._pending.pop(path, None)
        self._pending[path] = (self._executor.submit(self._write, path, data), data)

    def delete(self, path: Path) -> None:
        self._pending.pop(path, None)  # its queued write still runs, then this delete
        self._executor.submit(_unlink, path)

    def pending(self, path: Path) -> torch.Tensor | None:
        """The contents of a write still queued for `path`, else None (read the file)."""
        entry = self._pending.get(path)
        return None if entry is None else entry[1]

    def flush(self) -> None:
        """Wait for every queued write and delete."""
        self._executor.submit(lambda: None).result()
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._executor.shutdown(wait=True)

    def _prune(self) -> None:
        while self._pending:
            future, _ = next(iter(self._pending.values()))
            if not future.done():
                break
            self._pending.popitem(last=False)

    def _write(self, path: Path, data: torch.Tensor) -> None:
        try:
            data.view(torch.uint8).numpy().tofile(path)
        except OSError:
            _unlink(path)
            self.failed += 1


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
