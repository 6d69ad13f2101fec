"""The KV offload's background file writer: ordered writes and deletes, queued contents
readable before they reach the disk, bounded memory, failures leave no file."""

from __future__ import annotations

import threading

import torch

from mixroute.engine.kv_cache.file_writer import FileWriter


def blocked(writer: FileWriter) -> threading.Event:
    """Hold the writer's thread until the returned event is set."""
    gate = threading.Event()
    writer._executor.submit(gate.wait)
    return gate


def test_a_queued_write_is_readable_before_it_reaches_the_disk(tmp_path) -> None:
    writer = FileWriter(max_pending=8)
    gate = blocked(writer)
    data = torch.arange(16, dtype=torch.float32)
    writer.write(tmp_path / "a.kv", data)
    assert not (tmp_path / "a.kv").exists()
    assert torch.equal(writer.pending(tmp_path / "a.kv"), data)
    gate.set()
    writer.flush()
    assert writer.pending(tmp_path / "a.kv") is None
    on_disk = torch.frombuffer(bytearray((tmp_path / "a.kv").read_bytes()), dtype=torch.float32)
    assert torch.equal(on_disk, data)
    writer.close()


def test_delete_after_write_runs_in_order(tmp_path) -> None:
    writer = FileWriter(max_pending=8)
    gate = blocked(writer)
    writer.write(tmp_path / "a.kv", torch.ones(4))
    writer.delete(tmp_path / "a.kv")
    writer.write(tmp_path / "b.kv", torch.ones(4))
    writer.delete(tmp_path / "b.kv")
    writer.write(tmp_path / "b.kv", torch.full((4,), 2.0))  # written again after its delete
    assert writer.pending(tmp_path / "a.kv") is None
    gate.set()
    writer.flush()
    assert not (tmp_path / "a.kv").exists()
    assert (tmp_path / "b.kv").read_bytes() == torch.full((4,), 2.0).numpy().tobytes()
    writer.close()


def test_queued_writes_are_bounded(tmp_path) -> None:
    writer = FileWriter(max_pending=2)
    for i in range(6):
        writer.write(tmp_path / f"{i}.kv", torch.full((1024,), float(i)))
        assert len(writer._pending) <= 2
    writer.close()
    assert len(list(tmp_path.iterdir())) == 6


def test_a_failed_write_leaves_no_file_and_is_counted(tmp_path) -> None:
    writer = FileWriter(max_pending=4)
    writer.write(tmp_path / "missing-dir" / "a.kv", torch.ones(4))
    writer.flush()
    assert writer.failed == 1 and not (tmp_path / "missing-dir").exists()
    writer.close()
