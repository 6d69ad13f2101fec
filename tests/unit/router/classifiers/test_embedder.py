"""Static embedder contract, on a small random table (the packaged one: test_signals_real)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixroute.errors import ConfigError
from mixroute.router.classifiers.embedder import Embedder
from mixroute.router.classifiers.featurizer import Featurizer

DIM = 16


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    featurizer = Featurizer()
    stem = tmp_path_factory.mktemp("static") / "table"
    rng = np.random.default_rng(0)
    np.savez(
        stem.with_suffix(".npz"),
        vectors=rng.integers(-127, 128, size=(featurizer.vocab_size, DIM)).astype(np.int8),
        scales=np.full(featurizer.vocab_size, 0.01, np.float32),
        empty=rng.normal(size=DIM).astype(np.float32),
    )
    stem.with_suffix(".json").write_text(json.dumps({"kind": "static", "dim": DIM}))
    return Embedder(stem, featurizer)


def test_contract(embedder: Embedder) -> None:
    texts = ["What is the derivative of x^2?", "Bonjour", "", "a" * 20000]
    emb = embedder.encode(texts)
    assert emb.shape == (4, DIM) and emb.dtype == np.float32 and embedder.dim == DIM
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, DIM)
    with pytest.raises(TypeError):
        embedder.encode("not a list")  # type: ignore[arg-type]


def test_sum_of_token_rows(embedder: Embedder) -> None:
    table = embedder.load()
    ids = embedder.featurizer.token_ids(["the cat sat"])[0]
    expected = table[ids].sum(axis=0)
    np.testing.assert_allclose(embedder.encode(["the cat sat"])[0], expected / np.linalg.norm(expected), rtol=1e-5)
    np.testing.assert_allclose(embedder.encode_ids([ids]), embedder.encode(["the cat sat"]), rtol=1e-6)


def test_missing_table_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_router_classifiers"):
        Embedder(tmp_path / "none").encode(["x"])


def test_batched_ids_embed_as_one_text_at_a_time(embedder: Embedder) -> None:
    texts = ["the cat sat", "", "Bonjour tout le monde", "   ", "東京"]
    ids = embedder.featurizer.token_ids(texts)
    np.testing.assert_allclose(embedder.encode_ids(ids), embedder.encode(texts), rtol=1e-5, atol=1e-6)
    assert embedder.encode_ids([]).shape == (0, DIM)
