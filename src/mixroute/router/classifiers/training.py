"""Fitting the heads (training only: scripts/train_router_classifiers.py; the router never
imports this module). numpy + scipy; artifacts are plain npz/json.

A `Corpus` is featurised once (token ids, n-gram keys, static embeddings); a head is
then a vocabulary chosen on its training rows (document frequency, capped per block
like scikit-learn's `max_features`) plus weights from mini-batch Adam on the
L2-regularised (optionally class-weighted) cross-entropy: a logistic regression, in
a few passes over the data instead of the hundreds of full passes of a batch solver.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.router.classifiers.featurizer import (
    CHAR_NGRAMS,
    TAG_CHAR,
    TAG_TOKEN,
    TAG_TOKEN_BIGRAM,
    Featurizer,
    TextFeatures,
    clip_text,
    tag_of,
)
from mixroute.router.classifiers.head import LinearHead, NgramVocabulary

BLOCKS: list[list[int]] = [[TAG_TOKEN, TAG_TOKEN_BIGRAM], [TAG_CHAR + n for n in CHAR_NGRAMS]]
SEED = 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Corpus:
    texts: list[str]
    features: list[TextFeatures]
    emb: np.ndarray  # float32 [n, dim]

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def build(cls, texts: list[str], embedder: Any, featurizer: Featurizer | None = None) -> Corpus:
        started = time.perf_counter()
        featurizer = featurizer or embedder.featurizer
        ids = featurizer.token_ids(texts)
        features = [Featurizer.from_ids(clip_text(t), i) for t, i in zip(texts, ids)]
        emb = embedder.encode_ids(ids) if hasattr(embedder, "encode_ids") else embedder.encode(texts)
        log(f"featurised {len(texts)} texts in {time.perf_counter() - started:.1f}s")
        return cls(list(texts), features, np.asarray(emb, dtype=np.float32))

    @classmethod
    def concat(cls, a: Corpus, b: Corpus) -> Corpus:
        return cls(a.texts + b.texts, a.features + b.features, np.concatenate([a.emb, b.emb]))


@dataclass(frozen=True)
class HeadSpec:
    max_features: tuple[int, int]  # per block: token n-grams, byte n-grams
    l2: float  # penalty on mean loss: (l2 / 2) * |w|^2 (sklearn C ~ 1 / (l2 * n))
    class_weight: str | None = None
    min_df: int = 2
    emb_scale: float = 1.0
    epochs: int = 12
    lr: float = 0.02
    batch_size: int = 512
    # Weight of a second cross-entropy on the groups (categories) the labels sum into,
    # next to the one on the labels (subjects): 0 = subjects only.
    group_loss: float = 0.0


@dataclass
class FittedHead:
    vocabulary: NgramVocabulary
    emb_weight: np.ndarray  # [dim, k]
    weight: np.ndarray  # [F, k]
    bias: np.ndarray  # [k]
    spec: HeadSpec

    def as_head(self, labels: list[str]) -> LinearHead:
        output = "sigmoid" if self.bias.size == 1 else "softmax"
        return LinearHead(labels, output, self.emb_weight, self.bias, self.vocabulary, self.weight, {})


def build_vocabulary(corpus: Corpus, rows: np.ndarray, spec: HeadSpec) -> NgramVocabulary:
    keys = np.concatenate([corpus.features[i].keys for i in rows])
    unique, df = np.unique(keys, return_counts=True)
    keep = df >= spec.min_df
    unique, df = unique[keep], df[keep]
    tags = tag_of(unique)
    chosen = []
    for tags_of_block, cap in zip(BLOCKS, spec.max_features):
        in_block = np.flatnonzero(np.isin(tags, tags_of_block))
        # Most frequent first, ties by key: deterministic, like sklearn's max_features.
        order = np.lexsort((unique[in_block], -df[in_block]))
        chosen.append(in_block[order[:cap]])
    picked = np.sort(np.concatenate(chosen))
    idf = np.log((1.0 + rows.size) / (1.0 + df[picked])) + 1.0
    return NgramVocabulary.build(unique[picked], idf.astype(np.float32), BLOCKS)


def sparse_matrix(corpus: Corpus, rows: np.ndarray, vocabulary: NgramVocabulary) -> Any:
    from scipy.sparse import csr_matrix

    indptr, indices, values = [0], [], []
    for i in rows:
        cols, vals = vocabulary.tfidf(corpus.features[i])
        indices.append(cols)
        values.append(vals)
        indptr.append(indptr[-1] + cols.size)
    return csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.array(indptr)),
        shape=(rows.size, vocabulary.keys.size),
    )


def fit_head(
    corpus: Corpus, rows: np.ndarray, y: np.ndarray, k: int, vocabulary: NgramVocabulary, spec: HeadSpec,
    groups: np.ndarray | None = None,
) -> FittedHead:
    """Mini-batch Adam on the L2-regularised, optionally class-weighted cross-entropy
    (softmax for k > 1, sigmoid for k == 1). numpy + scipy.sparse, deterministic."""
    from scipy.sparse import csr_matrix

    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    y = np.asarray(y, dtype=np.int64)
    emb = corpus.emb[rows] * np.float32(spec.emb_scale)
    csr = sparse_matrix(corpus, rows, vocabulary)
    num_classes = 2 if k == 1 else k
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    if spec.class_weight == "balanced":
        class_weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
        sample_weight = class_weights[y]
    elif spec.class_weight == "groups":
        # Every group (category) weighs the same, whatever its number of labels
        # (subjects): balancing labels instead gives a category with 7 subjects 7x the
        # prior mass of one with 1, which uncertain prompts then fall into.
        if groups is None:
            raise ValueError("class_weight 'groups' needs the group of each row")
        group_counts = np.bincount(groups)
        sample_weight = counts.sum() / (np.count_nonzero(group_counts) * group_counts[groups])
    else:
        sample_weight = np.ones(y.size)
    sample_weight = (sample_weight / sample_weight.mean()).astype(np.float32)
    group_of_label = None
    if spec.group_loss:
        if groups is None:
            raise ValueError("group_loss needs the group of each row")
        group_of_label = np.full(k, -1, dtype=np.int64)
        group_of_label[y] = groups

    params = [
        np.zeros((emb.shape[1], k), np.float32),  # embedding weights
        np.zeros((vocabulary.keys.size, k), np.float32),  # n-gram weights
        np.zeros(k, np.float32),  # bias
    ]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    num_rows = rows.size
    total_steps = spec.epochs * ((num_rows + spec.batch_size - 1) // spec.batch_size)
    step = 0
    for _ in range(spec.epochs):
        order = rng.permutation(num_rows)
        for start in range(0, num_rows, spec.batch_size):
            batch = order[start : start + spec.batch_size]
            xs, xe = csr[batch], emb[batch]
            # Lazy (sparse) Adam on the n-gram rows: only rows this batch touches move,
            # their L2 pull included; the dense update of every row was most of the time.
            cols, local = np.unique(xs.indices, return_inverse=True)
            xs_local = csr_matrix((xs.data, local, xs.indptr), shape=(batch.size, cols.size))
            w_rows = params[1][cols]
            logits = xe @ params[0] + xs_local @ w_rows + params[2]
            if k == 1:
                grad_out = 1.0 / (1.0 + np.exp(-logits[:, 0])) - y[batch]
                grad_out = grad_out[:, None]
            else:
                logits -= logits.max(axis=1, keepdims=True)
                grad_out = np.exp(logits)
                grad_out /= grad_out.sum(axis=1, keepdims=True)
                if spec.group_loss:
                    assert group_of_label is not None and groups is not None
                    # d(-log sum_{j in g} p_j)/dz_j = p_j - p_j [j in g] / p_g
                    in_group = group_of_label[None, :] == groups[batch][:, None]
                    p_group = (grad_out * in_group).sum(axis=1, keepdims=True)
                    group_grad = grad_out - grad_out * in_group / np.maximum(p_group, 1e-12)
                grad_out[np.arange(batch.size), y[batch]] -= 1.0
                if spec.group_loss:
                    grad_out += spec.group_loss * group_grad
            grad_out = (grad_out * (sample_weight[batch] / batch.size)[:, None]).astype(np.float32)
            step += 1
            lr = spec.lr * max(0.05, 1.0 - step / total_steps)
            correction = np.sqrt(1 - beta2**step) / (1 - beta1**step)
            updates = [
                (params[0], xe.T @ grad_out + spec.l2 * params[0], moments[0], squares[0], None),
                (w_rows, np.asarray(xs_local.T @ grad_out) + spec.l2 * w_rows,
                 moments[1][cols], squares[1][cols], cols),
                (params[2], grad_out.sum(axis=0), moments[2], squares[2], None),
            ]
            for index, (p, g, m, v, rows_of) in enumerate(updates):
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                p -= (lr * correction) * m / (np.sqrt(v) + eps)
                if rows_of is not None:
                    params[index][rows_of], moments[index][rows_of], squares[index][rows_of] = p, m, v
    log(
        f"fit {spec}: {num_rows} rows, {vocabulary.keys.size} n-grams, "
        f"{spec.epochs} epochs in {time.perf_counter() - started:.0f}s"
    )
    return FittedHead(
        vocabulary,
        (params[0] * spec.emb_scale).astype(np.float32),
        params[1],
        params[2],
        spec,
    )


def predict_head(fitted: FittedHead, corpus: Corpus, rows: np.ndarray) -> np.ndarray:
    head = fitted.as_head([str(i) for i in range(fitted.bias.size)])
    return head.probabilities([corpus.features[i] for i in rows], corpus.emb[rows])


def quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights with one float scale per output column (~1 byte per weight)."""
    scale = np.abs(weight).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    return np.round(weight / scale).astype(np.int8), scale.astype(np.float32)


def export_head(
    stem: Path, fitted: FittedHead, labels: list[str], extra: dict[str, Any],
    corpus: Corpus, check_rows: np.ndarray,
) -> None:
    arrays: dict[str, np.ndarray] = {
        "emb_weight": fitted.emb_weight.astype(np.float16),
        "bias": fitted.bias.astype(np.float32),
        "keys": fitted.vocabulary.keys,
        "idf": fitted.vocabulary.idf.astype(np.float16),
    }
    if fitted.bias.size > 1:
        # Many outputs: int8 keeps the artifact small; argmax barely moves.
        arrays["weight"], arrays["scale"] = quantize(fitted.weight)
    else:
        # One output compared with a threshold: keep float16 precision.
        arrays["weight"] = fitted.weight.astype(np.float16)
    meta = {
        "labels": labels,
        "output": "sigmoid" if fitted.bias.size == 1 else "softmax",
        "blocks": BLOCKS,
        "embedder": {"kind": "static", "dim": int(fitted.emb_weight.shape[0])},
        **extra,
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(stem.with_suffix(".npz"), **arrays)
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    reference = predict_head(fitted, corpus, check_rows)
    ours = LinearHead.load(stem).probabilities([corpus.features[i] for i in check_rows], corpus.emb[check_rows])
    log(f"exported {stem}.npz/.json; max probability gap after quantisation {np.abs(ours - reference).max():.2e}")


# ---------------------------------------------------------------- nearest neighbours


def neighbour_vocabulary(vocabulary: NgramVocabulary, pool: Any, max_df: float) -> tuple[NgramVocabulary, np.ndarray]:
    """The token n-grams of a head's vocabulary that a neighbour index keeps: those in
    at most `max_df` of the pool's rows (the rest only lengthen posting lists), with the
    head's idf. Returns the vocabulary and the head columns it keeps."""
    from mixroute.router.classifiers.neighbours import NEIGHBOUR_BLOCKS

    df = np.diff(pool.tocsc().indptr)
    in_block = np.isin(tag_of(vocabulary.keys), NEIGHBOUR_BLOCKS[0])
    keep = np.flatnonzero(in_block & (df <= max_df * pool.shape[0]))
    return NgramVocabulary.build(vocabulary.keys[keep], vocabulary.idf[keep], NEIGHBOUR_BLOCKS), keep


def neighbour_votes(similarity: np.ndarray, labels: np.ndarray, num_classes: int, k: int, temperature: float) -> np.ndarray:
    """Batch version of `NeighbourIndex.vote` over a dense [n, num_rows] cosine matrix."""
    k = min(k, similarity.shape[1])
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    sims = np.take_along_axis(similarity, top, axis=1)
    weights = np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature) * (sims > 0)
    out = np.zeros((similarity.shape[0], num_classes))
    np.add.at(out, (np.repeat(np.arange(similarity.shape[0]), k), labels[top].ravel()), weights.ravel())
    empty = ~similarity.any(axis=1)
    out[empty] = 1.0
    return out / out.sum(axis=1, keepdims=True)
