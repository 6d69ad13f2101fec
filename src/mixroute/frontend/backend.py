"""What the HTTP app needs from whatever runs the model: the served models and a
token-level `generate`.

Two implementations: the frontend's routed backend (`mixroute.frontend.engine_client`),
which picks a worker and streams over the request plane, and a worker's own backend
(`mixroute.worker.local_backend`), which calls its engine in-process. The HTTP app is the
same for both, so a worker's `--http-port` serves exactly the frontend's API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from mixroute.frontend.preprocess import ModelTokenizer, PreparedPrompt
from mixroute.protocol.messages import GenerateFrame, GenerateRequest


@dataclass(slots=True)
class ModelEntry:
    name: str
    tokenizer: ModelTokenizer
    block_size: int
    max_model_len: int
    created: int = 0


class Backend(Protocol):
    def model_entries(self) -> list[ModelEntry]: ...

    def model(self, name: str) -> ModelEntry:
        """The entry for a served model name; raises NotFoundError (404) if unknown."""

    def generate(self, model: ModelEntry, request: GenerateRequest, prompt: PreparedPrompt) -> AsyncIterator[GenerateFrame]:
        """Frames of one request; closing the iterator cancels it wherever it runs."""

    def is_ready(self) -> bool: ...
