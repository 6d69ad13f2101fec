"""The router's configuration: one YAML file, validated into `RouterConfig`.

Validation errors name the field (dotted path) and say what to change; a config that
references an unknown model, category or reasoning family is rejected as a whole so a
reload never applies half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixroute.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelScore(_Strict):
    model: str
    score: float = Field(ge=0.0, le=1.0)
    use_reasoning: bool = False


class Category(_Strict):
    name: str
    description: str = ""
    system_prompt: str = ""
    system_prompt_mode: Literal["replace", "insert"] = "replace"
    """`replace`: drop the client's system messages and put ours first; `insert`: put ours
    before the client's system message (or add one)."""
    model_scores: list[ModelScore] = Field(default_factory=list)
    reasoning_effort: Literal["low", "medium", "high"] = "medium"


class ReasoningFamily(_Strict):
    type: Literal["chat_template_kwargs", "reasoning_effort"]
    parameter: str
    """`enable_thinking` / `thinking` for chat_template_kwargs; `reasoning_effort` otherwise."""


class PiiPolicy(_Strict):
    allow_by_default: bool = True
    """True: every PII type is allowed. False: only `pii_types_allowed` are."""
    pii_types_allowed: list[str] = Field(default_factory=list)

    def violations(self, types: list[str]) -> list[str]:
        if self.allow_by_default:
            return []
        allowed = set(self.pii_types_allowed)
        return sorted({t for t in types if t not in allowed})


class ModelEntry(_Strict):
    endpoint: str | None = None
    """Upstream base URL (`http://host:port`); falls back to `default_endpoint`."""
    reasoning_family: str | None = None
    pii_policy: PiiPolicy = PiiPolicy()

    @field_validator("endpoint")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {value!r} must start with http:// or https://")
        return value.rstrip("/") if value else value


class KeywordRule(_Strict):
    name: str
    keywords: list[str] = Field(min_length=1)
    operator: Literal["any", "all"] = "any"
    case_sensitive: bool = False
    category: str | None = None
    """Route to this category (confidence 1.0) when the rule matches."""
    use_reasoning: bool | None = None
    """Force reasoning on/off when the rule matches."""


class ClassifierConfig(_Strict):
    category_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Below this confidence the request goes to `default_model` with no system prompt."""
    category_refiner: bool = False
    """Also ask the MiniLM fine-tuned on MMLU (`classifiers/refiner.py`) when the fast head
    is unsure, and average the two: about +1 point of MMLU accuracy, for 50-100 ms of CPU
    on each prompt it reads (2-core host); loaded on first use."""
    category_refine_below: float | None = Field(default=None, ge=0.0, le=1.0)
    """With the refiner on, ask it below this head confidence (1: on every prompt); unset:
    below the level where its opinion can still change the decision (0.71 at weight 0.3)."""
    category_refiner_weight: float = Field(default=0.3, gt=0.0, le=1.0)
    """The refiner's share in the average. 0.3: it reads ~12% of MMLU questions and ~58% of
    chat prompts; 0.5: every prompt, for higher accuracy (cross-validated on MMLU: 92.2% ->
    93.0%, weakest category 84.0% -> 86.2%; bench/results/category-cv.md)."""

    def refine_below(self) -> float | None:
        """What `CategoryClassifier.predict` takes: 0 = never ask the refiner, None = its own level."""
        return self.category_refine_below if self.category_refiner else 0.0


class PiiConfig(_Strict):
    enabled: bool = True
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_chars: int = Field(default=500_000, ge=1)
    """The most message text (all messages, in characters) one request may ask PII screening
    to read; more gets 413. Screening costs ~0.5-5 us per character of prose and up to ~40 us
    per character of hostile text (digit runs, thousands of tiny messages) on one core here
    (bench/results/pii-cost.md), so the default, about a 128k-token context, bounds one
    request to under ~20 s of screening, taken in turns with other requests' signals."""


class JailbreakConfig(_Strict):
    enabled: bool = True
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Block at or above this probability; None: the classifier's own calibrated threshold."""
    scan_sentences: bool = True
    """Also score a message of several sentences sentence by sentence (an injection inside
    longer benign text); off saves ~1.5-2 ms of signal time per 500-token message on a
    2-core CPU (bench/results/router.md)."""


class CacheScope(_Strict):
    header: str | None = "x-user-id"
    """Request header naming the user/tenant; checked first."""
    use_user_field: bool = True
    """Fall back to the OpenAI `user` field of the body."""


class MilvusConfig(_Strict):
    uri: str = "./router-cache.db"
    """A milvus-lite file path (`*.db`) or a server URI (`http://host:19530`)."""
    collection: str = "mixroute_semantic_cache"


class CacheConfig(_Strict):
    enabled: bool = True
    backend: Literal["memory", "milvus"] = "memory"
    similarity_threshold: float = Field(default=0.95, ge=0.0, le=1.0)
    ttl_seconds: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=1000, ge=1)
    eviction: Literal["lru", "fifo"] = "lru"
    scope: CacheScope = CacheScope()
    milvus: MilvusConfig = MilvusConfig()


class RouterConfig(_Strict):
    auto_model_names: list[str] = Field(default_factory=lambda: ["MoM", "auto"], min_length=1)
    default_model: str
    default_endpoint: str = "http://127.0.0.1:8000"
    upstream_timeout_s: float = Field(default=300.0, gt=0)
    models: dict[str, ModelEntry] = Field(min_length=1)
    reasoning_families: dict[str, ReasoningFamily] = Field(default_factory=dict)
    categories: list[Category] = Field(default_factory=list)
    keyword_rules: list[KeywordRule] = Field(default_factory=list)
    classifier: ClassifierConfig = ClassifierConfig()
    pii: PiiConfig = PiiConfig()
    jailbreak: JailbreakConfig = JailbreakConfig()
    cache: CacheConfig = CacheConfig()

    @field_validator("default_endpoint")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"default_endpoint {value!r} must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        problems: list[str] = []
        known = sorted(self.models)

        def check_model(where: str, name: str) -> None:
            if name not in self.models:
                problems.append(f"{where}: unknown model {name!r}; add it under `models:` (known: {known})")

        check_model("default_model", self.default_model)
        for name in self.auto_model_names:
            if name in self.models:
                problems.append(f"auto_model_names: {name!r} is also a real model; rename one of them")
        for model, entry in self.models.items():
            family = entry.reasoning_family
            if family is not None and family not in self.reasoning_families:
                problems.append(
                    f"models.{model}.reasoning_family: unknown family {family!r}; "
                    f"define it under `reasoning_families:` (known: {sorted(self.reasoning_families)})"
                )
        seen: set[str] = set()
        for i, cat in enumerate(self.categories):
            if cat.name in seen:
                problems.append(f"categories.{i}.name: duplicate category {cat.name!r}")
            seen.add(cat.name)
            for j, score in enumerate(cat.model_scores):
                check_model(f"categories.{i}.model_scores.{j}.model", score.model)
        for i, rule in enumerate(self.keyword_rules):
            if rule.category is not None and rule.category not in seen:
                problems.append(
                    f"keyword_rules.{i}.category: unknown category {rule.category!r}; "
                    f"it must be one of `categories:` names"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def category(self, name: str | None) -> Category | None:
        if name is None:
            return None
        return next((c for c in self.categories if c.name == name), None)

    def endpoint_for(self, model: str) -> str:
        entry = self.models.get(model)
        return (entry.endpoint if entry and entry.endpoint else None) or self.default_endpoint

    def is_auto(self, model: str) -> bool:
        return model in self.auto_model_names


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing; add it"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "<string>") -> RouterConfig:
    """Parse and validate YAML text; raises ConfigError with one line per problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level (keys like `models:`)")
    try:
        return RouterConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid router config:\n{_format_errors(exc)}") from None


def load_config(path: str | Path) -> RouterConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read router config {path}: {exc.strerror}") from None
    return parse_config(text, str(path))
