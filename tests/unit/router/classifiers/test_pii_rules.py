"""PII post-processing rules (no Presidio/spaCy load)."""

from __future__ import annotations

from mixroute.router.classifiers.pii import PiiEntity, _luhn_ok, resolve_overlaps


def test_luhn() -> None:
    assert _luhn_ok("4111111111111111")
    assert _luhn_ok("2223000048400011")  # Mastercard 2-series test number
    assert not _luhn_ok("4111111111111112")


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
