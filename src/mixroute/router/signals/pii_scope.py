"""Which PII types a config can act on, so the detector looks only for those.

A type matters only if some model's policy forbids it: with `allow_by_default: true`
a model admits every type, and with `allow_by_default: false` it admits its
`pii_types_allowed`. Explicit model names outside `models:` use the default model's
policy, which is in `models:` too, so the union over `models:` covers every request.
Looking for fewer types is faster: without PERSON and LOCATION, spaCy's NER never runs.
"""

from __future__ import annotations

from collections.abc import Collection

from mixroute.router.config import RouterConfig


def actionable_pii_types(config: RouterConfig, known: Collection[str]) -> frozenset[str]:
    """The types of `known` that at least one model's policy forbids (empty: PII can
    never change a decision, so it need not be looked for)."""
    out: set[str] = set()
    for entry in config.models.values():
        policy = entry.pii_policy
        if not policy.allow_by_default:
            out.update(t for t in known if t not in policy.pii_types_allowed)
    return frozenset(out)
