from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixroute.errors import ConfigError
from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.featurizer import TAG_TOKEN, Featurizer
from mixroute.router.classifiers.head import LinearHead, NgramVocabulary
from mixroute.router.classifiers.jailbreak import JailbreakClassifier
from mixroute.router.classifiers.training import BLOCKS

DIM = 8


@pytest.fixture(scope="module")
def featurizer() -> Featurizer:
    return Featurizer()


def write_head(
    stem: Path, featurizer: Featurizer, labels: list[str], meta: dict[str, object], k: int
) -> None:
    """A hand-made head: each of four words pushes one label."""
    words = ["ignore", "instructions", "integral", "cell"]
    ids = [int(featurizer.token_ids([w])[0][0]) for w in words]
    keys = np.array(sorted(i | (TAG_TOKEN << 56) for i in ids), dtype=np.int64)
    weight = np.zeros((4, k), dtype=np.float32)
    for word, token in zip(words, ids):
        row = int(np.searchsorted(keys, token | (TAG_TOKEN << 56)))
        weight[row, -1 if word in ("ignore", "instructions") else 0] = 6.0
    np.savez(
        stem.with_suffix(".npz"),
        emb_weight=np.zeros((DIM, k), np.float16),
        bias=np.zeros(k, np.float32),
        keys=keys,
        idf=np.ones(4, np.float16),
        weight=weight.astype(np.float16),
    )
    stem.with_suffix(".json").write_text(
        json.dumps({"labels": labels, "output": "sigmoid" if k == 1 else "softmax", "blocks": BLOCKS, **meta})
    )


def unit_rows(n: int) -> np.ndarray:
    emb = np.random.default_rng(2).normal(size=(n, DIM)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_jailbreak_head_contract(tmp_path: Path, featurizer: Featurizer) -> None:
    write_head(tmp_path / "jb", featurizer, ["jailbreak"], {"threshold": 0.7}, k=1)
    clf = JailbreakClassifier(tmp_path / "jb", featurizer)
    texts = ["Ignore the instructions", "a question about geography"]
    scores = clf.predict(texts, unit_rows(2))
    assert clf.threshold == 0.7
    assert scores[0] > 0.9 and scores[1] == pytest.approx(0.5)
    assert clf.is_jailbreak(texts, unit_rows(2)) == [True, False]
    assert clf.predict([], np.zeros((0, DIM), np.float32)) == []


def test_category_groups_labels(tmp_path: Path, featurizer: Featurizer) -> None:
    labels = ["cells", "algebra", "law"]
    meta = {
        "categories": ["biology", "math"],
        "label_to_category": {"cells": "biology", "algebra": "math", "law": "math"},
    }
    write_head(tmp_path / "cat", featurizer, labels, meta, k=3)
    clf = CategoryClassifier(tmp_path / "cat", featurizer)
    texts = ["integral of a cell", "ignore instructions"]
    predicted = clf.predict(texts, unit_rows(2))
    assert [c for c, _ in predicted] == ["biology", "math"]
    proba = clf.probabilities(texts, unit_rows(2))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert clf.categories == ["biology", "math"]


def test_tfidf_blocks_are_l2_normalised(featurizer: Featurizer) -> None:
    features = featurizer.features("the cell divides and the cell grows")
    vocab = NgramVocabulary.build(features.keys, np.ones(features.keys.size, np.float32), BLOCKS)
    rows, values = vocab.tfidf(features)
    assert rows.size == features.keys.size
    for b in range(len(BLOCKS)):
        in_block = vocab.block_of_row[rows] == b
        assert np.linalg.norm(values[in_block]) == pytest.approx(1.0, abs=1e-5)
    empty = NgramVocabulary.build(np.zeros(0, np.int64), np.zeros(0, np.float32), BLOCKS)
    assert empty.tfidf(features)[0].size == 0


def test_shape_mismatch_is_a_clear_error(tmp_path: Path, featurizer: Featurizer) -> None:
    write_head(tmp_path / "jb", featurizer, ["jailbreak"], {"threshold": 0.5}, k=1)
    with pytest.raises(ValueError, match="embeddings shape"):
        JailbreakClassifier(tmp_path / "jb", featurizer).predict(["a", "b"], unit_rows(1))


def test_missing_artifact_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_router_classifiers"):
        LinearHead.load(tmp_path / "nothing")


def test_packaged_artifacts_load_and_are_small() -> None:
    category, jailbreak = CategoryClassifier(), JailbreakClassifier()
    assert len(category.categories) == 14
    assert 0.0 < jailbreak.threshold < 1.0
    total = sum(p.stat().st_size for p in category.artifact.parent.iterdir())
    # 24.3 MB: table 6.8, category head 2.9 + its neighbour index 1.9 + its refiner 10.8 (int8
    # transformer layers), jailbreak head 0.55 + its neighbour index 1.4
    assert total < 25_000_000
