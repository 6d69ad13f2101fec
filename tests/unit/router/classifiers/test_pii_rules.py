"""PII rules that need no Presidio/spaCy model load: post-processing, NER windows, type scope."""

from __future__ import annotations

import pytest

from mixroute.router.classifiers.pii import PiiDetector, PiiEntity, resolve_overlaps
from mixroute.router.classifiers.pii_budget import BATCH_SHARE, NER_CALL_TOKENS
from mixroute.router.classifiers.pii_nlp import (
    DEFAULT_NER_BUDGET,
    budgeted,
    is_name_like,
    ner_candidates,
    windows,
)
from mixroute.router.classifiers.pii_recognizers import PHONE_MATCHER_CHARS, email_windows, luhn_ok
from mixroute.router.config import PiiConfig, parse_config
from mixroute.router.signals.pii_scope import actionable_pii_types


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("2223000048400011")  # Mastercard 2-series test number
    assert not luhn_ok("4111111111111112")


def test_overlaps_keep_the_strongest_and_the_most_specific() -> None:
    text = "card 4920868288909319 now"
    card = PiiEntity("CREDIT_CARD", 5, 21, 0.5)
    phone = PiiEntity("PHONE_NUMBER", 5, 21, 0.5)
    weak = PiiEntity("US_BANK_NUMBER", 5, 21, 0.4)
    assert resolve_overlaps(text, [phone, weak, card]) == [card]


def test_person_with_digits_and_timestamp_phones_are_dropped() -> None:
    text = "Dr. Smith, 40187 263 Main St, at 10:01:30.375423"
    street = PiiEntity("PERSON", 11, 24, 0.85)
    name = PiiEntity("PERSON", 4, 9, 0.85)
    fraction = PiiEntity("PHONE_NUMBER", text.index("30.375423"), len(text), 0.5)
    assert resolve_overlaps(text, [street, name, fraction]) == [name]


def test_windows_merge_and_clip() -> None:
    flags = [False] * 20
    flags[1] = flags[4] = flags[15] = True
    assert windows(flags, 2) == [(0, 7), (13, 18)]
    assert windows([False] * 5, 2) == []
    assert windows([True], 8) == [(0, 1)]


def test_name_like_tokens_and_ner_candidates() -> None:
    import spacy

    nlp = spacy.blank("en")
    doc = nlp("The answer, said Ebba Kaczmarek to a NASA clerk in Paris, is B. What now?")
    assert [t.text for t in doc if is_name_like(t)] == ["Ebba", "Kaczmarek", "Paris"]
    # A capitalised sentence opener is a candidate only when a name-like word, a comma or
    # a colon follows it.
    doc = nlp("Statements follow. Lukas, come here. Anna Berg left. Consider the Fourteenth Amendment.")
    flagged = [t.text for t, flag in zip(doc, ner_candidates(doc)) if flag]
    assert flagged == ["Lukas", "Anna", "Berg", "Fourteenth", "Amendment"]


def test_ner_budget_keeps_the_first_windows() -> None:
    assert budgeted([(0, 7), (10, 17), (20, 27)], 14) == [(0, 7), (10, 17)]
    assert budgeted([(0, 7)], 6) == []


def test_only_policy_forbidden_types_are_actionable() -> None:
    config = parse_config(
        """
default_model: a
default_endpoint: http://127.0.0.1:9
models:
  a: {pii_policy: {allow_by_default: false, pii_types_allowed: [PERSON, EMAIL_ADDRESS]}}
  b: {pii_policy: {allow_by_default: false, pii_types_allowed: [PERSON, US_SSN]}}
  c: {pii_policy: {allow_by_default: true}}
"""
    )
    known = ("US_SSN", "EMAIL_ADDRESS", "PERSON", "CREDIT_CARD")
    assert actionable_pii_types(config, known) == {"US_SSN", "EMAIL_ADDRESS", "CREDIT_CARD"}
    only_open = config.model_copy(update={"models": {"c": config.models["c"]}, "default_model": "c"})
    assert actionable_pii_types(only_open, known) == frozenset()


@pytest.mark.slow
def test_types_not_asked_for_are_not_looked_for(detector: PiiDetector, no_network: list[str]) -> None:
    text = "Ms. Klaudia Nowak from Gdansk: SSN 123-45-6789, mail klaudia@example.org"
    everything = {e.entity_type for e in detector.detect(text)}
    assert {"PERSON", "US_SSN", "EMAIL_ADDRESS"} <= everything
    assert {e.entity_type for e in detector.detect(text, {"US_SSN"})} == {"US_SSN"}
    assert detector.detect(text, set()) == []
    assert no_network == []


@pytest.mark.slow
def test_person_cues_lists_and_addresses(detector: PiiDetector) -> None:
    def people(text: str) -> list[str]:
        return [text[e.start : e.end] for e in detector.detect(text) if e.entity_type == "PERSON"]

    assert people("Lukas, can I please speak to your boss?") == ["Lukas"]
    assert people("My name is Saraja Trpinc.") == ["Saraja Trpinc"]
    assert people("Please ask for ms. Tomasz") == ["Tomasz"]
    # The street, its number and the city after it are an address, not people.
    assert people("Moustafa Mellink lives at 16957 Baarlandhof 68, Rotterdam") == ["Moustafa Mellink"]
    # Escaped line breaks (JSON pasted into a prompt) do not glue the name to the next line.
    assert people("Bibulat Sultygov\\nTreasurer\\nUnited Breweries Limited") == ["Bibulat Sultygov"]
    assert people("What is the boiling point of water? A. 100 C B. 90 C") == []


@pytest.mark.slow
def test_a_phone_deep_in_a_long_text_is_found(detector: PiiDetector) -> None:
    filler = "The mitochondria produce energy for the cell through respiration. " * 40
    text = filler + "If anything is unclear, call me at 212-555-0187 tomorrow. " + filler
    found = [(e.entity_type, text[e.start : e.end]) for e in detector.detect(text)]
    assert found == [("PHONE_NUMBER", "212-555-0187")]


@pytest.mark.slow
def test_local_phone_shapes_count_next_to_a_phone_word(detector: PiiDetector) -> None:
    """As the router counts them (from `pii.threshold`): a local number with its area code
    in parentheses, or in one run of digits, is a phone next to a phone word; the same
    shapes without one, and rows of numbers, are not."""
    threshold = PiiConfig().threshold

    def phones(text: str) -> list[str]:
        found = detector.detect(text, {"PHONE_NUMBER"})
        return [text[e.start : e.end] for e in found if e.score >= threshold]

    assert phones("Can someone call me on (29) 914-756? I have a question.") == ["(29) 914-756"]
    assert phones("I would like to stop receiving messages to 449 9694") == ["449 9694"]
    assert phones("Name: Carola\nDesk: 1070757098\nHours: 9-5") == ["1070757098"]
    assert phones("Ship (29) 914-756 units and 1070757098 more.") == []
    assert phones("Confusion matrix:\n[[1741 878 1152 807 1107 819]\n [ 892 1285 1072 1024 701 581]]") == []


@pytest.mark.slow
def test_phonenumbers_reads_a_bounded_share_of_digit_dense_text(
    detector: PiiDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """phonenumbers' matcher costs up to ~200 us per character of digit runs: it reads at
    most PHONE_MATCHER_CHARS of a text, and a number that one region matches whole is not
    tried in the others; every number of a long list is still found (by the regex shapes)."""
    import phonenumbers

    read: list[str] = []
    matcher = phonenumbers.PhoneNumberMatcher
    monkeypatch.setattr(phonenumbers, "PhoneNumberMatcher", lambda text, *a, **kw: read.append(text) or matcher(text, *a, **kw))
    text = "Call me at 212-555-0187 tomorrow."
    assert [e.entity_type for e in detector.detect(text, {"PHONE_NUMBER"})] == ["PHONE_NUMBER"]
    assert len(read) == 1  # the first region (US) matched it whole
    read.clear()
    numbers = [f"(212) 555-{i:04d}" for i in range(300)]
    text = "Our office lines: " + ", ".join(numbers) + "."
    found = [text[e.start : e.end] for e in detector.detect(text, {"PHONE_NUMBER"})]
    assert found == numbers
    assert sum(len(piece) for piece in dict.fromkeys(read)) <= PHONE_MATCHER_CHARS


@pytest.mark.slow
def test_a_batch_of_messages_reads_no_more_than_a_few_texts(detector: PiiDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many short messages must not each pay phonenumbers' matcher and NER in full:
    `detect_many` gives the batch a few texts' budget (BATCH_SHARE), each NER call charged
    NER_CALL_TOKENS besides its own. Alone, each message is read whole."""
    import phonenumbers

    read: list[str] = []
    matcher = phonenumbers.PhoneNumberMatcher
    monkeypatch.setattr(phonenumbers, "PhoneNumberMatcher", lambda text, *a, **kw: read.append(text) or matcher(text, *a, **kw))
    nlp = detector._analyzer.nlp_engine.nlp["en"]
    windows: list[str] = []
    pipe = nlp.pipe
    monkeypatch.setattr(nlp, "pipe", lambda texts, *a, **kw: pipe(windows.extend(texts) or texts, *a, **kw))
    messages = [f"We flew in from Oslo on flight {4_900_000 + 37 * i}" for i in range(150)]
    alone = [detector.detect(m) for m in messages[:3]]
    assert len(dict.fromkeys(read)) == 3 and len(windows) == 3  # each message: its number, its place
    read.clear()
    windows.clear()
    found = detector.detect_many(messages)
    assert found[:3] == alone  # the first messages as before
    assert sum(len(piece) for piece in dict.fromkeys(read)) <= BATCH_SHARE["phone_chars"] * PHONE_MATCHER_CHARS
    assert len(windows) <= BATCH_SHARE["ner_tokens"] * DEFAULT_NER_BUDGET // NER_CALL_TOKENS  # one window each
    # A request's few new messages are read as they would be alone, a long answer first.
    answer = " ".join(f"Day {i}: we drove from Bergen to Oslo and stayed in Lillehammer." for i in range(12))
    pair = [answer, "Next year I will live in Paris with Anna."]
    assert detector.detect_many(pair) == [detector.detect(text) for text in pair]
    assert "LOCATION" in {e.entity_type for e in detector.detect_many(pair)[1]}


@pytest.mark.slow
def test_text_without_digits_is_not_scanned_for_number_types(
    detector: PiiDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    analyze = detector._analyzer.analyze
    monkeypatch.setattr(detector._analyzer, "analyze", lambda **kw: calls.append(kw) or analyze(**kw))
    assert detector.detect("No numbers here at all.", {"US_SSN", "CREDIT_CARD"}) == []
    assert calls == []
    assert [e.entity_type for e in detector.detect("SSN 123-45-6789", {"US_SSN"})] == ["US_SSN"]
    assert len(calls) == 1


@pytest.mark.slow
def test_published_sample_ssns_are_still_ssns(detector: PiiDetector) -> None:
    for number in ("123-45-6789", "987-65-4320", "078-05-1120"):
        found = detector.detect(f"My SSN is {number}, can you check my tax return?", {"US_SSN"})
        assert [e.entity_type for e in found] == ["US_SSN"], number


def test_email_windows_reach_as_far_as_an_address_around_each_at() -> None:
    assert email_windows("no address here") == []
    text = "x" * 500 + "a@b.co" + "y" * 1000
    at = text.index("@")
    assert email_windows(text) == [(at - 65, at + 257)]
    near = "mail a@b.co or c@d.co"
    assert email_windows(near) == [(0, len(near))]  # overlapping stretches merged, clipped
    far = "a@b.co" + " " * 400 + "c@d.co"
    assert email_windows(far) == [(0, 258), (far.rindex("@") - 65, len(far))]


@pytest.mark.slow
def test_emails_are_matched_around_each_at_only(detector: PiiDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same addresses as Presidio's pattern over the whole text, reading at most an
    address's reach around each "@" (the whole-text pattern is quadratic on dotted runs)."""
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    read: list[int] = []
    analyze = EmailRecognizer.analyze
    monkeypatch.setattr(EmailRecognizer, "analyze", lambda self, text, *a: read.append(len(text)) or analyze(self, text, *a))
    text = "Write to jane.doe@example.com, " + "x" * 90 + "@example.org (a long local part) or a@b."
    found = [text[e.start : e.end] for e in detector.detect(text, {"EMAIL_ADDRESS"})]
    assert found == ["jane.doe@example.com", "x" * 90 + "@example.org"]
    alone = "y" * 90 + "@example.org"
    found = [alone[e.start : e.end] for e in detector.detect(alone, {"EMAIL_ADDRESS"})]
    assert found == ["y" * 65 + "@example.org"]  # an address's reach: its type is what the policy reads
    read.clear()
    hostile = "a." * 3000 + "@" + "b." * 900
    assert detector.detect(hostile, {"EMAIL_ADDRESS"}) == []
    assert read == [65 + 257]
