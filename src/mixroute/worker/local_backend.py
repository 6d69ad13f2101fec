"""A worker's own OpenAI API (`--http-port`): the frontend's HTTP app over this worker's
engine alone, with no routing and no request-plane hop."""

from __future__ import annotations

from collections.abc import AsyncIterator

from mixroute.errors import NotFoundError
from mixroute.frontend.backend import ModelEntry
from mixroute.frontend.preprocess import PreparedPrompt
from mixroute.protocol.messages import GenerateFrame, GenerateRequest
from mixroute.worker.handlers import WorkerHandlers


class LocalBackend:
    def __init__(self, entry: ModelEntry, handlers: WorkerHandlers) -> None:
        self.entry = entry
        self.handlers = handlers

    def model_entries(self) -> list[ModelEntry]:
        return [self.entry]

    def model(self, name: str) -> ModelEntry:
        if name != self.entry.name:
            raise NotFoundError(
                f"the model {name!r} does not exist; this worker serves {self.entry.name!r}",
                param="model",
                code="model_not_found",
            )
        return self.entry

    def is_ready(self) -> bool:
        return True

    async def generate(self, model: ModelEntry, request: GenerateRequest, prompt: PreparedPrompt) -> AsyncIterator[GenerateFrame]:
        frames = self.handlers.generate_frames(request)
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()  # type: ignore[attr-defined]
