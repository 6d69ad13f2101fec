"""What PII screening costs per character, on ordinary and on digit-dense text.

    python3 bench/pii_cost.py            # writes bench/results/pii-cost.md

Screening is the one router signal whose cost grows with the request's text (the embedding
and the sentence scan read at most 8,000 characters), so `pii.max_chars` bounds what one
request can cost. This times `PiiDetector.detect_many` with every type on 8,000-character texts of
several shapes, and on batches of short messages of 8,000 characters in all (the median
of --reps), then a whole `pii.max_chars` request of the costliest shape per character,
in pieces or batches as the router screens it (`runner.pii_pieces`).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from mixroute.router.classifiers import PiiDetector
from mixroute.router.config import PiiConfig
from mixroute.router.signals.runner import pii_pieces

CHARS = 8000


def shapes(rng: random.Random) -> dict[str, Callable[[], str]]:
    def digits(n: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(n))

    def fill(make: Callable[[], str], sep: str) -> str:
        parts: list[str] = []
        while sum(map(len, parts)) + len(sep) * len(parts) < CHARS:
            parts.append(make())
        return sep.join(parts)[:CHARS]

    words = ["call", "me", "at", "John", "Smith", "in", "Paris", "123", "4567", "+1", "(555)"]
    return {
        "prose (no PII)": lambda: fill(lambda: rng.choice(PROSE), " "),
        "prose with PII every ~300 characters": lambda: fill(
            lambda: rng.choice(PROSE) + " " + rng.choice(PII_SENTENCES), " "
        ),
        "one run of digits": lambda: digits(CHARS),
        "4-digit groups (1234 5678 ...)": lambda: fill(lambda: digits(4), " "),
        "3-digit groups joined by dashes": lambda: fill(lambda: digits(3), "-"),
        "comma-separated integers": lambda: fill(lambda: str(rng.randint(0, 10**6)), ", "),
        "a list of phone numbers": lambda: fill(
            lambda: f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}", ", "
        ),
        "dotted 2-digit groups (12.34.56 ...)": lambda: fill(lambda: digits(2), "."),
        "phone words and digits": lambda: fill(lambda: rng.choice(words), " "),
        "accented short words (Ää Ää ...)": lambda: fill(lambda: "Ää", " "),
    }


def message_shapes(rng: random.Random) -> dict[str, Callable[[], str]]:
    """One short message each: a request of many of them is screened in batches of up to
    8,000 characters (`detect_many`, one budget for phonenumbers and NER per batch)."""
    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Quito", "Dublin", "Hanoi"]
    return {
        "messages: a place and a number (in Oslo 12)": lambda: f"in {rng.choice(cities)} {rng.randint(1, 999)}",
        "messages: a 7-digit reference (ref 4821937)": lambda: f"ref {rng.randint(10**6, 10**7 - 1)}",
        "messages: an IPv4 address": lambda: ".".join(str(rng.randint(1, 255)) for _ in range(4)),
    }


def batch_of(make: Callable[[], str]) -> list[str]:
    """Messages of `make` up to CHARS characters in all."""
    out: list[str] = []
    while sum(map(len, out)) < CHARS:
        out.append(make())
    return out[:-1]


PROSE = [
    "The committee reviewed the quarterly figures and asked for a clearer breakdown of costs.",
    "Photosynthesis turns light into chemical energy stored in sugars.",
    "In 1848 revolutions spread across much of Europe, though most were put down within a year.",
    "A binary search halves the interval at every step, so it needs logarithmic time.",
    "Please summarise the attached contract and list any clauses about termination.",
]
PII_SENTENCES = [
    "My SSN is 078-05-1120.",
    "Reach me at jane.doe@example.com or 212-555-0187.",
    "Card 4111 1111 1111 1111 expires next year.",
    "Send it to Maria Gonzalez at 10.0.0.12.",
    "IBAN DE89 3704 0044 0532 0130 00, please.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pii-cost.md"))
    args = parser.parse_args()
    rng = random.Random(2026)
    detector = PiiDetector()
    detector.load()
    detector.detect("warm up: call 212-555-0187, mail a@b.co, Maria in Paris")
    rows: list[tuple[str, float, float, int]] = []
    long_texts = shapes(rng)
    makers = {
        **{name: (lambda make=make: [make()]) for name, make in long_texts.items()},
        **{name: (lambda make=make: batch_of(make)) for name, make in message_shapes(rng).items()},
    }
    for name, make_batch in makers.items():
        batches = [make_batch() for _ in range(args.reps)]
        times, found = [], 0
        for texts in batches:
            start = time.perf_counter()
            found = sum(map(len, detector.detect_many(texts)))
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1e3
        us_per_char = ms * 1e3 / sum(map(len, batches[0]))
        rows.append((name, ms, us_per_char, found))
        print(f"{name:45s} {ms:8.1f} ms  {us_per_char:5.1f} us/char  {found} entities", flush=True)
    worst_name = max(rows, key=lambda r: r[2])[0]
    limit = PiiConfig().max_chars
    make_batch = makers[worst_name]
    whole: list[str] = []
    while sum(map(len, whole)) < limit:
        whole.extend(make_batch())
    start = time.perf_counter()
    if worst_name in long_texts:  # one long text: the router's pieces
        for _, piece, _ in pii_pieces(" ".join(whole)[:limit]):
            detector.detect(piece)
    else:  # many messages: the router's batches of up to CHARS characters
        batch: list[str] = []
        for text in whole:
            if sum(map(len, batch)) + len(text) > CHARS:
                detector.detect_many(batch)
                batch = []
            batch.append(text)
        detector.detect_many(batch)
    whole_s = time.perf_counter() - start
    print(f"whole request of {limit} characters ({worst_name}): {whole_s:.1f} s", flush=True)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "# PII screening cost per character",
        "",
        (
            f"`python3 bench/pii_cost.py` at {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}."
        ),
        "",
        (
            f"`PiiDetector.detect_many` with every type on one {CHARS}-character text, or on short messages "
            f"of about {CHARS} characters in all (one batch, as the router screens a request's messages); "
            f"median of {args.reps}."
        ),
        "",
        "| text | ms per batch | us per character | entities found |",
        "|---|---|---|---|",
        *(f"| {name} | {ms:.1f} | {us:.1f} | {found} |" for name, ms, us, found in rows),
        "",
        (
            f"A whole request at the default `pii.max_chars` ({limit} characters) of the costliest shape "
            f"({worst_name}), screened in the router's pieces or batches one after another: **{whole_s:.1f} s** "
            "of one core. Each is its own turn on the signal threads (or in the screening child), so other "
            "requests run between them."
        ),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
