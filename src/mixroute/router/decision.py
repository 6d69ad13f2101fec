"""The one routing decision per request: block, or forward with a rewritten body.

`decide` is pure (config + request + signal results in, decision out) so both front
doors — the HTTP proxy and the Envoy ext_proc server — share it and unit tests need no
models. The semantic-cache lookup happens after it (a blocked request is never answered
from the cache); see core.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from mixroute.router.config import Category, PiiPolicy, RouterConfig
from mixroute.router.request import ChatRequest
from mixroute.router.signals import SignalResults

PII_MESSAGE = (
    "I cannot process this request as it contains personally identifiable information "
    "({types}) that is not allowed by the policy of the selected model."
)
JAILBREAK_MESSAGE = (
    "I cannot process this request as it was flagged as a jailbreak / prompt-injection "
    "attempt (confidence {confidence:.2f})."
)
JAILBREAK_TYPE = "jailbreak"


def header_value(text: str) -> str:
    """`text` as an HTTP header value: percent-encoded unless printable ASCII (a client's
    model name may be any printable Unicode; header values are Latin-1 on the wire)."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe="")


@dataclass(slots=True)
class Route:
    category: str | None
    confidence: float
    model: str
    is_auto: bool
    use_reasoning: bool = False
    injected_system_prompt: bool = False

    def headers(self) -> dict[str, str]:
        return {
            "x-vsr-selected-category": self.category or "none",
            "x-vsr-selected-model": header_value(self.model),
            "x-vsr-selected-reasoning": "on" if self.use_reasoning else "off",
            "x-vsr-injected-system-prompt": "true" if self.injected_system_prompt else "false",
        }


@dataclass(slots=True)
class Block:
    kind: Literal["pii", "jailbreak"]
    message: str
    model: str
    headers: dict[str, str]
    pii_types: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Forward:
    body: dict[str, Any]
    route: Route
    endpoint: str

    @property
    def headers(self) -> dict[str, str]:
        return self.route.headers()


def decide(config: RouterConfig, request: ChatRequest, signals: SignalResults) -> Block | Forward:
    route, candidates = _route(config, request, signals)
    block = _screen(config, route, candidates, signals)
    if isinstance(block, Block):
        return block
    route.model = block
    body = request.body
    if route.is_auto:
        body = _rewrite(config, request.body, route)
    return Forward(body=body, route=route, endpoint=config.endpoint_for(route.model))


def _route(config: RouterConfig, request: ChatRequest, signals: SignalResults) -> tuple[Route, list[str]]:
    """The category and the ranked model candidates (one for an explicit model)."""
    if not config.is_auto(request.model):
        route = Route(signals.category, signals.category_confidence, request.model, is_auto=False)
        return route, [request.model]
    category_name: str | None = None
    confidence = signals.category_confidence
    forced = next((r for r in signals.keyword_rules if r.category is not None), None)
    if forced is not None:
        category_name, confidence = forced.category, 1.0
    elif signals.category is not None and confidence >= config.classifier.category_threshold:
        category_name = signals.category
    category = config.category(category_name)
    ranked = sorted(category.model_scores, key=lambda s: -s.score) if category else []
    candidates = [s.model for s in ranked] or [config.default_model]
    use_reasoning = ranked[0].use_reasoning if ranked else False
    override = next((r.use_reasoning for r in signals.keyword_rules if r.use_reasoning is not None), None)
    if override is not None:
        use_reasoning = override
    route = Route(category_name, confidence, candidates[0], is_auto=True, use_reasoning=use_reasoning)
    return route, candidates


def _policy(config: RouterConfig, model: str) -> PiiPolicy:
    entry = config.models.get(model) or config.models[config.default_model]
    return entry.pii_policy


def _screen(config: RouterConfig, route: Route, candidates: list[str], signals: SignalResults) -> Block | str:
    """The model to use (the best candidate whose PII policy admits the request) or a Block."""
    if config.jailbreak.enabled and signals.jailbreak_probability >= signals.jailbreak_threshold:
        confidence = signals.jailbreak_probability
        headers = {
            "x-vsr-jailbreak-blocked": "true",
            "x-vsr-jailbreak-type": JAILBREAK_TYPE,
            "x-vsr-jailbreak-confidence": f"{confidence:.3f}",
        }
        return Block("jailbreak", JAILBREAK_MESSAGE.format(confidence=confidence), route.model, headers)
    if not signals.pii_types:
        return candidates[0]
    first_violation: list[str] = []
    for model in candidates:
        violations = _policy(config, model).violations(signals.pii_types)
        if not violations:
            return model
        first_violation = first_violation or violations
    headers = {
        "x-vsr-pii-violation": "true",
        "x-vsr-pii-types": ",".join(f"B-{t}" for t in first_violation),
    }
    message = PII_MESSAGE.format(types=", ".join(first_violation))
    return Block("pii", message, route.model, headers, pii_types=first_violation)


def _rewrite(config: RouterConfig, body: dict[str, Any], route: Route) -> dict[str, Any]:
    out = dict(body)
    out["model"] = route.model
    category = config.category(route.category)
    if category is not None and category.system_prompt:
        out["messages"] = _with_system_prompt(body["messages"], category)
        route.injected_system_prompt = True
    _apply_reasoning(config, out, route, category)
    return out


def _with_system_prompt(messages: list[dict[str, Any]], category: Category) -> list[dict[str, Any]]:
    ours = {"role": "system", "content": category.system_prompt}
    if category.system_prompt_mode == "replace":
        return [ours, *(m for m in messages if m.get("role") != "system")]
    # insert: ours goes before the client's own system text, which is kept.
    first = messages[0] if messages else None
    if first is not None and first.get("role") == "system" and isinstance(first.get("content"), str):
        merged = {**first, "content": f"{category.system_prompt}\n\n{first['content']}"}
        return [merged, *messages[1:]]
    return [ours, *messages]


def _apply_reasoning(
    config: RouterConfig, body: dict[str, Any], route: Route, category: Category | None
) -> None:
    entry = config.models.get(route.model)
    if entry is None or entry.reasoning_family is None:
        route.use_reasoning = False  # no switch to set: the header and log say off
        return
    family = config.reasoning_families[entry.reasoning_family]
    if family.type == "chat_template_kwargs":
        kwargs = copy.deepcopy(body.get("chat_template_kwargs") or {})
        kwargs[family.parameter] = route.use_reasoning
        body["chat_template_kwargs"] = kwargs
    elif route.use_reasoning:
        body[family.parameter] = category.reasoning_effort if category else "medium"
    else:
        body.pop(family.parameter, None)
