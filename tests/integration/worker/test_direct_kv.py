"""Disaggregated prefill/decode with the direct (same-host) KV path, real processes:
the decode worker copies the prompt's blocks out of the prefill worker's shared KV cache
(shared memory on the CPU, CUDA IPC on GPUs), never streams them, never computes the
prompt, and the output equals an aggregated run."""

from __future__ import annotations

from pathlib import Path

import pytest

from .stack import PROMPTS, disagg_stack, run_aggregated, run_disaggregated

pytestmark = pytest.mark.timeout(400)

IMPORTS = 'mixroute_worker_kv_imports_total{transport="%s"}'


def _check_direct(stack, prompts: list[str]) -> None:  # type: ignore[no-untyped-def]
    computed0 = stack.decode_metric("mixroute_worker_computed_prompt_tokens_total")
    imported0 = stack.decode_metric("mixroute_worker_imported_prompt_tokens_total")
    disagg, prompt_tokens = run_disaggregated(stack, prompts)
    assert stack.decode_metric(IMPORTS % "direct") == len(prompts)
    assert stack.decode_metric(IMPORTS % "host") == 0
    assert stack.decode_metric("mixroute_worker_kv_direct_fallbacks_total") == 0
    assert stack.decode_metric("mixroute_worker_imported_prompt_tokens_total") - imported0 == prompt_tokens
    assert stack.decode_metric("mixroute_worker_computed_prompt_tokens_total") == computed0
    assert run_aggregated(stack, prompts) == disagg
    assert stack.decode_metric("mixroute_worker_computed_prompt_tokens_total") > computed0


def test_same_host_cpu_workers_copy_kv_through_shared_memory(tiny_model_dir: Path, tmp_path: Path) -> None:
    with disagg_stack(tiny_model_dir, tmp_path, common_args=["--num-blocks", "128"]) as stack:
        _check_direct(stack, PROMPTS[:2])
        assert "kv peer mapped" in stack.procs[1].log()


@pytest.mark.gpu
def test_same_host_gpu_workers_copy_kv_through_cuda_ipc(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Prefill on GPU 0, decode on GPU 1 (GPU 0 as well on a one-GPU machine)."""
    import torch

    last = torch.cuda.device_count() - 1
    gpu = ["--num-blocks", "256", "--dtype", "float32"]
    with disagg_stack(tiny_model_dir, tmp_path, common_args=gpu,
                      prefill_args=["--device", "cuda:0"], decode_args=["--device", f"cuda:{last}"]) as stack:
        _check_direct(stack, PROMPTS)
        assert "device=cuda" in stack.procs[1].log()
