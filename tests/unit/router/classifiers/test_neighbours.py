from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixroute.errors import ConfigError
from mixroute.router.classifiers.category import CategoryClassifier
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.neighbours import NeighbourIndex
from mixroute.router.classifiers.training import (
    Corpus,
    HeadSpec,
    build_vocabulary,
    fit_head,
    neighbour_vocabulary,
    neighbour_votes,
    predict_head,
    sparse_matrix,
)

from .test_head import unit_rows, write_head

TEXTS = [
    "the mitochondria is the powerhouse of the cell",  # biology
    "cell membranes let water through by osmosis",  # biology
    "solve the quadratic equation for x",  # math
    "the derivative of a polynomial equation",  # math
    "a contract needs offer acceptance and consideration",  # law
]
LABELS = np.array([0, 0, 1, 1, 2])


class ToyEmbedder:
    def __init__(self, featurizer: Featurizer) -> None:
        self.featurizer = featurizer

    def encode(self, texts: list[str]) -> np.ndarray:
        return unit_rows(len(texts))


@pytest.fixture(scope="module")
def corpus(featurizer: Featurizer) -> Corpus:
    return Corpus.build(TEXTS, ToyEmbedder(featurizer))


def index_over(corpus: Corpus, labels: np.ndarray, num_classes: int, k: int, temperature: float) -> NeighbourIndex:
    """An index of every row of `corpus`, as the training script builds one."""
    rows = np.arange(len(corpus))
    spec = HeadSpec((1000, 1000), l2=1e-6, min_df=1)
    head_vocabulary = build_vocabulary(corpus, rows, spec)
    pool = sparse_matrix(corpus, rows, head_vocabulary)
    vocabulary, _ = neighbour_vocabulary(head_vocabulary, pool, max_df=1.0)
    return NeighbourIndex.build(
        vocabulary, sparse_matrix(corpus, rows, vocabulary), labels, num_classes, k, temperature
    )


def toy_index(corpus: Corpus, k: int = 2, temperature: float = 0.05) -> NeighbourIndex:
    return index_over(corpus, LABELS, 3, k, temperature)


def test_similarities_are_cosines_and_survive_save_load(tmp_path: Path, corpus: Corpus) -> None:
    index = toy_index(corpus)
    matrix = sparse_matrix(corpus, np.arange(len(corpus)), index.vocabulary)
    expected = (matrix @ matrix.T).toarray()
    for i, features in enumerate(corpus.features):
        np.testing.assert_allclose(index.similarities(features), expected[i], atol=2e-2)
        assert index.similarities(features).argmax() == i  # itself first
    index.save(tmp_path / "nn")
    loaded = NeighbourIndex.load(tmp_path / "nn", 3, 2, 0.05)
    np.testing.assert_allclose(
        loaded.similarities(corpus.features[2]), index.similarities(corpus.features[2]), atol=1e-3
    )  # idf saved as float16


def test_vote_follows_nearest_rows(featurizer: Featurizer, corpus: Corpus) -> None:
    index = toy_index(corpus)
    texts = ["the cell and its mitochondria", "an equation for x", "zzzz qqqq"]
    votes = index.vote([featurizer.features(t) for t in texts])
    assert votes.shape == (3, 3)
    np.testing.assert_allclose(votes.sum(axis=1), 1.0, rtol=1e-6)
    assert votes[0].argmax() == 0 and votes[1].argmax() == 1
    np.testing.assert_allclose(votes[2], 1 / 3)  # no shared n-gram: no opinion
    assert index.similarities(featurizer.features(texts[2])) is None


def test_batch_votes_match_the_index(featurizer: Featurizer, corpus: Corpus) -> None:
    """The training script chooses k / temperature with `neighbour_votes` on a dense
    similarity matrix; the router runs `NeighbourIndex.vote`: they must agree."""
    index = toy_index(corpus, k=3, temperature=0.1)
    queries = [featurizer.features(t) for t in ["cells use osmosis", "equation of a polynomial"]]
    dense = np.stack([index.similarities(q) for q in queries])
    np.testing.assert_allclose(
        neighbour_votes(dense, LABELS, 3, 3, 0.1), index.vote(queries), atol=1e-6
    )


def test_neighbour_vocabulary_drops_common_ngrams(corpus: Corpus) -> None:
    rows = np.arange(len(corpus))
    head_vocabulary = build_vocabulary(corpus, rows, HeadSpec((1000, 1000), l2=1e-6, min_df=1))
    pool = sparse_matrix(corpus, rows, head_vocabulary)
    kept, columns = neighbour_vocabulary(head_vocabulary, pool, max_df=0.3)
    df = np.diff(pool.tocsc().indptr)[columns]
    assert kept.keys.size == columns.size > 0
    assert (df <= 0.3 * len(corpus)).all()
    the = [f for f in corpus.features[0].keys if f in head_vocabulary.keys]
    assert not set(kept.keys) >= set(the)  # "the" (in 3 of 5 texts) is gone


def test_corrupt_index_is_a_clear_error(tmp_path: Path, corpus: Corpus) -> None:
    toy_index(corpus).save(tmp_path / "nn")
    with np.load(tmp_path / "nn.npz") as arrays:
        broken = dict(arrays)
    broken["indptr"] = broken["indptr"][:-1]
    np.savez(tmp_path / "bad.npz", **broken)
    with pytest.raises(ConfigError, match="inconsistent"):
        NeighbourIndex.load(tmp_path / "bad", 3, 2, 0.05)
    with pytest.raises(ConfigError, match="label or row out of range"):
        NeighbourIndex.load(tmp_path / "nn", 2, 2, 0.05)
    with pytest.raises(ConfigError, match="train_router_classifiers"):
        NeighbourIndex.load(tmp_path / "missing", 3, 2, 0.05)


def category_with_extras(
    tmp_path: Path, featurizer: Featurizer, corpus: Corpus, extras: dict[str, object]
) -> CategoryClassifier:
    toy_index(corpus).save(tmp_path / "cat_nn")
    meta = {
        "categories": ["biology", "math", "law"],
        "label_to_category": {"cells": "biology", "algebra": "math", "law": "law"},
    }
    write_head(tmp_path / "cat", featurizer, ["cells", "algebra", "law"], {**meta, **extras}, k=3)
    return CategoryClassifier(tmp_path / "cat", featurizer)


def test_category_blends_the_vote_and_calibrates(
    tmp_path: Path, featurizer: Featurizer, corpus: Corpus
) -> None:
    text = ["a contract needs offer and acceptance"]  # the toy head has no law word: uniform
    plain = category_with_extras(tmp_path, featurizer, corpus, {})
    np.testing.assert_allclose(plain.probabilities(text, unit_rows(1)), 1 / 3, rtol=1e-5)
    neighbours = {"artifact": "cat_nn", "k": 2, "temperature": 0.05, "weight": 0.5}
    blended = category_with_extras(tmp_path, featurizer, corpus, {"neighbours": neighbours})
    assert blended.predict(text, unit_rows(1))[0][0] == "law"
    proba = blended.probabilities(text, unit_rows(1))[0]
    assert proba[2] == pytest.approx(0.5 / 3 + 0.5, abs=1e-4)
    calibration = {"offsets": [0.0, 3.0, 0.0], "temperature": 0.5}
    shifted = category_with_extras(
        tmp_path, featurizer, corpus, {"neighbours": neighbours, "calibration": calibration}
    )
    calibrated = shifted.probabilities(text, unit_rows(1))[0]
    expected = np.exp((np.log(proba) + [0.0, 3.0, 0.0]) / 0.5)
    np.testing.assert_allclose(calibrated, expected / expected.sum(), rtol=1e-4)
    assert shifted.predict(text, unit_rows(1))[0][0] == "math"


@pytest.mark.parametrize(
    ("extras", "match"),
    [
        ({"calibration": {"offsets": [0.0], "temperature": 1.0}}, "3 offsets"),
        ({"calibration": {"offsets": [0.0, 0.0, 0.0], "temperature": 0.0}}, "temperature > 0"),
        ({"neighbours": {"artifact": "cat_nn", "k": 2}}, "bad neighbours/calibration"),
        (
            {"neighbours": {"artifact": "cat_nn", "k": 2, "temperature": 0.1, "weight": 2.0}},
            "weight must be",
        ),
    ],
)
def test_bad_category_extras_are_clear_errors(
    tmp_path: Path, featurizer: Featurizer, corpus: Corpus, extras: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        category_with_extras(tmp_path, featurizer, corpus, extras).load()


def test_group_loss_needs_groups_and_fits(corpus: Corpus) -> None:
    rows = np.arange(len(corpus))
    spec = HeadSpec(
        (1000, 1000), l2=1e-6, min_df=1, epochs=30, lr=0.05, batch_size=2, group_loss=4.0
    )
    vocabulary = build_vocabulary(corpus, rows, spec)
    labels = np.array([0, 1, 2, 3, 4])  # every text its own label; labels 0, 1 form group 0
    groups = np.array([0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="group"):
        fit_head(corpus, rows, labels, 5, vocabulary, spec)
    fitted = fit_head(corpus, rows, labels, 5, vocabulary, spec, groups)
    proba = predict_head(fitted, corpus, rows)
    assert (proba.argmax(axis=1) == labels).all()
    group_proba = np.stack(
        [proba[:, :2].sum(axis=1), proba[:, 2], proba[:, 3], proba[:, 4]], axis=1
    )
    assert (group_proba[np.arange(5), groups] > 0.5).all()
