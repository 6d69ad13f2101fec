"""Keyword rules: whole-word / whole-phrase matches that override the classifier."""

from __future__ import annotations

import re
from functools import lru_cache

from mixroute.router.config import KeywordRule


@lru_cache(maxsize=1024)
def _pattern(keyword: str, case_sensitive: bool) -> re.Pattern[str]:
    # Word boundaries only where the keyword starts/ends with a word character, so
    # "step by step" matches as a phrase and "c++" still matches.
    left = r"\b" if keyword[:1].isalnum() else ""
    right = r"\b" if keyword[-1:].isalnum() else ""
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.compile(left + re.escape(keyword) + right, flags)


@lru_cache(maxsize=1024)
def _any_pattern(keywords: tuple[str, ...], case_sensitive: bool) -> re.Pattern[str]:
    """One alternation for an `any` rule: one scan of the text instead of one per keyword."""
    return re.compile("|".join(f"(?:{_pattern(k, case_sensitive).pattern})" for k in keywords),
                      0 if case_sensitive else re.IGNORECASE)


def rule_matches(rule: KeywordRule, text: str) -> bool:
    if rule.operator != "all":
        return _any_pattern(tuple(rule.keywords), rule.case_sensitive).search(text) is not None
    return all(_pattern(k, rule.case_sensitive).search(text) for k in rule.keywords)


def match_rules(rules: list[KeywordRule], text: str) -> list[KeywordRule]:
    return [rule for rule in rules if rule_matches(rule, text)]
