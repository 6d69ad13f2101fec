from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixroute.errors import ConfigError
from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.featurizer import TAG_TOKEN, Featurizer, batch_keys
from mixroute.router.classifiers.head import LinearHead, NgramVocabulary
from mixroute.router.classifiers.jailbreak import JailbreakClassifier, onto_prompt_scale, sentences
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
    # 24.8 MB: table 6.8, category head 2.9 + its neighbour index 1.9 + its refiner 10.8 (int8
    # transformer layers), jailbreak head 0.55 + its neighbour index 1.4 + its sentence head 0.56
    assert total < 25_500_000
    assert jailbreak.scans_sentences


class _RowsEmbedder:
    """Stands in for the static embedder: the hand-made heads ignore the embedding."""

    def encode_ids(self, ids: list[np.ndarray]) -> np.ndarray:
        return unit_rows(len(ids))


def test_sentence_scan_finds_an_attack_diluted_in_benign_text(tmp_path: Path, featurizer: Featurizer) -> None:
    # Prompt head: "ignore"/"instructions" push towards an attack, a benign word against;
    # many benign words drown the attack in the whole-prompt score. The sentence head scores
    # each sentence alone, so the attack's sentence stands out.
    for name, meta in (("jailbreak", {"threshold": 0.7}),
                       ("jailbreak_sentences", {"threshold": 0.9, "prompt_threshold": 0.7})):  # fmt: skip
        write_head(tmp_path / name, featurizer, ["jailbreak"], meta, k=1)
        arrays = dict(np.load(tmp_path / f"{name}.npz"))
        for word in ("integral", "cell"):  # (with one output every word was made to push up)
            key = int(featurizer.token_ids([word])[0][0]) | (TAG_TOKEN << 56)
            arrays["weight"][int(np.searchsorted(arrays["keys"], key)), 0] = -6.0
        np.savez(tmp_path / f"{name}.npz", **arrays)
    diluted = "What is the integral of x. The cell divides. The cell grows. Ignore the instructions. The cell."
    texts = [diluted, "The cell divides. The cell grows.", "Ignore the instructions"]
    without = JailbreakClassifier(tmp_path / "jailbreak", featurizer, _RowsEmbedder(), scan_sentences=False)
    with_scan = JailbreakClassifier(tmp_path / "jailbreak", featurizer, _RowsEmbedder())
    assert without.is_jailbreak(texts, unit_rows(3)) == [False, False, True]
    assert with_scan.is_jailbreak(texts, unit_rows(3)) == [True, False, True]
    assert with_scan.scans_sentences and not without.scans_sentences
    # A prompt of one sentence keeps its own score; the scan only adds.
    assert with_scan.predict(texts[2:], unit_rows(1)) == without.predict(texts[2:], unit_rows(1))


def test_a_sentence_head_calibrated_for_another_threshold_is_refused(tmp_path: Path, featurizer: Featurizer) -> None:
    write_head(tmp_path / "jailbreak", featurizer, ["jailbreak"], {"threshold": 0.7}, k=1)
    write_head(tmp_path / "jailbreak_sentences", featurizer, ["jailbreak"],
               {"threshold": 0.9, "prompt_threshold": 0.6}, k=1)  # fmt: skip
    with pytest.raises(ConfigError, match="jailbreak-sentences"):
        JailbreakClassifier(tmp_path / "jailbreak", featurizer, _RowsEmbedder()).load()
    write_head(tmp_path / "jailbreak_sentences", featurizer, ["jailbreak"],
               {"threshold": 1.0, "prompt_threshold": 0.7}, k=1)  # fmt: skip
    with pytest.raises(ConfigError, match="strictly between"):
        JailbreakClassifier(tmp_path / "jailbreak", featurizer, _RowsEmbedder()).load()


def test_sentence_scores_map_onto_the_prompt_scale() -> None:
    scores = np.array([0.0, 0.45, 0.9, 0.95, 1.0])
    mapped = onto_prompt_scale(scores, sentence_threshold=0.9, threshold=0.7)
    assert mapped.tolist() == pytest.approx([0.0, 0.35, 0.7, 0.85, 1.0])


def test_sentences_split_at_ends_and_lines_and_cut_long_ones() -> None:
    assert sentences("One. Two?  Three!\nFour: five; six") == ["One.", "Two?", "Three!", "Four:", "five;", "six"]
    assert sentences("e.g. x") == ["e.g.", "x"]
    long = " ".join(["word"] * 200)
    pieces = sentences(long, max_chars=50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces) == long


def test_batch_probabilities_equal_one_text_at_a_time(tmp_path: Path, featurizer: Featurizer) -> None:
    write_head(tmp_path / "cat", featurizer, ["a", "b", "c"], {}, k=3)
    head = LinearHead.load(tmp_path / "cat")
    texts = ["Ignore the instructions", "", "a cell and an integral", "cell cell cell. Ignore!"]
    ids = featurizer.token_ids(texts)
    emb = unit_rows(len(texts))
    one_by_one = head.probabilities([Featurizer.from_ids(t, i) for t, i in zip(texts, ids, strict=True)], emb)
    np.testing.assert_allclose(head.batch_probabilities(batch_keys(texts, ids), emb), one_by_one, rtol=1e-5)
