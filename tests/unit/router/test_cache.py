from __future__ import annotations

import json

import numpy as np

from mixroute.router.cache import (
    CachedAnswer,
    StreamRecorder,
    answer_from_json,
    cache_scope,
    is_cacheable,
)
from mixroute.router.cache.memory import MemoryCacheStore
from mixroute.router.config import CacheConfig
from mixroute.router.request import parse_chat_request
from mixroute.router.responses import completion_sse


def _unit(*values):
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def _answer(text):
    return CachedAnswer(content=text, model="m")


def test_lookup_respects_threshold_scope_and_ttl():
    store = MemoryCacheStore(max_entries=10)
    store.store("a", _unit(1, 0, 0), _answer("one"), now=100.0, ttl=10.0)
    hit = store.lookup("a", _unit(1, 0.1, 0), threshold=0.9, now=101.0)
    assert hit is not None and hit.answer.content == "one" and hit.similarity > 0.99
    assert store.lookup("a", _unit(0, 1, 0), threshold=0.9, now=101.0) is None
    assert store.lookup("b", _unit(1, 0, 0), threshold=0.9, now=101.0) is None
    assert store.lookup("a", _unit(1, 0, 0), threshold=0.9, now=110.5) is None


def test_lru_eviction_keeps_recently_hit_entries():
    store = MemoryCacheStore(max_entries=2, eviction="lru")
    store.store("s", _unit(1, 0, 0), _answer("x"), now=0, ttl=100)
    store.store("s", _unit(0, 1, 0), _answer("y"), now=0, ttl=100)
    assert store.lookup("s", _unit(1, 0, 0), 0.9, now=1) is not None  # touch x
    store.store("t", _unit(0, 0, 1), _answer("z"), now=2, ttl=100)
    assert len(store) == 2
    assert store.lookup("s", _unit(0, 1, 0), 0.9, now=3) is None  # y was least recently used
    assert store.lookup("s", _unit(1, 0, 0), 0.9, now=3) is not None


def test_fifo_eviction_and_expired_entries_go_first():
    store = MemoryCacheStore(max_entries=2, eviction="fifo")
    store.store("s", _unit(1, 0, 0), _answer("x"), now=0, ttl=100)
    store.store("s", _unit(0, 1, 0), _answer("y"), now=0, ttl=1)
    store.store("s", _unit(0, 0, 1), _answer("z"), now=5, ttl=100)  # y expired: dropped, x kept
    assert store.lookup("s", _unit(1, 0, 0), 0.9, now=6) is not None
    store.store("s", _unit(1, 1, 0), _answer("w"), now=7, ttl=100)  # full: x (oldest) goes
    assert store.lookup("s", _unit(1, 0, 0), 0.99, now=8) is None
    assert len(store) == 2


def test_scope_separates_users_models_and_conversations():
    config = CacheConfig()
    def req(user=None, model="MoM", history=()):
        msgs = [*history, {"role": "user", "content": "q"}]
        body = {"model": model, "messages": msgs} | ({"user": user} if user else {})
        return parse_chat_request(json.dumps(body).encode())
    def scope(request, headers):
        return cache_scope(config, request, headers, request.body)
    base = scope(req(), {})
    assert scope(req(), {}) == base
    assert scope(req(), {"x-user-id": "alice"}) != base
    assert scope(req(user="alice"), {}) == scope(req(), {"x-user-id": "alice"})
    assert scope(req(model="other"), {}) != base
    assert scope(req(history=[{"role": "system", "content": "s"}]), {}) != base


def _scope(body, forwarded=None):
    request = parse_chat_request(json.dumps(body).encode())
    return cache_scope(CacheConfig(), request, {}, forwarded or request.body)


def test_scope_covers_everything_the_answer_depends_on_but_the_last_user_text():
    def body(text="What is the boiling point of water?", **extra):
        return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    base = _scope(body())
    # the text itself is what the embedding compares; how the answer is delivered does not count
    assert _scope(body("Tell me the boiling point of water.")) == base
    assert _scope(body(stream=True, stream_options={"include_usage": True})) == base
    # generation settings do
    for extra in ({"max_tokens": 2}, {"temperature": 1.5}, {"response_format": {"type": "json_object"}},
                  {"tools": [{"type": "function", "function": {"name": "f"}}]}, {"seed": 3}):
        assert _scope(body(**extra)) != base, extra
    # so do the numbers in the text: 17 * 23 is not 17 * 24, however close the embeddings
    assert _scope(body("What is 17 * 23?")) != _scope(body("What is 17 * 24?"))
    assert _scope(body("What is 17 * 23?")) == _scope(body("Compute 17 * 23."))
    # and what the upstream is sent: a different system prompt after a reload
    request = body()
    forwarded = {**request, "messages": [{"role": "system", "content": "new prompt"}, *request["messages"]]}
    assert _scope(request, forwarded) != base


def test_scope_covers_images_and_tool_results_after_the_user_turn():
    def image(url):
        return {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this image in detail."},
            {"type": "image_url", "image_url": {"url": url}}]}]}
    assert _scope(image("https://example.com/cat.png")) != _scope(image("https://example.com/invoice.png"))
    def agent(result):
        return {"model": "m", "messages": [
            {"role": "user", "content": "Look up the current weather in Oslo"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": result}]}
    assert _scope(agent("sunny, 20C")) != _scope(agent("snowstorm, -15C"))


def test_requests_with_several_choices_or_logprobs_do_not_use_the_cache():
    def request(**extra):
        return parse_chat_request(json.dumps({"model": "m", "messages": [{"role": "user", "content": "q"}], **extra}).encode())
    assert is_cacheable(request()) and is_cacheable(request(n=1))
    assert not is_cacheable(request(n=3))
    assert not is_cacheable(request(logprobs=True, top_logprobs=2))


def test_stream_recorder_reassembles_split_chunks():
    sse = completion_sse("hello world", "m", "stop")
    recorder = StreamRecorder()
    for i in range(0, len(sse), 7):
        recorder.feed(sse[i:i + 7])
    assert recorder.answer() == CachedAnswer(content="hello world", model="m", finish_reason="stop")
    broken = StreamRecorder()
    broken.feed(sse[: len(sse) // 2])
    assert broken.answer() is None  # no finish_reason seen: never cache a cut-off stream


def test_answer_from_json_only_caches_plain_text():
    ok = {"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    assert answer_from_json(json.dumps(ok).encode()).content == "hi"
    tool = {"model": "m", "choices": [{"message": {"content": None}, "finish_reason": "tool_calls"}]}
    assert answer_from_json(json.dumps(tool).encode()) is None
    assert answer_from_json(b"garbage") is None


def test_exact_tier_key_ignores_delivery_fields_and_expires():
    from mixroute.router.cache.exact import ExactCache, ExactEntry, exact_key

    def req(**extra):
        body = {"model": "MoM", "messages": [{"role": "user", "content": "q"}], **extra}
        return parse_chat_request(json.dumps(body).encode())
    assert exact_key(req(), "t", 1) == exact_key(req(stream=True), "t", 1)
    assert exact_key(req(), "t", 1) != exact_key(req(temperature=0.5), "t", 1)
    assert exact_key(req(), "t", 1) != exact_key(req(), "u", 1)
    assert exact_key(req(), "t", 1) != exact_key(req(), "t", 2)  # a reload invalidates
    cache = ExactCache(max_entries=1)
    cache.put("a", ExactEntry(_answer("x"), {}, expires_at=10))
    assert cache.get("a", now=5).answer.content == "x" and cache.get("a", now=10) is None
    cache.put("a", ExactEntry(_answer("x"), {}, expires_at=10))
    cache.put("b", ExactEntry(_answer("y"), {}, expires_at=10))
    assert cache.get("a", now=0) is None and len(cache) == 1
