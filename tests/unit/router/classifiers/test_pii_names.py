"""PERSON rules from the name lexicon (given names, surnames, word frequencies), the type
gates and the token view; the lexicon is built from the installed data packages (no model,
no network)."""

from __future__ import annotations

import pytest

from mixroute.router.classifiers.pii import TYPE_GATES, PiiDetector, PiiEntity, drop_word_persons
from mixroute.router.classifiers.pii_lexicon import Lexicon, NameLists, fold
from mixroute.router.classifiers.pii_names import find_names, is_place_word, ner_undecided
from mixroute.router.classifiers.pii_nlp import Tokens, person_parts, regex_tokens

STOP = frozenset({"the", "and", "a", "of", "to", "is", "at", "in", "on", "me", "my", "your", "what", "for"})


def test_tokens_are_made_lazily_and_match_the_text() -> None:
    text = "Ms. Anna-Lee Berg, 12.5 km\n  from O'Hare's gate"
    tokens = Tokens(text, STOP)
    assert [t.text for t in tokens] == tokens.words
    assert all(text[t.idx : t.idx + len(t.text)] == t.text for t in tokens)
    assert [tokens.words[i] for i in tokens.capitalised()] == ["Ms", "Anna", "Lee", "Berg", "Hare"]
    assert tokens[-1].text == "gate" and tokens[1:3] == [tokens[1], tokens[2]]
    assert tokens[0] is tokens[0]  # made once
    with pytest.raises(IndexError):
        tokens[len(tokens)]
    with pytest.raises(IndexError):
        tokens[-len(tokens) - 1]


def test_ner_person_spans_are_cut_at_lower_case_words() -> None:
    span = "Christoffe to Jose"
    assert [span[s:e] for s, e in person_parts(span, 0)] == ["Christoffe", "Jose"]
    span = "Aemi G Nakamoto of Lyxor FTSE"
    assert [span[s - 10 : e - 10] for s, e in person_parts(span, 10)] == ["Aemi G Nakamoto"]
    span = "Frits van den Heuvel"
    assert [span[s:e] for s, e in person_parts(span, 0)] == ["Frits van den Heuvel"]


@pytest.mark.parametrize(
    ("entity", "matches"),
    [
        ("US_SSN", ["123-45-6789", "123 45 6789", "123456789", "12345-6789"]),
        ("CREDIT_CARD", ["4111 1111 1111 1111", "2223-0000-4840-0011", "4111111111111111"]),
        ("PHONE_NUMBER", ["+41 38 421 28 12", "(832)040-7723", "0484 84 01 64", "212-555-0187"]),
        ("IBAN_CODE", ["GB82WEST12345698765432", "de89 3704 0044 0532 0130 00"]),
        ("IP_ADDRESS", ["192.168.0.12", "::1", "fe80::1ff:fe23:4567:890a", "2001:db8:0:0:0:0:2:1"]),
        ("US_DRIVER_LICENSE", ["A1234567", "12ABC12345", "123456789A"]),
        ("EMAIL_ADDRESS", ["jane.doe@example.com"]),
        ("CRYPTO", ["1BoatSLRHtKNngkdXEeobR76b53LETtpyT"]),
    ],
)
def test_type_gates_let_every_shape_through(entity: str, matches: list[str]) -> None:
    for text in matches:
        assert TYPE_GATES[entity].search(f"see {text} here"), (entity, text)


def test_type_gates_skip_plain_prose() -> None:
    text = "What is the derivative of x with respect to y? A. one B. two"
    assert [e for e, gate in TYPE_GATES.items() if gate.search(text)] == []


def test_place_words_need_a_capital_unless_they_are_street_words() -> None:
    assert is_place_word("Canyon") and not is_place_word("canyon")
    assert is_place_word("street") and is_place_word("St.")
    assert not is_place_word("West")  # a surname ("Toby West"); a place only as a prefix


def test_ner_runs_only_after_place_prepositions() -> None:
    tokens = regex_tokens("Nkrumah met Anna in Accra", STOP)
    assert [t.text for i, t in enumerate(tokens) if ner_undecided(tokens, i)] == ["Accra"]


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return NameLists().load()


def names(text: str, lexicon: Lexicon) -> list[str]:
    return [text[s:e] for s, e, _ in find_names(regex_tokens(text, STOP), text, lexicon)]


def test_names_that_are_words_are_told_apart(lexicon: Lexicon) -> None:
    for name in ("john", "maria", "anna", "mark"):
        assert fold(name) in lexicon.given, name
    for word in ("will", "wisdom", "italy", "love", "hope"):
        assert word in lexicon.given_wordlike, word
    assert "holmberg" in lexicon.surnames and "holmberg" not in lexicon.frequent
    assert "young" in lexicon.frequent  # a lone "Young" after "the" is no name
    assert lexicon.is_unseen("piotrowska") and not lexicon.is_unseen("discipline")


def test_international_given_names_with_the_optional_list(lexicon: Lexicon) -> None:
    pytest.importorskip("gender_guesser", reason="the optional intl-names extra (GPL-3.0) is not installed")
    for name in ("bolesław", "krisztián"):
        assert fold(name) in lexicon.given, name


def test_person_rules_from_the_lexicon(lexicon: Lexicon) -> None:
    assert names("Capitalized words like Wisdom and Discipline are often mistaken with names.", lexicon) == []
    assert names("The founders: Holmberg, Woodard and Zimmerman.", lexicon) == [
        "Holmberg",
        "Woodard",
        "Zimmerman",
    ]
    assert names("Please correct it to Mr. Toby West?", lexicon) == ["Toby West"]
    assert names("What's your last name? Lundgren", lexicon) == ["Lundgren"]
    assert names("Lesław Piotrowski lives at 527 Duizendmonnikenstraat 189", lexicon) == ["Lesław Piotrowski"]
    assert names("Will Smith met the King of France.", lexicon) == ["Will Smith"]
    assert names("I DON'T KNOW WHAT IBAN TO USE", lexicon) == []
    # Street suffixes and place prefixes: the corner of "Arbi Canyon", "Lake Darija".
    assert names("I now live at the corner of Viinikantie 66 and Marika Canyon", lexicon) == []
    assert names("Songwriters come to Lake Darija every year.", lexicon) == []


def test_ner_guesses_that_are_words_are_dropped(lexicon: Lexicon) -> None:
    text = "Energetic salesperson. Awarded Salesperson of the Month, like Discipline and Anna."
    spans = {
        w: PiiEntity("PERSON", text.index(w), text.index(w) + len(w), 0.85) for w in ("Salesperson", "Discipline", "Anna")
    }
    kept = drop_word_persons(text, list(spans.values()), lexicon)
    assert [text[e.start : e.end] for e in kept] == ["Anna"]
    cued = PiiEntity("PERSON", spans["Discipline"].start, spans["Discipline"].end, 0.9)
    assert drop_word_persons(text, [cued], lexicon) == [cued]


@pytest.mark.slow
def test_prose_without_places_never_runs_ner(detector: PiiDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    nlp = detector._analyzer.nlp_engine.nlp["en"]
    calls: list[object] = []
    pipe = nlp.pipe
    monkeypatch.setattr(nlp, "pipe", lambda texts, **kw: calls.append(texts) or pipe(texts, **kw))
    text = "Ebba Kaczmarek asked whether Nkrumah wrote about the Akaike criterion. " * 20
    found = {text[e.start : e.end] for e in detector.detect(text) if e.entity_type == "PERSON"}
    assert "Ebba Kaczmarek" in found
    assert calls == []
    moved = "Ebba has lived in Paris for years."
    located = {(e.entity_type, moved[e.start : e.end]) for e in detector.detect(moved)}
    assert len(calls) == 1
    assert ("LOCATION", "Paris") in located and ("PERSON", "Ebba") in located


def test_later_mentions_and_pasted_lines(lexicon: Lexicon) -> None:
    text = "The film was directed by Anna Mudrová and starring Mudrová herself."
    assert names(text, lexicon) == ["Anna Mudrová", "Mudrová"]
    # Lines prefixed by "}}" or "???" (pasted templates) still start a line.
    assert names("}} Nanase Oyokawa\n}} Apt. 792", lexicon) == ["Nanase Oyokawa"]


@pytest.mark.slow
def test_ship_addresses_are_no_people(detector: PiiDetector) -> None:
    text = "Ship it to USCGC Ferguson / FPO AE 50790, attention Anna Berg."
    people = [text[e.start : e.end] for e in detector.detect(text, {"PERSON"})]
    assert people == ["Anna Berg"]


def test_text_typed_in_lower_case(lexicon: Lexicon) -> None:
    assert names("john smith will call tomorrow", lexicon) == ["john smith"]
    assert names("hi, i'm brandon", lexicon) == ["brandon"]
    assert names("mark the right answer and hope for the best", lexicon) == []


def test_lower_case_fast_path_finds_what_the_token_walk_finds(lexicon: Lexicon) -> None:
    """Regex tokens let the lower-case reader skip words on their strings; a plain token
    sequence (no `.words`) takes the full walk. Both must agree."""
    from mixroute.router.classifiers.pii_names import _lower_case_names

    texts = [
        "john smith will call tomorrow, ask mary jones or kolos farkas about it",
        "hi, i'm brandon and my name is sanela; tuomo says hello to mark",
        "mark the right answer and hope for the best " * 20 + "love, anna berg",
    ]
    for text in texts:
        tokens = regex_tokens(text, STOP)
        found = _lower_case_names(tokens, text, lexicon)
        assert found and found == _lower_case_names(list(tokens), text, lexicon)


def test_lists_of_people_and_surname_endings(lexicon: Lexicon) -> None:
    text = "Is there a better pop song? Pyysalo and Curry were precision engineers."
    assert names(text, lexicon) == ["Curry", "Pyysalo"]
    text = "It is the brainchild of our 3 founders: Aslakhanov, Williams and Thomas."
    assert names(text, lexicon) == ["Aslakhanov", "Williams", "Thomas"]
    # A common word next to a name is no name ("Peace and Anna").
    assert names("They sang of Peace and Anna smiled.", lexicon) == ["Anna"]


def test_address_units_end_a_name_and_cues_keep_street_like_surnames(lexicon: Lexicon) -> None:
    assert names("Dr. Julie Deutekom Suite 780 31345 Baarlandhof 68", lexicon) == ["Julie Deutekom"]
    assert names("Date: today\nName: Brad Key\nPhone: none", lexicon) == ["Brad Key"]


def test_context_enhancer_finds_the_same_token_as_presidios_scan() -> None:
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    from mixroute.router.classifiers.pii import _enhancer
    from mixroute.router.classifiers.pii_nlp import KeywordList

    text = "Call  me at 212-555-0187, or (0) 44 323 68 22 fax; thanks!"
    tokens = regex_tokens(text, STOP)
    fast = _enhancer()
    for start in range(len(text) - 1):
        expected = LemmaContextAwareEnhancer._find_index_of_match_token("w", start, tokens.words, tokens.starts)
        assert fast._find_index_of_match_token("w", start, tokens.words, tokens.starts) == expected, start
    keywords = KeywordList(["call", "fax"])
    assert "fax" in keywords and "me" not in keywords and list(keywords) == ["call", "fax"]
