"""Sampling parameters: seeds, top-k/top-p, min_tokens, stop tokens, max_tokens."""

from __future__ import annotations

from pathlib import Path

from .conftest import make_engine, make_prompts, run_batch


def test_seeded_sampling_is_reproducible_and_varies(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["llama"])
    prompts = make_prompts(3, seed=71)
    a, _ = run_batch(engine, prompts, max_tokens=12, tag="a", temperature=1.5, seed=123, ignore_eos=True)
    b, _ = run_batch(engine, prompts, max_tokens=12, tag="b", temperature=1.5, seed=123, ignore_eos=True)
    c, _ = run_batch(engine, prompts, max_tokens=12, tag="c", temperature=1.5, seed=124, ignore_eos=True)
    assert a == b
    assert a != c


def test_top_k_one_is_greedy(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["qwen2"])
    prompts = make_prompts(3, seed=72)
    greedy, _ = run_batch(engine, prompts, tag="g")
    topk, _ = run_batch(engine, prompts, tag="k", temperature=0.8, top_k=1)
    tiny_p, _ = run_batch(engine, prompts, tag="p", temperature=0.8, top_p=1e-6)
    assert greedy == topk == tiny_p


def test_stop_tokens_min_tokens_and_max_tokens(tiny_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_dirs["llama"])
    prompt = make_prompts(1, seed=73)[0]
    free, _ = run_batch(engine, [prompt], max_tokens=12, tag="f", ignore_eos=True)
    tokens = free[0]
    assert len(tokens) == 12
    stop = tokens[3]
    stopped, _usage = run_batch(engine, [prompt], max_tokens=12, tag="s", ignore_eos=True, stop_token_ids=(stop,))
    assert stopped[0] == tokens[: tokens.index(stop) + 1]
    delayed, _ = run_batch(engine, [prompt], max_tokens=12, tag="m", ignore_eos=True, stop_token_ids=(stop,), min_tokens=12)
    assert len(delayed[0]) == 12
    assert stop not in delayed[0][:11]
