"""EncodeBatcher: long prompts waiting at the same time are tokenized in one call."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mixroute.frontend.encode_batcher import EncodeBatcher
from mixroute.frontend.preprocess import INLINE_MAX_CHARS, ModelTokenizer


class Recorder:
    """Encodes text as its word lengths; fails on a word "bad"; the first call waits for `release`."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, texts: list[str]) -> list[list[int]]:
        self.batches.append(list(texts))
        if len(self.batches) == 1:
            self.release.wait(5)
        if any("bad" in t.split() for t in texts):
            raise ValueError("cannot tokenize 'bad'")
        return [[len(w) for w in t.split()] for t in texts]


@pytest.fixture
def executor():  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_prompts_arriving_during_a_batch_form_the_next_one(executor) -> None:  # type: ignore[no-untyped-def]
    encode = Recorder()
    batcher = EncodeBatcher(encode, executor, max_batch_size=3)
    first = asyncio.ensure_future(batcher.encode("a bb"))
    await _until(lambda: len(encode.batches) == 1)
    rest = [asyncio.ensure_future(batcher.encode(f"{'x' * n} y")) for n in (1, 2, 3, 4)]
    await asyncio.sleep(0.05)
    encode.release.set()
    assert await first == [1, 2]
    assert await asyncio.gather(*rest) == [[1, 1], [2, 1], [3, 1], [4, 1]]
    # Oldest first, at most three a batch.
    assert encode.batches == [["a bb"], ["x y", "xx y", "xxx y"], ["xxxx y"]]
    assert (batcher.num_batches, batcher.max_batch_size) == (3, 3)


async def test_a_failing_prompt_fails_only_its_caller_and_a_gone_caller_is_dropped(executor) -> None:  # type: ignore[no-untyped-def]
    encode = Recorder()
    batcher = EncodeBatcher(encode, executor, max_batch_size=8)
    first = asyncio.ensure_future(batcher.encode("warm up"))
    await _until(lambda: len(encode.batches) == 1)
    good = asyncio.ensure_future(batcher.encode("fine text"))
    bad = asyncio.ensure_future(batcher.encode("a bad one"))
    gone = asyncio.ensure_future(batcher.encode("never mind"))
    await asyncio.sleep(0.01)
    gone.cancel()
    encode.release.set()
    await first
    assert await good == [4, 4]
    with pytest.raises(ValueError, match="bad"):
        await bad
    assert all("never mind" not in batch for batch in encode.batches)
    assert ["fine text", "a bad one"] in encode.batches  # tried together, then one by one


async def test_long_prompts_go_through_the_batcher_with_the_same_ids(tokenizer: ModelTokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * (INLINE_MAX_CHARS // 20)
    texts = [text + str(i) for i in range(4)]
    ids = await asyncio.gather(*(tokenizer.encode(t) for t in texts))
    assert ids == [tokenizer.fast.encode(t, add_special_tokens=False).ids for t in texts]
    assert tokenizer._batcher is not None and tokenizer._batcher.num_batches >= 1
