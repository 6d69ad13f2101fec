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


async def test_batches_run_in_parallel_up_to_max_parallel() -> None:
    encode = Recorder()  # its first call blocks until released
    with ThreadPoolExecutor(2) as pool:
        batcher = EncodeBatcher(encode, pool, max_batch_size=1, max_parallel=2)
        first = asyncio.ensure_future(batcher.encode("a bb"))
        await _until(lambda: len(encode.batches) == 1)
        # The first batch is stuck on one thread; the second runs on the other meanwhile.
        assert await asyncio.wait_for(batcher.encode("ccc"), 5) == [3]
        third = asyncio.ensure_future(batcher.encode("dddd e"))
        assert await asyncio.wait_for(third, 5) == [4, 1]
        assert not first.done()
        encode.release.set()
        assert await first == [1, 2]
        assert batcher.max_running == 2


async def test_one_batch_at_a_time_by_default() -> None:
    encode = Recorder()
    with ThreadPoolExecutor(2) as pool:  # a free thread: only max_parallel holds the second back
        batcher = EncodeBatcher(encode, pool, max_batch_size=1)
        first = asyncio.ensure_future(batcher.encode("a"))
        await _until(lambda: len(encode.batches) == 1)
        second = asyncio.ensure_future(batcher.encode("bb"))
        await asyncio.sleep(0.05)
        assert not second.done() and len(encode.batches) == 1
        encode.release.set()
        assert await asyncio.gather(first, second) == [[1], [2]]
        assert batcher.max_running == 1


def test_max_parallel_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_parallel"):
        EncodeBatcher(Recorder(), max_parallel=0)


async def test_a_lone_prompt_is_tokenized_inline_and_a_burst_on_the_executor() -> None:
    threads: list[str] = []

    def encode(texts: list[str]) -> list[list[int]]:
        threads.append(threading.current_thread().name)
        return [[len(t)] for t in texts]

    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        batcher = EncodeBatcher(encode, pool, inline_gap_s=0.05)
        assert await batcher.encode("abc") == [3]  # alone: on this (the loop's) thread
        assert threads == [threading.current_thread().name]
        # Arriving right after it (a burst): the executor, batched.
        assert await asyncio.gather(*(batcher.encode("x" * n) for n in (1, 2, 3))) == [[1], [2], [3]]
        assert all(name.startswith("pool") for name in threads[1:]) and len(threads) >= 2
        await asyncio.sleep(0.06)
        assert await batcher.encode("abcd") == [4]
        assert threads[-1] == threading.current_thread().name
        assert batcher.num_inline == 2


async def test_inline_failures_reach_the_caller() -> None:
    batcher = EncodeBatcher(Recorder(), inline_gap_s=0.0)
    encode = batcher._encode_batch
    assert isinstance(encode, Recorder)
    encode.release.set()
    with pytest.raises(ValueError, match="bad"):
        await batcher.encode("a bad one")
