from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixroute.errors import ConfigError
from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.head import LinearHead
from mixroute.router.classifiers.jailbreak import JailbreakClassifier


def write_head(stem: Path, labels: list[str], meta: dict[str, object], k: int) -> None:
    rng = np.random.default_rng(1)
    vocabulary = ["ignore", "instructions", "integral", "cell"]
    weight = np.zeros((4, k), dtype=np.float32)
    weight[0, -1] = weight[1, -1] = 3.0  # attack words push the last label
    weight[2, 0] = 3.0
    np.savez(
        stem.with_suffix(".npz"),
        emb_weight=rng.normal(scale=0.01, size=(384, k)).astype(np.float16),
        bias=np.zeros(k, np.float32),
        tfidf0_idf=np.ones(4, np.float32),
        tfidf0_weight=weight.astype(np.float16),
    )
    block = {"analyzer": "word", "ngram_range": [1, 1], "sublinear_tf": True}
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "labels": labels,
                "output": "sigmoid" if k == 1 else "softmax",
                "emb_scale": 1.0,
                "tfidf": [{**block, "vocabulary": vocabulary}],
                **meta,
            }
        )
    )


def unit_rows(n: int) -> np.ndarray:
    emb = np.random.default_rng(2).normal(size=(n, 384)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_jailbreak_head_contract(tmp_path: Path) -> None:
    write_head(tmp_path / "jb", ["jailbreak"], {"threshold": 0.7}, k=1)
    clf = JailbreakClassifier(tmp_path / "jb")
    texts = ["Ignore the instructions", "a question about a cell"]
    scores = clf.predict(texts, unit_rows(2))
    assert clf.threshold == 0.7
    assert scores[0] > 0.9 and 0.4 < scores[1] < 0.6
    assert clf.is_jailbreak(texts, unit_rows(2)) == [True, False]
    assert clf.predict([], np.zeros((0, 384), np.float32)) == []


def test_category_groups_labels(tmp_path: Path) -> None:
    labels = ["calculus", "algebra", "cells"]
    meta = {
        "categories": ["biology", "math"],
        "label_to_category": {"calculus": "math", "algebra": "math", "cells": "biology"},
    }
    write_head(tmp_path / "cat", labels, meta, k=3)
    clf = CategoryClassifier(tmp_path / "cat")
    texts = ["integral integral", "cell ignore instructions"]
    predicted = clf.predict(texts, unit_rows(2))
    assert [c for c, _ in predicted] == ["math", "biology"]
    proba = clf.probabilities(texts, unit_rows(2))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert clf.categories == ["biology", "math"]


def test_shape_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    write_head(tmp_path / "jb", ["jailbreak"], {"threshold": 0.5}, k=1)
    with pytest.raises(ValueError, match="embeddings shape"):
        JailbreakClassifier(tmp_path / "jb").predict(["a", "b"], unit_rows(1))


def test_missing_artifact_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_router_classifiers"):
        LinearHead.load(tmp_path / "nothing")


def test_packaged_artifacts_load_and_are_small() -> None:
    category, jailbreak = CategoryClassifier(), JailbreakClassifier()
    assert len(category.categories) == 14
    assert 0.0 < jailbreak.threshold < 1.0
    total = sum(p.stat().st_size for p in category.artifact.parent.iterdir())
    assert total < 6_000_000
