"""PII part of bench/router_accuracy.py: Presidio-based detection scored on
presidio-evaluator synthetic sentences (per-type precision, recall, F1).

Run it through `python3 bench/router_accuracy.py --part pii [--pii-seed N]`.
"""

from __future__ import annotations

import math
import time
from typing import Any

PII_TYPES = ("US_SSN", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS")
PII_GOALS = {**dict.fromkeys(PII_TYPES, 0.95), "PERSON": 0.90}
# presidio-evaluator labels places GPE / STREET_ADDRESS; Presidio reports LOCATION.
GOLD_TYPE = {"GPE": "LOCATION", "STREET_ADDRESS": "LOCATION"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def run_pii(state: dict[str, Any], seed: int, num_sentences: int) -> None:
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    from mixroute.router.classifiers import PiiDetector

    samples = PresidioSentenceFaker(
        "en_US", lower_case_ratio=0.05, random_seed=seed
    ).generate_new_fake_sentences(num_sentences)
    detector = PiiDetector()
    detector.load()
    counts: dict[str, dict[str, int]] = {}

    def bump(entity: str, key: str) -> None:
        counts.setdefault(entity, {"tp_pred": 0, "pred": 0, "tp_gold": 0, "gold": 0})[key] += 1

    errors: list[dict[str, Any]] = []
    started = time.perf_counter()
    for sample in samples:
        text = sample.full_text
        gold = [
            (GOLD_TYPE.get(s.entity_type, s.entity_type), (s.start_position, s.end_position))
            for s in sample.spans
        ]
        pred = [(e.entity_type, (e.start, e.end)) for e in detector.detect(text)]
        for entity, span in pred:
            bump(entity, "pred")
            if any(g == entity and overlaps(span, gs) for g, gs in gold):
                bump(entity, "tp_pred")
            elif entity in PII_GOALS and len(errors) < 40:
                errors.append(
                    {"kind": "fp", "type": entity, "text": text, "span": text[slice(*span)]}
                )
        for entity, span in gold:
            bump(entity, "gold")
            if any(p == entity and overlaps(span, ps) for p, ps in pred):
                bump(entity, "tp_gold")
            elif entity in PII_GOALS and len(errors) < 40:
                errors.append(
                    {"kind": "fn", "type": entity, "text": text, "span": text[slice(*span)]}
                )
    elapsed = time.perf_counter() - started
    per_type = {}
    for entity in (*PII_TYPES, "PERSON", "LOCATION"):
        c = counts.get(entity, {"tp_pred": 0, "pred": 0, "tp_gold": 0, "gold": 0})
        precision = c["tp_pred"] / c["pred"] if c["pred"] else float("nan")
        recall = c["tp_gold"] / c["gold"] if c["gold"] else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        per_type[entity] = {**c, "precision": precision, "recall": recall, "f1": f1}
        log(f"pii {entity}: P {precision:.3f} R {recall:.3f} F1 {f1:.3f} (gold {c['gold']})")
    state[f"pii_seed{seed}"] = {
        "seed": seed,
        "num_sentences": len(samples),
        "seconds": elapsed,
        "per_type": per_type,
        "errors": errors,
    }


def pii_section(p: dict[str, Any]) -> list[str]:
    lines = [
        f"## PII (presidio-evaluator synthetic sentences, seed {p['seed']})",
        "",
        (
            f"{p['num_sentences']} sentences from `PresidioSentenceFaker('en_US', "
            f"lower_case_ratio=0.05, random_seed={p['seed']})` (its bundled templates). "
            "A prediction is correct when it overlaps a gold span of the same type; "
            "gold GPE/STREET_ADDRESS count as LOCATION (informational, no goal). "
            f"Detection took {p['seconds']:.0f}s in total."
        ),
        "",
        "| type | gold | predicted | precision | recall | F1 | goal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entity, r in p["per_type"].items():
        goal = PII_GOALS.get(entity)
        lines.append(
            f"| {entity} | {r['gold']} | {r['pred']} | {pct(r['precision'])} | "
            f"{pct(r['recall'])} | {r['f1']:.3f} | {goal if goal else '-'} |"
        )
    return lines + [""]
