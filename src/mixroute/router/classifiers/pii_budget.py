"""What the costly parts of PII detection may read, per text or shared by a batch of texts.

Two parts of detection cost far more than the regexes: phonenumbers' matcher (~5 ms for
one 7-digit candidate that is valid in none of the eight regions: it tries each region and
every inner grouping) and spaCy's NER (~3 ms per call however short the text). Each has a
limit per text (`PHONE_MATCHER_CHARS`, the engine's `ner_budget`). A request of many short
messages would pay them once per message (400 messages of "in Paris 12" took 1.6 s here,
~20x the worst cost per character of one long text), so `PiiDetector.detect_many` detects a
batch under one `shared_budget()`: each text keeps its own limit, but the batch reads no
more than `BATCH_SHARE` texts' worth, and each NER call is charged `NER_CALL_TOKENS` on
top of its tokens. A request's few new messages (the last reply and the new question) are
read as they would be alone; thousands of tiny ones are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# A batch's budget, in per-text limits: phonenumbers' matcher costs ~5 ms per candidate that
# no region accepts, so a batch gets one text's 256 characters (the regex shapes go on
# finding numbers past it); NER gets four texts' windows, so a question's place is read
# even after a long answer used its own.
BATCH_SHARE = {"phone_chars": 1, "ner_tokens": 4}
# A spaCy call costs ~3 ms however short its text, ~0.1 ms a token after that: in a batch
# each call is charged this many tokens besides its own.
NER_CALL_TOKENS = 24


@dataclass(slots=True)
class Budget:
    """What is left to the batch; None: not drawn on yet (the first draw sets it to its
    `BATCH_SHARE` of per-text limits)."""

    phone_chars: int | None = None
    ner_tokens: int | None = None


_SHARED: ContextVar[Budget | None] = ContextVar("mixroute_pii_budget", default=None)


@contextmanager
def shared_budget() -> Iterator[None]:
    """Texts detected inside share one budget (per thread: a context variable)."""
    token = _SHARED.set(Budget())
    try:
        yield
    finally:
        _SHARED.reset(token)


def take(field: str, limit: int) -> int:
    """How much of `field` this text may use: its own `limit`, at most what the shared
    batch has left."""
    budget = _SHARED.get()
    if budget is None:
        return limit
    left = getattr(budget, field)
    return limit if left is None else min(limit, left)


def spend(field: str, limit: int, used: int) -> None:
    """Record what this text used out of the shared batch's budget (nothing when unshared)."""
    budget = _SHARED.get()
    if budget is not None:
        left = getattr(budget, field)
        setattr(budget, field, max(0, (BATCH_SHARE[field] * limit if left is None else left) - used))
