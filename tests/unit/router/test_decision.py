from __future__ import annotations

import json

import numpy as np

from mixroute.router.config import parse_config
from mixroute.router.decision import Block, Forward, decide
from mixroute.router.request import parse_chat_request
from mixroute.router.signals import SignalResults
from mixroute.router.signals.keywords import match_rules
from tests.unit.router.fakes import CONFIG_YAML

CONFIG = parse_config(CONFIG_YAML)


def _request(model="MoM", messages=None, **extra):
    messages = messages or [{"role": "user", "content": "hello"}]
    return parse_chat_request(json.dumps({"model": model, "messages": messages, **extra}).encode())


def _signals(category="math", confidence=0.9, pii=(), jailbreak=0.0, text=""):
    return SignalResults(embedding=np.zeros(4, np.float32), category=category, category_confidence=confidence,
                         jailbreak_probability=jailbreak, jailbreak_threshold=0.7, pii_types=list(pii),
                         keyword_rules=match_rules(CONFIG.keyword_rules, text))


def test_auto_picks_best_model_replaces_system_prompt_and_enables_thinking():
    req = _request(messages=[{"role": "system", "content": "client prompt"}, {"role": "user", "content": "x"}])
    out = decide(CONFIG, req, _signals())
    assert isinstance(out, Forward)
    assert out.body["model"] == "big" and out.endpoint == "http://127.0.0.1:9"
    assert out.body["messages"] == [{"role": "system", "content": "You are a math expert."},
                                    {"role": "user", "content": "x"}]
    assert out.body["chat_template_kwargs"] == {"enable_thinking": True}
    assert out.headers == {"x-vsr-selected-category": "math", "x-vsr-selected-model": "big",
                           "x-vsr-selected-reasoning": "on", "x-vsr-injected-system-prompt": "true"}
    assert req.body["model"] == "MoM"  # the client's body is not mutated


def test_insert_mode_keeps_the_client_system_prompt_and_sets_reasoning_effort():
    req = _request(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}])
    out = decide(CONFIG, req, _signals("law"))
    assert isinstance(out, Forward) and out.body["model"] == "effort"
    assert out.body["messages"][0] == {"role": "system", "content": "You are a lawyer.\n\nbe brief"}
    assert out.body["reasoning_effort"] == "high" and out.endpoint == "http://127.0.0.1:10"


def test_insert_mode_without_client_system_prompt_adds_one():
    out = decide(CONFIG, _request(), _signals("law"))
    assert out.body["messages"][0] == {"role": "system", "content": "You are a lawyer."}
    assert len(out.body["messages"]) == 2


def test_reasoning_off_removes_effort_and_keyword_turns_it_on():
    out = decide(CONFIG, _request(reasoning_effort="high"), _signals("biology"))
    assert out.body["model"] == "effort" and "reasoning_effort" not in out.body
    assert out.headers["x-vsr-selected-reasoning"] == "off"
    out = decide(CONFIG, _request(), _signals("biology", text="think step by step please"))
    assert out.body["reasoning_effort"] == "medium" and out.headers["x-vsr-selected-reasoning"] == "on"


def test_keyword_rule_overrides_category():
    out = decide(CONFIG, _request(), _signals("math", text="ask my attorney"))
    assert out.route.category == "law" and out.route.confidence == 1.0 and out.body["model"] == "effort"


def test_low_confidence_falls_back_to_default_model_without_prompt():
    out = decide(CONFIG, _request(), _signals("math", confidence=0.3))
    assert out.body["model"] == "small" and out.route.category is None
    assert out.headers["x-vsr-injected-system-prompt"] == "false"
    assert out.headers["x-vsr-selected-category"] == "none"
    assert out.body["messages"] == [{"role": "user", "content": "hello"}]


def test_explicit_model_is_forwarded_unchanged_but_screened():
    req = _request(model="small", temperature=0.2)
    out = decide(CONFIG, req, _signals("math"))
    assert isinstance(out, Forward) and out.body is req.body and out.route.model == "small"
    blocked = decide(CONFIG, _request(model="small"), _signals("math", pii=["US_SSN"]))
    assert isinstance(blocked, Block) and blocked.headers["x-vsr-pii-types"] == "B-US_SSN"


def test_pii_policy_per_model_picks_a_model_that_allows_it():
    # math -> big (allow all) keeps big; biology -> effort (blocks all) falls to small (email allowed).
    assert decide(CONFIG, _request(), _signals("math", pii=["US_SSN"])).body["model"] == "big"
    out = decide(CONFIG, _request(), _signals("biology", pii=["EMAIL_ADDRESS"]))
    assert isinstance(out, Forward) and out.body["model"] == "small"
    out = decide(CONFIG, _request(), _signals("biology", pii=["US_SSN", "EMAIL_ADDRESS"]))
    assert isinstance(out, Block) and out.kind == "pii"
    assert out.headers == {"x-vsr-pii-violation": "true", "x-vsr-pii-types": "B-EMAIL_ADDRESS,B-US_SSN"}
    assert "personally identifiable information" in out.message


def test_jailbreak_blocks_with_confidence_header():
    out = decide(CONFIG, _request(), _signals(jailbreak=0.93))
    assert isinstance(out, Block) and out.kind == "jailbreak"
    assert out.headers["x-vsr-jailbreak-blocked"] == "true"
    assert out.headers["x-vsr-jailbreak-type"] == "jailbreak"
    assert out.headers["x-vsr-jailbreak-confidence"] == "0.930"
    assert isinstance(decide(CONFIG, _request(), _signals(jailbreak=0.5)), Forward)


def test_keywords_match_whole_words_and_phrases():
    rules = CONFIG.keyword_rules
    assert [r.name for r in match_rules(rules, "Let's THINK about it")] == ["think"]
    assert match_rules(rules, "rethinking") == []
    assert [r.name for r in match_rules(rules, "go step by step")] == ["think"]
