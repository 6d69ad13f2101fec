"""A PERSON recognizer from name lists and name cues, next to spaCy's NER.

spaCy's small English model misses many names, above all single given names ("Tuomo
lives on ...", "Lukas, can I ...") and names it has not seen, and calls many unfamiliar
names places or organisations. This recognizer adds, from the lexicon in
`pii_lexicon.py` (given names from US and international lists, US census surnames,
English word frequencies):

- a listed given name, with the capitalised words after it ("Lesława Piotrowska");
- a capitalised run ending in a listed surname or given name ("Will Smith", "Kolos Pálffy"
  when one part is listed), or a lone surname that is no common word ("founders:
  Holmberg, Woodard and Zimmerman");
- cues that introduce a name whatever it is: a title ("Ms.", "Dr."), "my name is",
  "named", "called", "said", "Dear";
- a line that is only two to four capitalised words (a signature, an address block).

A name that is also an everyday word ("Will", "Hope", "Wisdom", "Italy"; see
`pii_lexicon.py`) does not count alone. A capitalised word only counts when it is not an
English stop word, not a street, place or company word, and not the first word of a
sentence unless a name follows it or a comma, colon or verb-like lower-case word does
(sentence starts are capitalised whatever they are).

These lists are not the ones presidio-evaluator draws its names from; see
bench/results/router-accuracy.md for how much they overlap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mixroute.router.classifiers.pii_lexicon import Lexicon, NameLists, fold
from mixroute.router.classifiers.pii_nlp import capitalised_indices, light_tokens, token_at

__all__ = ["COMPANY_WORDS", "PLACE_WORDS", "STREET_WORDS", "NameLists", "find_names", "fold", "is_place_prefix", "is_place_word", "name_recognizer", "ner_undecided"]

SCORE_LISTED = 0.6
SCORE_CUED = 0.9  # above spaCy's 0.85: "Ms. Tomasz" is a person whatever NER called it

# Words that end or sit inside street addresses and company names, whatever their case
# ("lives on Auerstrasse 44 street"): a word next to one of them is part of an address or a
# company, not a person.
STREET_WORDS = frozenset(
    ["street", "st", "road", "rd", "avenue", "ave", "boulevard", "blvd", "drive", "lane", "ln", "way", "court", "ct", "place", "pl", "square", "sq", "terrace", "parkway", "pkwy", "highway", "hwy", "route", "circle", "cir", "trail", "crossing", "locks", "rue", "ul", "via", "strasse", "straße", "gatan", "vej", "utca", "út", "plaza"]
)
# Capitalised, these end a street or place name too (the rest of the USPS street suffixes
# of Publication 28, and common place prefixes); lower-case they are ordinary words.
PLACE_WORDS = frozenset(
    ["streets", "roads", "drives", "ways", "courts", "squares", "ter", "rte", "circles", "trl", "xing", "lock", "alley", "annex", "arcade", "bayou", "beach", "bend", "bluff", "bluffs", "bottom", "branch", "bridge", "brook", "brooks", "burg", "burgs", "bypass", "camp", "canyon", "cape", "causeway", "center", "centre", "centers", "cliff", "cliffs", "club", "common", "commons", "corner", "corners", "course", "cove", "coves", "creek", "crescent", "crest", "crossroad", "curve", "dale", "dam", "divide", "estate", "estates", "expressway", "extension", "falls", "ferry", "field", "fields", "flat", "flats", "ford", "fords", "forest", "forge", "forges", "fork", "forks", "fort", "freeway", "garden", "gardens", "gateway", "glen", "glens", "green", "greens", "grove", "groves", "harbor", "harbors", "haven", "heights", "hill", "hills", "hollow", "inlet", "island", "islands", "isle", "junction", "junctions", "key", "keys", "knoll", "knolls", "lake", "lakes", "landing", "light", "lights", "loaf", "lodge", "loop", "mall", "manor", "manors", "meadow", "meadows", "mews", "mill", "mills", "mission", "motorway", "mount", "mountain", "mountains", "neck", "orchard", "oval", "overpass", "park", "parks", "pass", "passage", "path", "pike", "pine", "pines", "plain", "plains", "point", "points", "port", "ports", "prairie", "radial", "ramp", "ranch", "rapid", "rapids", "rest", "ridge", "ridges", "river", "row", "run", "shoal", "shoals", "shore", "shores", "skyway", "spring", "springs", "spur", "spurs", "station", "stravenue", "stream", "summit", "throughway", "trace", "track", "trafficway", "trailer", "tunnel", "turnpike", "underpass", "union", "unions", "valley", "valleys", "viaduct", "view", "views", "village", "villages", "ville", "vista", "walk", "walks", "wall", "well", "wells"]
) - STREET_WORDS
# Capitalised, these open a place name ("Lake Darija", "San Mateo", "North Tiffany").
# Ship prefixes too: "USS Johnson / FPO AP 27485" is a military mail address.
PLACE_PREFIXES = frozenset(
    ["uss", "usns", "usnv", "uscgc", "hms", "hmcs", "hmas", "lake", "lakes", "mount", "mt", "saint", "sankt", "san", "santa", "st", "ste", "north", "south", "east", "west", "upper", "lower", "fort", "port", "new", "isle", "cape"]
)


def is_place_word(word: str) -> bool:
    """A street word in any case, or a capitalised street suffix / place word."""
    folded = fold(word.rstrip("."))
    return folded in STREET_WORDS or (word[:1].isupper() and folded in PLACE_WORDS)


def is_place_prefix(word: str) -> bool:
    return word[:1].isupper() and fold(word.rstrip(".")) in PLACE_PREFIXES


COMPANY_WORDS = frozenset(
    ["inc", "ltd", "llc", "plc", "corp", "corporation", "company", "ag", "nv", "gmbh", "bv", "sca", "spa", "kg", "oy", "group", "holdings", "limited", "bank", "trust", "fund", "partners", "industries", "technologies", "sa", "industrie"]
)
NOT_NAMES = frozenset(
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "sir", "madam", "baby", "love"]
)
# Units of an address: they end a name ("Dr. Julie Deutekom Suite 780").
UNIT_WORDS = frozenset(["suite", "ste", "apt", "apartment", "unit", "floor", "fl", "room", "rm", "box", "bldg", "building"])
_NEVER_START = STREET_WORDS | COMPANY_WORDS | NOT_NAMES | UNIT_WORDS
PLACE_PREPOSITIONS = frozenset(["in", "from", "at", "near", "via", "into", "across"])
TITLES = frozenset(["mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "mme", "mlle", "herr", "frau"])
_CUE_BEFORE = re.compile(
    r"\b(?:my name is|name is|named|called|call me|i am|i'm|name[:?]|dear|hi|hello|thanks|said|says|asked|told)"
    r"\s*$",
    re.IGNORECASE,
)


def _is_word(token: Any) -> bool:
    text = token.text
    return len(text) > 1 and text[0].isupper() and token.is_alpha and not token.is_stop


def _is_initial(token: Any) -> bool:
    text = token.text
    return (len(text) == 1 and text.isupper()) or (len(text) == 2 and text[0].isupper() and text[1] == ".")


# Line prefixes of pasted or templated text ("}} Name", "??? Name"); the regex tokens
# split them into single characters.
_LINE_MARKS = frozenset({"}}", "???", "}"})


def _line_start(doc: Any, i: int) -> bool:
    before = doc[i - 1] if i else None
    if before is None or before.is_space or before.text in _LINE_MARKS:
        return True
    return before.text == "?" and i > 1 and doc[i - 2].text == "?"


def _sentence_start(doc: Any, i: int) -> bool:
    return _line_start(doc, i) or doc[i - 1].text in {".", "!", "?", ":", '"', "“", "(", "-", "–"}


def _is_cued(doc: Any, i: int, text: str) -> bool:
    # "Ms." is one token; "ms." (lower case) is "ms" + "."
    j = i - 2 if i > 1 and doc[i - 1].text == "." else i - 1
    previous = fold(doc[j].text.rstrip(".")) if j >= 0 else ""
    return previous in TITLES or _CUE_BEFORE.search(text[max(0, doc[i].idx - 16) : doc[i].idx]) is not None


def _name_end(doc: Any, i: int, cued: bool = False) -> int:
    """End (exclusive) of the name starting at token i: following capitalised words and
    initials, at most four tokens, never a company or address-unit word ("Ms. Aune Kesä
    Suite 210"), nor a street word unless a cue introduced the name ("Name: Brad Key")."""
    end = i + 1
    while end < len(doc) and end - i < 5:
        token = doc[end]
        if token.text == "." and _is_initial(doc[end - 1]) and end + 1 < len(doc) and _is_word(doc[end + 1]):
            end += 1  # "D. Vučković" split as "D", ".", "Vučković"
            continue
        folded = fold(token.text)
        if (
            not (_is_word(token) or _is_initial(token))
            or (not cued and is_place_word(token.text))
            or folded in COMPANY_WORDS
            or folded in UNIT_WORDS
        ):
            break
        end += 1
    while end - 1 > i and _is_initial(doc[end - 1]):
        end -= 1
    return end


def _is_name_line(doc: Any, i: int, end: int) -> bool:
    """The name is a whole line of its own, as in a signature or an address block."""
    at_line_end = end == len(doc) or doc[end].is_space or doc[end].text in _LINE_MARKS
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
    """Whether NER's other label for a listed name stands. spaCy's small model calls
    unfamiliar names places and lists of names organisations; it is kept for a date or a
    nationality, a place after "in"/"from"/..., a place opening a sentence unless a comma,
    colon or lower-case word follows ("Krisztián is from ..."), and an organisation with a
    company word in it."""
    if label == "ORGANIZATION":
        return any(fold(w) in COMPANY_WORDS for w in entity_text.split())
    if label == "LOCATION":
        previous = fold(doc[i - 1].text) if i else ""
        return previous in PLACE_PREPOSITIONS or (_sentence_start(doc, i) and not _reads_like_a_name(doc, i))
    return True


# Endings that mark a surname in many languages ("Zakharov", "Šušulić", "Ragnarsdóttir").
SURNAME_ENDINGS = (
    "ov", "ova", "ev", "eva", "ovich", "evich", "ovna", "evna", "sky", "ski", "ska", "skaya", "skiy",
    "cki", "cka", "ić", "ic", "sson", "sen", "dottir", "dóttir", "escu", "enko", "chuk", "yan", "idis",
    "opoulos", "akis", "oglu", "oğlu", "shvili", "vili", "adze", "ishvili",
)
DETERMINERS = frozenset(["the", "a", "an", "this", "that", "these", "those", "his", "her", "its", "our", "their", "my", "your"])


def _has_surname_ending(word: str) -> bool:
    return len(word) > 4 and word.lower().endswith(SURNAME_ENDINGS)


def _lexicon_says_name(lexicon: Lexicon, doc: Sequence[Any], i: int, end: int) -> bool:
    """The capitalised run doc[i:end] is a name by the lists alone: a listed given name that
    is no everyday word opens it; or it has two or more words, one of them a listed name
    (or an unlisted one with a surname ending) and none of them an everyday word unless
    listed ("Will Smith", "Vakha Karataev"); or it is a lone surname, not right after a
    determiner if it is also a frequent word ("founders: Holmberg, Cook and Ward", not
    "the King"). Words in capitals are acronyms or shouting, not names, here."""
    if doc[i].text.isupper():
        return False
    first = fold(doc[i].text)
    if first in lexicon.given:
        return True
    words = [doc[k].text for k in range(i, end) if not _is_initial(doc[k]) and doc[k].text != "."]
    folded = [fold(w) for w in words]
    if len(words) >= 2:
        listed = any(w in lexicon.given or w in lexicon.surnames for w in folded) or (
            lexicon.is_unknown(folded[-1]) and _has_surname_ending(words[-1])
        )
        plain_words = any(w in lexicon.common and not lexicon.is_name_part(w) for w in folded)
        return listed and not plain_words
    if first in lexicon.surnames:
        return first not in lexicon.frequent or not (i and doc[i - 1].text.lower() in DETERMINERS)
    return lexicon.is_unseen(first) and _has_surname_ending(words[0])  # "founders: Aslakhanov, ..."


def _is_lone_frequent_surname(lexicon: Lexicon, token: Any) -> bool:
    folded = fold(token.text)
    return folded not in lexicon.given and folded in lexicon.frequent


def find_names(
    doc: Sequence[Any], text: str, lexicon: Lexicon, other_entities: Sequence[tuple[int, int, str]] = ()
) -> list[tuple[int, int, float]]:
    """(start_char, end_char, score) of the names in `text`, given its tokens (spaCy
    Tokens or `pii_nlp.Tok`; no model).

    `other_entities` are (start_char, end_char, label) NER gave another label; see
    `_label_holds` for when a listed name overrides it (then with a score above NER's).
    Text without a single capital letter is read by `_lower_case_names`."""
    if not any(c.isupper() for c in text):
        return _lower_case_names(doc, text, lexicon)
    out: list[tuple[int, int, float]] = []
    labels: dict[int, tuple[str | None, str]] = {}
    if other_entities:
        for start, end, other in other_entities:
            k = token_at(doc, start)  # NER spans start on a token
            while k is not None and k < len(doc) and doc[k].idx < end:
                labels[k] = (other, text[start:end])
                k += 1
    free = 0  # first token not inside a name found or skipped already
    for i in capitalised_indices(doc):
        if i < free:
            continue
        token = doc[i]
        if not _is_word(token) or fold(token.text) in _NEVER_START:
            continue
        cued = _is_cued(doc, i, text)
        end = _name_end(doc, i, cued)
        if is_place_prefix(token.text) and end > i + 1:
            free = end  # "Lake Darija", "San Mateo": a place
            continue
        label, entity_text = labels.get(i, (None, ""))
        if cued:
            score = SCORE_CUED
        elif _is_name_line(doc, i, end) and label in (None, "LOCATION", "ORGANIZATION"):
            score = SCORE_LISTED
        elif _lexicon_says_name(lexicon, doc, i, end) and (label is None or not _label_holds(doc, i, label, entity_text)):
            if end == i + 1 and _sentence_start(doc, i) and not _reads_like_a_name(
                doc, i, with_verb=not _is_lone_frequent_surname(lexicon, token)
            ):
                free = end  # "Cook the pasta", "Daniel." at a sentence start
                continue
            score = SCORE_LISTED if label is None else SCORE_CUED
        else:
            continue
        followed_by_street = not cued and end < len(doc) and is_place_word(doc[end].text)
        if not (followed_by_street or (i > 0 and doc[i - 1].like_num)):
            last = doc[end - 1]
            out.append((token.idx, last.idx + len(last.text), score))
        free = end
    out += _later_mentions(doc, out)
    return out + _coordinated(doc, out, lexicon)


def _lower_case_names(doc: Sequence[Any], text: str, lexicon: Lexicon) -> list[tuple[int, int, float]]:
    """Names in text typed all in lower case, where capitals tell nothing: a listed given
    name that is no everyday word, followed by a listed surname or given name ("john smith",
    "kolos farkas"), after a cue ("my name is sanela"), or alone when it is no common word
    at all ("tuomo", not "mark")."""
    out: list[tuple[int, int, float]] = []
    words: list[str] | None = getattr(doc, "words", None)  # regex tokens: skip on the plain strings
    i = 0
    while i < len(doc):
        if words is not None and (len(words[i]) < 2 or not words[i].isalpha() or fold(words[i]) not in lexicon.given):
            i += 1  # no given name starts here; building its token would cost more than this check
            continue
        token = doc[i]
        first = fold(token.text) if token.is_alpha and len(token.text) > 1 and not token.is_stop else ""
        if first not in lexicon.given:
            i += 1
            continue
        end = i + 1
        while end < len(doc) and end - i < 3 and doc[end].is_alpha and not doc[end].is_stop:
            nxt = fold(doc[end].text)
            if nxt not in lexicon.given and nxt not in lexicon.surnames:
                break
            end += 1
        if end > i + 1 or _is_cued(doc, i, text) or first not in lexicon.common:
            last = doc[end - 1]
            out.append((token.idx, last.idx + len(last.text), SCORE_LISTED))
        i = end
    return out


_COORDINATORS = frozenset({"and", "or", ",", "&"})


def _coordinated(
    doc: Sequence[Any], found: list[tuple[int, int, float]], lexicon: Lexicon
) -> list[tuple[int, int, float]]:
    """A capitalised word joined by "and", "or" or a comma to a found one-word name, and no
    common English word itself ("Pyysalo and Curry", "founders: Rolc, Patterson and Dean"):
    lists of people are lists of names."""
    starts = {start for start, _, _ in found}
    out: list[tuple[int, int, float]] = []
    for start, end, _ in found:
        k = token_at(doc, start)
        if k is None or doc[k].idx + len(doc[k].text) != end:
            continue
        for other, link in ((k - 2, k - 1), (k + 2, k + 1)):
            if not (0 <= other < len(doc)) or doc[link].text.lower() not in _COORDINATORS:
                continue
            token = doc[other]
            folded = fold(token.text)
            if (
                token.idx not in starts
                and _is_word(token)
                and not token.text.isupper()
                and (folded not in lexicon.common or folded in lexicon.given or folded in lexicon.surnames)
            ):
                starts.add(token.idx)
                out.append((token.idx, token.idx + len(token.text), SCORE_LISTED))
    return out


def _later_mentions(doc: Sequence[Any], found: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Other mentions of a found name's words in the same text ("directed by Zuzana Mudrová
    and starring Mudrová", "Dr. Smith ... Smith said"): a person's name stays one whatever
    the lists say about the word alone."""
    if not found:
        return []
    words: set[str] = set()
    taken: set[int] = set()
    for start, end, _ in found:
        k = token_at(doc, start)
        while k is not None and k < len(doc) and doc[k].idx < end:
            taken.add(k)
            if len(doc[k].text) > 1 and doc[k].is_alpha:
                words.add(doc[k].text)
            k += 1
    out = []
    for i in capitalised_indices(doc):
        token = doc[i]
        if i not in taken and token.text in words and not (i and doc[i - 1].text.lower() in PLACE_PREPOSITIONS):
            out.append((token.idx, token.idx + len(token.text), SCORE_LISTED))
    return out


def ner_undecided(tokens: Sequence[Any], i: int) -> bool:
    """Which name-like tokens spaCy's NER is run around when the name lists are on: a
    capitalised word right after a place preposition ("in Paris", "from Tartu"), for
    LOCATION. PERSON is judged by the lists and cues (`find_names`); NER's persons in those
    windows are used too. NER costs ~3 ms a call however short the text on a small CPU,
    so it runs on as few texts as possible: on 500-token MMLU prompts, opening windows
    around every word neither listed nor known to wordfreq as well ran it on 25 of 40
    prompts instead of 11, for +0.7 points of PERSON F1 on presidio-evaluator sentences
    (dev seed 1)."""
    return bool(i) and tokens[i - 1].text.lower() in PLACE_PREPOSITIONS


def name_recognizer(lists: NameLists) -> Any:
    """A Presidio recognizer for PERSON over the tokens Presidio's NLP engine made."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class NameListRecognizer(EntityRecognizer):  # type: ignore[misc]
        def load(self) -> None:
            lists.load()

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            if "PERSON" not in entities or nlp_artifacts is None:
                return []
            lexicon = lists.load()
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
                for start, end, score in find_names(tokens, text, lexicon, others)
            ]

    recognizer: Any = NameListRecognizer(
        supported_entities=["PERSON"], name="NameListRecognizer", supported_language="en"
    )
    return recognizer
