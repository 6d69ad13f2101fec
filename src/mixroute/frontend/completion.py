"""One generation as text: token frames from a backend -> detokenized deltas, stop
strings, usage, and latency metrics. Shared by chat and text completions, streaming or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mixroute.errors import ApiError, BadRequestError, RequestPlaneError, UnavailableError
from mixroute.frontend.backend import Backend, ModelEntry
from mixroute.frontend.detokenize import IncrementalDetokenizer
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.preprocess import PreparedPrompt
from mixroute.logs import kv
from mixroute.protocol.messages import GenerateRequest, Usage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TextDelta:
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    """Set on the last delta."""


def check_length(entry: ModelEntry, num_prompt_tokens: int, max_tokens: int | None) -> int:
    """The request's max_tokens, defaulted to the rest of the context; 400 if it cannot fit."""
    if num_prompt_tokens == 0:
        raise BadRequestError("the prompt is empty", param="messages")
    room = entry.max_model_len - num_prompt_tokens
    if room <= 0:
        raise BadRequestError(
            f"the prompt has {num_prompt_tokens} tokens but {entry.name}'s context is "
            f"{entry.max_model_len} tokens; shorten the prompt",
            param="messages",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise BadRequestError(
            f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds {entry.name}'s "
            f"context of {entry.max_model_len} tokens; lower max_tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


async def generate_text(
    backend: Backend,
    entry: ModelEntry,
    request: GenerateRequest,
    prompt: PreparedPrompt,
    stop: list[str],
    metrics: ApiMetrics,
) -> AsyncIterator[TextDelta]:
    """Deltas of generated text; the last one has `finish_reason` and `usage`.

    Closing this iterator (client gone) closes the backend stream, which cancels the
    request on the worker."""
    model = entry.name
    detok = IncrementalDetokenizer(entry.tokenizer.fast, stop)
    started = time.perf_counter()
    last = started
    num_tokens = 0
    frames = backend.generate(entry, request, prompt)
    try:
        async for frame in frames:
            if frame.error is not None:
                raise _frame_error(frame.error)
            if frame.token_ids:
                now = time.perf_counter()
                if num_tokens == 0:
                    metrics.ttft.labels(model).observe(now - started)
                else:
                    metrics.itl.labels(model).observe((now - last) / len(frame.token_ids))
                last = now
                num_tokens += len(frame.token_ids)
            text = detok.add(frame.token_ids)
            if detok.is_stopped:
                usage = Usage(prompt_tokens=len(prompt.token_ids), completion_tokens=num_tokens)
                yield _finish(metrics, model, started, TextDelta(text, "stop", usage))
                return
            if frame.finish_reason is not None:
                text += detok.flush()
                usage = frame.usage or Usage(prompt_tokens=len(prompt.token_ids), completion_tokens=num_tokens)
                reason = "length" if frame.finish_reason == "length" else "stop"
                if frame.finish_reason in ("abort", "error"):
                    raise UnavailableError(f"the worker ended the request ({frame.finish_reason})")
                yield _finish(metrics, model, started, TextDelta(text, reason, usage))
                return
            if text:
                yield TextDelta(text)
        raise UnavailableError("the worker closed the stream without finishing the request")
    except RequestPlaneError as exc:
        log.warning("request failed %s", kv(request_id=request.request_id, error=exc))
        raise UnavailableError(f"the worker failed: {exc}") from exc
    finally:
        await frames.aclose()  # type: ignore[attr-defined]


def _finish(metrics: ApiMetrics, model: str, started: float, delta: TextDelta) -> TextDelta:
    usage = delta.usage
    assert usage is not None
    metrics.duration.labels(model).observe(time.perf_counter() - started)
    metrics.prompt_tokens.labels(model).inc(usage.prompt_tokens)
    metrics.completion_tokens.labels(model).inc(usage.completion_tokens)
    metrics.cached_tokens.labels(model).inc(usage.cached_tokens)
    return delta


def _frame_error(message: str) -> ApiError:
    if "too long" in message.lower() or "context" in message.lower():
        return BadRequestError(message, code="context_length_exceeded")
    return UnavailableError(f"the worker failed: {message}")
