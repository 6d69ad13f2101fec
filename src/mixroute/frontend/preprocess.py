"""Turning an OpenAI request into tokens: the model's chat template, tokenizing, block hashes.

The tokenizer comes from the model's local directory (never a hub) and is loaded, like
every template render and encode, off the event loop thread: a long prompt takes
milliseconds to tokenize and would stall every other request's stream.
"""

from __future__ import annotations

import array
import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import BadRequestError, ConfigError
from mixroute.frontend.encode_batcher import EncodeBatcher
from mixroute.frontend.routing.note import RouteNote
from mixroute.protocol.hashing import (
    BlockHash,
    SequenceHash,
    block_hashes,
    hash_seed,
    sequence_hashes,
)
from mixroute.protocol.messages import SamplingParams

INLINE_MAX_CHARS = 2048
"""Inputs shorter than this are tokenized on the event loop thread (see `encode`)."""


TOKENIZER_THREADS = 2
"""Threads tokenizing at once (the executor's size, and the batches run in parallel)."""
LONE_PROMPT_GAP_S = 0.02
"""A long prompt with no other arriving within this many seconds is tokenized inline
(`EncodeBatcher`, `inline_gap_s`)."""


def tokenizer_executor() -> Executor:
    """A small pool for tokenizer work; threads, because `tokenizers` releases the GIL."""
    return ThreadPoolExecutor(max_workers=TOKENIZER_THREADS, thread_name_prefix="tokenize")


class PreparedPrompt:
    """A prompt's tokens and block hashes, prepared once per request. Sequence hashes are
    computed on first use: KV matching needs only the local hashes, so the common routing
    path skips them. `route` travels with the prompt to the backend, which notes there
    where it sent the request (the response headers come from it)."""

    __slots__ = ("_seed", "_seq_hashes", "local_hashes", "route", "token_ids")

    def __init__(self, token_ids: list[int], local_hashes: list[BlockHash], seed: int) -> None:
        self.token_ids = token_ids
        self.local_hashes = local_hashes
        self._seed = seed
        self._seq_hashes: list[SequenceHash] | None = None
        self.route = RouteNote()

    @property
    def seq_hashes(self) -> list[SequenceHash]:
        if self._seq_hashes is None:
            self._seq_hashes = sequence_hashes(self.local_hashes, self._seed)
        return self._seq_hashes


class ModelTokenizer:
    """A model's tokenizer (the raw `tokenizers` object, for speed) and chat template.

    Loaded from `tokenizer.json` + `tokenizer_config.json` / `chat_template.jinja` without
    importing transformers (seconds of startup); the template is rendered with jinja2 in a
    sandbox, as transformers does."""

    def __init__(
        self,
        fast_tokenizer: Any,
        path: str,
        *,
        chat_template: str | None,
        special: dict[str, str | None],
        executor: Executor | None = None,
    ) -> None:
        self.path = path
        self.fast = fast_tokenizer
        self._executor = executor
        self._special = special
        eos = special.get("eos_token")
        eos_id = fast_tokenizer.token_to_id(eos) if eos else None
        self.eos_token_ids: tuple[int, ...] = () if eos_id is None else (int(eos_id),)
        self.vocab_size: int = int(fast_tokenizer.get_vocab_size(with_added_tokens=True))
        """Token ids from clients must be below this (ids the tokenizer cannot decode)."""
        self.max_token_chars: int = max(1, max(map(len, fast_tokenizer.get_vocab(with_added_tokens=True))))
        """No token stands for more characters of text than its vocabulary entry has (byte-
        level BPE spells each byte as one character, WordPiece adds `##`): a text of n
        characters has at least n / max_token_chars tokens."""
        self.has_chat_template = bool(chat_template)
        self._encode_fast = getattr(fast_tokenizer, "encode_batch_fast", None)
        """`encode_batch_fast` (tokenizers >= 0.21) releases the GIL while it works and skips
        offsets; `encode` holds the GIL throughout, so on the executor thread it would still
        stall the event loop (a 4,000-word prompt: ~7 ms held vs ~4 ms released)."""
        self._template = _compile_template(chat_template) if chat_template else None
        self._batcher: EncodeBatcher | None = None
        """Long prompts tokenized together (created on first use, on the serving loop)."""

    @classmethod
    def load_sync(cls, path: str) -> ModelTokenizer:
        from tokenizers import Tokenizer

        directory = Path(path)
        if not (directory / "tokenizer.json").is_file():
            raise ConfigError(f"no tokenizer.json in {path!r}; pass a local model directory with a fast tokenizer")
        config: dict[str, Any] = {}
        if (directory / "tokenizer_config.json").is_file():
            config = json.loads((directory / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text()
        special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        tokenizer = cls(Tokenizer.from_file(str(directory / "tokenizer.json")), path, chat_template=template, special=special)
        tokenizer.encode_batch_sync(["warm up the tokenizer's thread pool before the first request"])
        return tokenizer

    @classmethod
    async def load(cls, path: str, executor: Executor | None = None) -> ModelTokenizer:
        tokenizer = await asyncio.get_running_loop().run_in_executor(executor, cls.load_sync, path)
        tokenizer._executor = executor
        return tokenizer

    # ---- synchronous (run in the executor) ----

    def encode_sync(self, text: str) -> list[int]:
        return self.encode_batch_sync([text])[0]

    def encode_batch_sync(self, texts: list[str]) -> list[list[int]]:
        encode_batch = self._encode_fast or self.fast.encode_batch
        return [e.ids for e in encode_batch(texts, add_special_tokens=False)]

    def render_chat_sync(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        return self.encode_sync(self.render_text_sync(messages, tools))

    def render_text_sync(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        """The chat template applied to `messages`: the prompt as text."""
        if not self.has_chat_template:
            # No path in the message: it is the server's file system, not the client's business.
            raise BadRequestError("this model has no chat template; use /v1/completions", param="messages")
        assert self._template is not None
        import jinja2

        try:
            return self._template.render(  # type: ignore[no-any-return]
                messages=messages, tools=tools, add_generation_prompt=True, **self._special
            )
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
            raise BadRequestError(f"cannot apply the chat template: {exc}", param="messages") from exc

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.fast.decode(list(token_ids), skip_special_tokens=True)  # type: ignore[no-any-return]

    # ---- async wrappers ----
    # Short inputs are tokenized inline: handing work to a thread costs a GIL hand-off
    # (measured at milliseconds on a busy 2-CPU host, against ~50 us to encode a short
    # prompt), so only inputs long enough to stall the loop go to the executor, batched
    # with the other long prompts waiting at that moment (`EncodeBatcher`; a long prompt
    # arriving alone is tokenized inline too, see there).

    async def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        size = sum(len(str(m.get("content") or "")) for m in messages)
        if size < INLINE_MAX_CHARS and not tools:
            return self.render_chat_sync(messages, tools)
        text = await asyncio.get_running_loop().run_in_executor(self._executor, self.render_text_sync, messages, tools)
        return await self.encode(text)

    async def encode(self, text: str) -> list[int]:
        if len(text) < INLINE_MAX_CHARS:
            return self.encode_sync(text)
        if self._batcher is None:
            self._batcher = EncodeBatcher(
                self.encode_batch_sync, self._executor, max_parallel=TOKENIZER_THREADS, inline_gap_s=LONE_PROMPT_GAP_S
            )
        return await self._batcher.encode(text)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialized form
        return str(value.get("content")) if value.get("content") is not None else None
    return None if value is None else str(value)


def _compile_template(source: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    return env.from_string(source)


def check_not_far_too_long(num_chars: int, tokenizer: ModelTokenizer, max_model_len: int, param: str) -> None:
    """400 for a prompt that cannot fit whatever it tokenizes to, before spending the
    tokenizer's time on it (a 3.6 MB prompt held the event loop ~1.2 s)."""
    at_least = num_chars // tokenizer.max_token_chars
    if at_least > max_model_len:
        raise BadRequestError(
            f"the prompt has at least {at_least} tokens ({num_chars} characters) but the context "
            f"is {max_model_len} tokens; shorten the prompt",
            param=param,
            code="context_length_exceeded",
        )


def check_token_ids(token_ids: Sequence[int], vocab_size: int, param: str) -> None:
    """400 unless every id is a token of the model's vocabulary [0, vocab_size)."""
    for position, token_id in enumerate(token_ids):
        if not 0 <= token_id < vocab_size:
            raise BadRequestError(
                f"{param}[{position}] = {token_id} is not a token id of this model; ids must be in [0, {vocab_size})",
                param=param,
            )


def prepare_prompt(token_ids: list[int], block_size: int, cache_salt: str | None = None) -> PreparedPrompt:
    """Block hashes of the prompt's full blocks (what the router matches against KV events)."""
    # array -> numpy avoids numpy's slow per-element conversion of a Python list.
    as_array = np.frombuffer(array.array("I", token_ids), dtype=np.uint32) if token_ids else np.zeros(0, np.uint32)
    seed = hash_seed(cache_salt)
    return PreparedPrompt(token_ids, block_hashes(as_array, block_size, seed), seed)


def sampling_params(
    *,
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop_token_ids: Sequence[int],
    ignore_eos: bool,
    min_tokens: int,
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=top_k or 0,
        seed=seed,
        stop_token_ids=tuple(stop_token_ids),
        ignore_eos=ignore_eos,
        min_tokens=min_tokens,
    )
