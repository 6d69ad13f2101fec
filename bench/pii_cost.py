"""What PII screening costs per character, on ordinary and on digit-dense text.

    python3 bench/pii_cost.py            # writes bench/results/pii-cost.md

Screening is the one router signal whose cost grows with the request's text (the embedding
and the sentence scan read at most 8,000 characters), so `pii.max_chars` bounds what one
request can cost. This times `PiiDetector.detect` with every type on 8,000-character texts
of several shapes (the median of --reps), then a whole `pii.max_chars` request of the
costliest shape, piece by piece as the router screens it (`runner.pii_pieces`).
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
    }


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
    rows: list[tuple[str, float, int]] = []
    for name, make in shapes(rng).items():
        texts = [make() for _ in range(args.reps)]
        times, found = [], 0
        for text in texts:
            start = time.perf_counter()
            found = len(detector.detect(text))
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1e3
        rows.append((name, ms, found))
        print(f"{name:40s} {ms:8.1f} ms  {ms / CHARS * 1e3:5.1f} us/char  {found} entities", flush=True)
    worst_name, _, _ = max(rows, key=lambda r: r[1])
    limit = PiiConfig().max_chars
    make = shapes(random.Random(7))[worst_name]
    whole = "".join(make() + " " for _ in range(limit // (CHARS + 1) + 1))[:limit]
    start = time.perf_counter()
    for _, piece, _ in pii_pieces(whole):
        detector.detect(piece)
    whole_s = time.perf_counter() - start
    print(f"whole request of {limit} characters ({worst_name}): {whole_s:.1f} s", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# PII screening cost per character",
        "",
        f"`python3 bench/pii_cost.py` at {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        f"`PiiDetector.detect` with every type, one call per {CHARS}-character text, median of {args.reps} texts.",
        "",
        "| text | ms per 8,000 characters | us per character | entities found |",
        "|---|---|---|---|",
        *(f"| {name} | {ms:.1f} | {ms / CHARS * 1e3:.1f} | {found} |" for name, ms, found in rows),
        "",
        f"A whole request at the default `pii.max_chars` ({limit} characters) of the costliest shape "
        f"({worst_name}), screened in the router's pieces one after another: **{whole_s:.1f} s** of one core. "
        "Each piece is its own turn on the signal threads (or in the screening child), so other "
        "requests run between the pieces.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
