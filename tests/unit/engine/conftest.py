from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch

from mixroute.engine.config import EngineConfig
from mixroute.engine.llm_engine import LLMEngine
from mixroute.protocol.messages import (
    GenerateRequest,
    KvCleared,
    KvEvent,
    KvRemoved,
    KvStored,
    SamplingParams,
)
from mixroute.testing.tiny_model import build_tiny_model

ARCHS: tuple[Literal["llama", "qwen2"], ...] = ("llama", "qwen2")
MAX_TOKENS = 10


@pytest.fixture(autouse=True, scope="package")
def _one_thread() -> Iterator[None]:
    # The CI box has 2 cores shared by many processes; OpenMP spinning across 2 threads
    # makes tiny matmuls 10x slower there.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ARCHS}


class Reference:
    """Greedy continuations from HF transformers `generate`, each prompt alone, memoized."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        from transformers import AutoModelForCausalLM

        self.models = {a: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for a, p in dirs.items()}
        self.cache: dict[tuple[str, tuple[int, ...], int], list[int]] = {}

    def greedy(self, arch: str, prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
        key = (arch, tuple(prompt), max_tokens)
        if key not in self.cache:
            model = self.models[arch]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    max_new_tokens=max_tokens, do_sample=False, pad_token_id=model.config.pad_token_id,
                )
            self.cache[key] = out[0, len(prompt):].tolist()
        return self.cache[key]


@pytest.fixture(scope="session")
def reference(tiny_dirs: dict[str, Path]) -> Reference:
    return Reference(tiny_dirs)


def make_prompts(n: int, seed: int, min_len: int = 1, max_len: int = 70, prefix: list[int] | None = None) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = prefix or []
    return [prefix + [rng.randrange(3, 440) for _ in range(rng.randrange(min_len, max_len + 1))] for _ in range(n)]


def make_engine(path: Path, **overrides: object) -> LLMEngine:
    return LLMEngine(EngineConfig(model_path=str(path), **overrides))  # type: ignore[arg-type]


def run_batch(
    engine: LLMEngine, prompts: list[list[int]], max_tokens: int = MAX_TOKENS, tag: str = "r", **params: object
) -> tuple[dict[int, list[int]], dict[int, object]]:
    """Submit all prompts at once, step until done; token lists and final usage per prompt."""
    for i, prompt in enumerate(prompts):
        sampling = SamplingParams(max_tokens=max_tokens, **params)  # type: ignore[arg-type]
        engine.add_request(GenerateRequest(request_id=f"{tag}{i}", token_ids=prompt, sampling=sampling))
    tokens: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    usage: dict[int, object] = {}
    for _ in range(10_000):
        if not engine.has_work:
            break
        for request_id, frame in engine.step():
            i = int(request_id[len(tag):])
            tokens[i].extend(frame.token_ids)
            if frame.finish_reason is not None:
                usage[i] = frame.usage
    assert not engine.has_work, "engine did not finish"
    return tokens, usage


def replay(events: list[KvEvent], index: set[int] | None = None) -> set[int]:
    index = set() if index is None else index
    for event in events:
        data = event.data
        if isinstance(data, KvStored):
            index.update(b.block_hash for b in data.blocks)
        elif isinstance(data, KvRemoved):
            index.difference_update(data.block_hashes)
        elif isinstance(data, KvCleared):
            index.clear()
    return index


def assert_clean(engine: LLMEngine, index: set[int]) -> None:
    """No leaked blocks, and the replayed events match the pool's cached set."""
    assert engine.pool.num_free == engine.num_blocks, "blocks leaked"
    assert all(b.ref_count == 0 for b in engine.pool.blocks)
    events = engine.pool.drain_events()
    ids = [e.event_id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert replay(events, index) == engine.pool.cached_hashes()
    assert replay(engine.pool.dump_events()) == engine.pool.cached_hashes()
