"""Direct KV transfer at the engine level: a prefill engine lends held blocks out of its
shared KV cache, a decode engine maps that cache (shared memory on the CPU; a second
process in the worker tests) and imports the copied blocks; the greedy tokens equal an
aggregated run and nothing leaks. CUDA IPC between two GPUs (or within one) at the end."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from mixroute.engine.kv_transfer.peer_kv import DirectKvExport, PeerKv
from mixroute.engine.llm_engine import LLMEngine
from mixroute.errors import EngineError
from mixroute.protocol.messages import GenerateRequest, KvShareInfo, SamplingParams, decoder, encode

from .conftest import assert_clean, make_engine, make_prompts, run_batch

MAX_TOKENS = 8


def prefill(engine: LLMEngine, request_id: str, prompt: list[int]) -> str:
    engine.add_request(GenerateRequest(request_id=request_id, token_ids=prompt, prefill_only=True,
                                       sampling=SamplingParams(max_tokens=MAX_TOKENS)))
    while engine.has_work:
        for _, frame in engine.step():
            if frame.kv_transfer is not None:
                return frame.kv_transfer.transfer_id
    raise AssertionError("prefill produced no handle")


def decode(engine: LLMEngine, request_id: str, prompt: list[int], imported: DirectKvExport) -> list[int]:
    engine.add_request(GenerateRequest(request_id=request_id, token_ids=prompt,
                                       sampling=SamplingParams(max_tokens=MAX_TOKENS)), imported)
    tokens: list[int] = []
    while engine.has_work:
        for _, frame in engine.step():
            tokens.extend(frame.token_ids)
    return tokens


def share_over_wire(engine: LLMEngine) -> KvShareInfo:
    """Through msgpack, as the worker sends it."""
    return decoder(KvShareInfo).decode(encode(engine.share_kv("this-host")))  # type: ignore[no-any-return]


def test_direct_import_matches_aggregated_and_frees_everything(tiny_dirs: dict[str, Path]) -> None:
    prompts = make_prompts(3, seed=71, min_len=17, max_len=60)
    expected = run_batch(make_engine(tiny_dirs["llama"], num_blocks=64), prompts, max_tokens=MAX_TOKENS)[0]
    prefiller = make_engine(tiny_dirs["llama"], num_blocks=64)
    decoder_engine = make_engine(tiny_dirs["llama"], num_blocks=48)
    # Some of the decode cache is busy, so imported blocks land on other ids than the prefill's.
    run_batch(decoder_engine, make_prompts(2, seed=72, min_len=40, max_len=40), max_tokens=2, tag="w")
    # Mapped before any prefill ran: what the prefill writes later shows up in the mapping.
    peer = PeerKv(share_over_wire(prefiller))
    for i, prompt in enumerate(prompts):
        transfer_id = prefill(prefiller, f"p{i}", prompt)
        header = prefiller.lend_kv(transfer_id)
        assert header.transport == "direct" and header.share_id == peer.share_id
        assert len(header.block_ids) == -(-len(prompt) // 16)
        # Writes through the prefill's own views are visible in the mapping (shared memory).
        k0 = prefiller.kv_tensors.layers[0][0][header.block_ids[0]]
        torch.testing.assert_close(peer.tensor[0, 0, header.block_ids[0]], k0, rtol=0, atol=0)
        blocks = peer.copy_blocks(header.block_ids, torch.device("cpu"))
        prefiller.release_kv(transfer_id)
        tokens = decode(decoder_engine, f"d{i}", prompt, DirectKvExport(header=header, blocks=blocks))
        assert tokens == expected[i]
    assert len(prefiller.loans) == 0 and len(prefiller.held) == 0
    assert_clean(prefiller, set())


def test_lent_blocks_fall_back_to_staged_export_and_expire(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["llama"], num_blocks=32)
    prompt = make_prompts(1, seed=73, min_len=40, max_len=40)[0]
    # A borrower whose copy failed pulls the same blocks host-staged: the loan is taken back.
    transfer_id = prefill(engine, "a", prompt)
    lent = engine.lend_kv(transfer_id)
    staged = engine.export_kv(transfer_id)
    assert staged.header.num_blocks == len(lent.block_ids) and len(staged.layers) == engine.model_config.num_layers
    with pytest.raises(KeyError):
        engine.lend_kv(transfer_id)
    # A borrower that died: the loan expires like a hold.
    transfer_id = prefill(engine, "b", prompt)
    engine.lend_kv(transfer_id)
    assert engine.pool.num_free < engine.num_blocks
    deadline = engine.next_hold_deadline()
    assert deadline is not None
    assert engine.expire_held(now=deadline + 1) == 1
    assert_clean(engine, set())


def test_import_checks_the_copied_blocks(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["llama"], num_blocks=32)
    prompt = make_prompts(1, seed=74, min_len=20, max_len=20)[0]
    transfer_id = prefill(engine, "a", prompt)
    header = engine.lend_kv(transfer_id)
    peer = PeerKv(share_over_wire(engine))
    short = peer.copy_blocks(header.block_ids[:1], torch.device("cpu"))
    with pytest.raises(EngineError, match="number of blocks"):
        engine.add_request(GenerateRequest(request_id="x", token_ids=prompt), DirectKvExport(header=header, blocks=short))
    with pytest.raises(EngineError, match="outside"):
        peer.copy_blocks([engine.num_blocks], torch.device("cpu"))
    engine.release_kv(transfer_id)
    assert_clean(engine, set())


# ---- CUDA IPC across processes ----


def _gpu_prefill_child(model_dir: str, device_index: int, prompt: list[int], conn: object) -> None:
    engine = make_engine(Path(model_dir), device="cuda", device_index=device_index, num_blocks=64, dtype="float32")
    transfer_id = prefill(engine, "p", prompt)
    header = engine.lend_kv(transfer_id)
    conn.send((encode(engine.share_kv("h")), encode(header)))  # type: ignore[attr-defined]
    conn.recv()  # the parent has copied the blocks  # type: ignore[attr-defined]
    engine.release_kv(transfer_id)
    conn.send(engine.pool.num_free == engine.num_blocks)  # type: ignore[attr-defined]


@pytest.mark.gpu
def test_cuda_ipc_copy_between_processes_matches_aggregated(tiny_dirs: dict[str, Path]) -> None:
    """The prefill engine in a child process on GPU 0; this process decodes on the last GPU
    (GPU 0 too on a one-GPU machine: IPC within one device)."""
    from mixroute.protocol.messages import KvExportHeader

    last = torch.cuda.device_count() - 1
    prompt = make_prompts(1, seed=75, min_len=50, max_len=50)[0]
    local = make_engine(tiny_dirs["llama"], device="cuda", device_index=last, num_blocks=64, dtype="float32")
    expected = run_batch(local, [prompt], max_tokens=MAX_TOKENS)[0][0]
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_gpu_prefill_child, args=(str(tiny_dirs["llama"]), 0, prompt, theirs))
    child.start()
    try:
        assert ours.poll(120), "prefill child did not answer"
        raw_info, raw_header = ours.recv()
        peer = PeerKv(decoder(KvShareInfo).decode(raw_info))
        header = decoder(KvExportHeader).decode(raw_header)
        assert peer.tensor.device.index == 0
        blocks = peer.copy_blocks(header.block_ids, local.device)
        assert blocks.device == local.device
        del peer  # unmap before the producer exits
        ours.send(b"done")
        assert ours.recv() is True  # the prefill freed every block after the release
        tokens = decode(local, "d", prompt, DirectKvExport(header=header, blocks=blocks))
        assert tokens == expected
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
