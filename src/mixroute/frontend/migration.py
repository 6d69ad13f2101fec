"""Request migration: a stream whose worker dies after it has sent tokens continues on
another worker instead of failing.

The continuation is the same request with the tokens already generated appended to the
prompt and the token budget reduced by as many: the new worker prefills the longer prompt
(from its prefix cache where it holds part of it) and samples the rest. A disaggregated
request continues aggregated (the prefill's lent blocks are gone with the transfer).
The client sees one uninterrupted stream; the final usage counts the original prompt and
every generated token. Sampling with a seed restarts its random sequence on the new worker.
"""

from __future__ import annotations

import msgspec

from mixroute.protocol.messages import GenerateFrame, GenerateRequest, Usage


def continuation(request: GenerateRequest, generated: list[int]) -> GenerateRequest | None:
    """The request that generates what `request` still owes after `generated`; None when
    nothing is owed (the worker died between its last token and its final frame)."""
    sampling = request.sampling
    remaining = sampling.max_tokens - len(generated)
    if remaining <= 0:
        return None
    continued = msgspec.structs.replace(
        sampling, max_tokens=remaining, min_tokens=max(sampling.min_tokens - len(generated), 0)
    )
    return msgspec.structs.replace(
        request, token_ids=[*request.token_ids, *generated], sampling=continued, kv_transfer=None, prefill_only=False
    )


def finished_frame(request: GenerateRequest, generated: list[int]) -> GenerateFrame:
    """The final frame a worker that died after its last token did not send."""
    usage = Usage(prompt_tokens=len(request.token_ids), completion_tokens=len(generated))
    return GenerateFrame(finish_reason="length", usage=usage)


def restate_usage(frame: GenerateFrame, num_prompt_tokens: int, num_generated_before: int) -> GenerateFrame:
    """A continuation's frame with its usage counted against the original request."""
    if frame.usage is not None:
        usage = frame.usage
        frame.usage = Usage(
            prompt_tokens=num_prompt_tokens,
            completion_tokens=usage.completion_tokens + num_generated_before,
            cached_tokens=min(usage.cached_tokens, num_prompt_tokens),
            imported_tokens=min(usage.imported_tokens, num_prompt_tokens),
        )
    return frame
