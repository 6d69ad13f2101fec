"""Turning generated tokens back into text as they arrive, and cutting at stop strings.

Incremental decoding uses the tokenizers library's `DecodeStream`, which holds back
bytes that do not yet form a whole character (a multi-byte character split across
tokens), so clients never see U+FFFD halves.

Stop strings: text that could be the start of a stop string is held back until it is
known not to be one, so a streamed response never shows part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IncrementalDetokenizer:
    def __init__(self, fast_tokenizer: Any, stop: Sequence[str] = ()) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = fast_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self._stop = [s for s in stop if s]
        self._held = ""
        self.text = ""
        """All text emitted so far."""
        self.is_stopped = False
        """A stop string was found; nothing more will be emitted."""

    def add(self, token_ids: Sequence[int]) -> str:
        """Feed new tokens; returns the text now safe to emit (possibly empty)."""
        if self.is_stopped:
            return ""
        pieces = [self._held]
        step = self._stream.step
        for token_id in token_ids:
            piece = step(self._tokenizer, token_id)
            if piece:
                pieces.append(piece)
        pending = "".join(pieces)
        if not self._stop:
            self._held = ""
            self.text += pending
            return pending
        return self._cut_stop(pending)

    def flush(self) -> str:
        """End of generation: emit what was held back for a possible stop string."""
        out, self._held = ("" if self.is_stopped else self._held), ""
        self.text += out
        return out

    def _cut_stop(self, pending: str) -> str:
        # `pending` starts with the held-back text, so a stop string split across
        # tokens is found here whole.
        cut = -1
        for s in self._stop:
            i = pending.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            self.is_stopped = True
            self._held = ""
            out = pending[:cut]
            self.text += out
            return out
        keep = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(pending)), 0, -1):
                if pending.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        out = pending[: len(pending) - keep]
        self._held = pending[len(pending) - keep :]
        self.text += out
        return out
