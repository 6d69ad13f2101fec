"""One generation as text: token frames from a backend -> detokenized deltas, stop
strings, usage, and latency metrics. Shared by chat and text completions, streaming or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mixroute.errors import (
    ApiError,
    BadRequestError,
    OverloadedError,
    RequestPlaneError,
    UnavailableError,
)
from mixroute.frontend.admission import ApiLimits
from mixroute.frontend.backend import Backend, ModelEntry
from mixroute.frontend.detokenize import IncrementalDetokenizer
from mixroute.frontend.metrics import ApiMetrics
from mixroute.frontend.preprocess import PreparedPrompt
from mixroute.logs import kv
from mixroute.protocol.messages import (
    ERROR_BAD_REQUEST,
    ERROR_CONTEXT_LENGTH,
    ERROR_OVERLOADED,
    GenerateFrame,
    GenerateRequest,
    Usage,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TextDelta:
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    """Set on the last delta."""


class InflightRequests:
    """The generations in progress, so that a stopping frontend can end those still running
    when its drain period is over with a 503 (an error chunk and `[DONE]` on a stream)
    instead of a connection cut when the process is killed."""

    def __init__(self) -> None:
        self._waits: set[_FrameWaits] = set()
        self.ended = False

    def __len__(self) -> int:
        return len(self._waits)

    def end_all(self) -> int:
        """End every request in progress, and any that starts from now on; returns how many."""
        self.ended = True
        waits = list(self._waits)
        for wait in waits:
            wait.end("shutdown")
        return len(waits)


def check_length(
    entry: ModelEntry, num_prompt_tokens: int, max_tokens: int | None, param: str = "messages"
) -> int:
    """The request's max_tokens, defaulted to the rest of the context; 400 if it cannot fit.
    `param`: the field that holds the prompt (`messages`, or `prompt` for completions)."""
    if num_prompt_tokens == 0:
        raise BadRequestError("the prompt is empty", param=param)
    room = entry.max_model_len - num_prompt_tokens
    if room <= 0:
        raise BadRequestError(
            f"the prompt has {num_prompt_tokens} tokens but {entry.name}'s context is "
            f"{entry.max_model_len} tokens; shorten the prompt",
            param=param,
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
    limits: ApiLimits | None = None,
    inflight: InflightRequests | None = None,
) -> AsyncIterator[TextDelta]:
    """Deltas of generated text; the last one has `finish_reason` and `usage`.

    Closing this iterator (client gone) closes the backend stream, which cancels the
    request on the worker. So does a timeout (`limits`): a worker silent for the idle
    timeout, or a request running past the total timeout, ends with a 503; and so does
    `inflight.end_all()` (the frontend stopping)."""
    limits = limits if limits is not None else ApiLimits()
    model = entry.name
    detok = IncrementalDetokenizer(entry.tokenizer.fast, stop)
    started = time.perf_counter()
    last = started
    num_tokens = 0
    itl = metrics.itl.labels(model)
    frames = backend.generate(entry, request, prompt)
    waits = _FrameWaits(frames, limits, request.request_id, inflight)
    try:
        while (frame := await waits.next()) is not None:
            if frame.error is not None:
                raise _frame_error(frame, request.request_id)
            if frame.token_ids:
                now = time.perf_counter()
                if num_tokens == 0:
                    metrics.ttft.labels(model).observe(now - started)
                else:
                    itl.observe((now - last) / len(frame.token_ids))
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
                    log.warning("worker ended the request %s", kv(request_id=request.request_id, reason=frame.finish_reason))
                    raise UnavailableError(_WORKER_FAILED)
                yield _finish(metrics, model, started, TextDelta(text, reason, usage))
                return
            if text:
                yield TextDelta(text)
        raise UnavailableError("the worker closed the stream without finishing the request; try again")
    except RequestPlaneError as exc:
        # The details (peer address, remote exception) are for the log, not the client.
        log.warning("request failed %s", kv(request_id=request.request_id, error=exc))
        raise UnavailableError(_WORKER_FAILED) from exc
    finally:
        waits.close()
        await frames.aclose()  # type: ignore[attr-defined]


def _finish(metrics: ApiMetrics, model: str, started: float, delta: TextDelta) -> TextDelta:
    usage = delta.usage
    assert usage is not None
    metrics.duration.labels(model).observe(time.perf_counter() - started)
    metrics.prompt_tokens.labels(model).inc(usage.prompt_tokens)
    metrics.completion_tokens.labels(model).inc(usage.completion_tokens)
    metrics.cached_tokens.labels(model).inc(usage.cached_tokens)
    return delta


_WORKER_FAILED = "the worker failed to process the request; try again"


class _FrameWaits:
    """`anext(frames, None)` under the idle and total timeouts (`limits`).

    One timer per request rather than one per frame: a request streams ~100 frames, and
    arming and cancelling a timer around each wait was a visible share of the frontend's
    CPU. The timer fires at the earliest moment a timeout could have passed; if the
    request is then waiting too long for a frame, it cancels the waiting task (as
    `asyncio.timeout` does), which closes the backend stream and so aborts the request on
    the worker; otherwise it re-arms. The timeouts cover only waits for a frame, never a
    `yield` to our consumer."""

    def __init__(
        self,
        frames: AsyncIterator[GenerateFrame],
        limits: ApiLimits,
        request_id: str,
        inflight: InflightRequests | None = None,
    ) -> None:
        self._frames = frames
        self._limits = limits
        self._request_id = request_id
        self._idle = limits.request_idle_timeout_s or None
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + limits.request_timeout_s if limits.request_timeout_s else None
        self._waiter: asyncio.Task[object] | None = None
        self._wait_started = 0.0
        self._expired: str | None = None
        """What cancelled the current wait: a timeout ("idle" or "total"), or "shutdown"."""
        self._timer: asyncio.TimerHandle | None = None
        self._inflight = inflight
        if inflight is not None:
            inflight._waits.add(self)

    async def next(self) -> GenerateFrame | None:
        if self._inflight is not None and self._inflight.ended:
            raise self._timed_out("shutdown")
        now = self._loop.time()
        if self._deadline is not None and now >= self._deadline:
            raise self._timed_out("total")
        task = asyncio.current_task()
        assert task is not None
        self._waiter, self._wait_started, self._expired = task, now, None
        cancelling = task.cancelling()
        if self._timer is None and (self._idle is not None or self._deadline is not None):
            self._arm()
        try:
            return await anext(self._frames, None)
        except asyncio.CancelledError:
            if self._expired is not None and task.uncancel() <= cancelling:
                raise self._timed_out(self._expired) from None
            raise
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inflight is not None:
            self._inflight._waits.discard(self)

    def end(self, why: str) -> None:
        """Fail the request now: its wait for a frame, if it is waiting, else its next one."""
        task = self._waiter
        if task is not None and self._expired is None:
            self._expired = why
            task.cancel()

    def _arm(self) -> None:
        ends = [t for t in (self._deadline, None if self._idle is None else self._wait_started + self._idle) if t is not None]
        self._timer = self._loop.call_at(min(ends), self._check)

    def _check(self) -> None:
        self._timer = None
        task = self._waiter
        if task is None:
            return  # not waiting for a frame now; the next wait arms the timer again
        if self._expired is not None:
            return  # this wait is already cancelled (the frontend stopping): one cancel, one reason
        now = self._loop.time()
        # The loop's timers may fire a hair early: allow 1 ms.
        if self._deadline is not None and now >= self._deadline - 1e-3:
            self._expired = "total"
        elif self._idle is not None and now - self._wait_started >= self._idle - 1e-3:
            self._expired = "idle"
        else:
            self._arm()
            return
        task.cancel()

    def _timed_out(self, what: str) -> UnavailableError:
        if what == "shutdown":
            log.warning("request ended: the frontend is stopping %s", kv(request_id=self._request_id))
            return UnavailableError("the server is shutting down; try again", code="shutting_down")
        limits = self._limits
        seconds = limits.request_timeout_s if what == "total" else limits.request_idle_timeout_s
        log.warning("request timed out %s", kv(request_id=self._request_id, timeout=what, seconds=seconds))
        return UnavailableError(f"the worker did not answer in time ({what} timeout of {seconds:g} s); try again", code="timeout")


def _frame_error(frame: GenerateFrame, request_id: str) -> ApiError:
    """The client-facing error for a worker's failed frame, chosen by its typed code.

    Workers send client-safe messages with client-error codes; anything else (an
    unknown or missing code, e.g. an older worker) gets a generic message."""
    code, message = frame.error_code, frame.error or ""
    if code == ERROR_CONTEXT_LENGTH:
        return BadRequestError(message, param="max_tokens", code="context_length_exceeded")
    if code == ERROR_BAD_REQUEST:
        return BadRequestError(message)
    log.warning("worker failed the request %s", kv(request_id=request_id, code=code, error=message))
    if code == ERROR_OVERLOADED:
        return OverloadedError("the workers are busy; retry later")
    return UnavailableError(_WORKER_FAILED)
