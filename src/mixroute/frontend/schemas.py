"""OpenAI request bodies (pydantic, validated at the HTTP edge) and response shapes.

Unknown fields are accepted and ignored, as OpenAI-compatible servers commonly do, so
clients that send newer options keep working. Known OpenAI options this server cannot
honour are a 400 when set to anything but their no-op value (`UNSUPPORTED`): ignoring them
would hand back something else than was asked for (plain text for JSON mode, say).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

TokenId = Annotated[StrictInt, Field(ge=0, lt=2**31)]
"""A token id as clients send it: a plain JSON integer (no floats, bools or strings),
non-negative; the model's vocabulary bound is checked once the model is known."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    # field: the values that ask for nothing (accepted, as clients often send them)
    "response_format": (None, {"type": "text"}),
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
}


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def for_template(self) -> dict[str, Any]:
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                if part.type != "text":
                    raise ValueError(f"content part type {part.type!r} is not supported; only 'text'")
                texts.append(part.text or "")
            content: str = "".join(texts)
        else:
            content = self.content or ""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Integers travel to the workers as msgpack: int64 / uint64 at most.
    top_k: int | None = Field(default=None, ge=-1, le=2**63 - 1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=2**63 - 1)
    stop_token_ids: list[TokenId] = []
    cache_salt: str | None = None
    user: str | None = None
    logprobs: bool | int | None = None

    response_format: Any = None
    best_of: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    suffix: Any = None

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _no_op_only(cls, value: Any, info: ValidationInfo) -> Any:
        if not any(value == v and type(value) is type(v) for v in UNSUPPORTED[info.field_name]):
            raise ValueError(f"{info.field_name} is not supported by this server; leave the field out")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("logprobs are not supported by this server; leave the field out")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported by this server; leave the field out")
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _single_prompt(cls, value: Any) -> Any:
        # Before the type check, so a bad token id gets a message naming it rather than
        # the union's first mismatch ("should be a valid string").
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            value = value[0]
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            for position, token_id in enumerate(value):
                if type(token_id) is not int:
                    raise ValueError(f"a token-id prompt holds integers only; item {position} is {token_id!r}")
                if not 0 <= token_id < 2**31:
                    raise ValueError(f"token id {token_id} at position {position} is out of range")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
