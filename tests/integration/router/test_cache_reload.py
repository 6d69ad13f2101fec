"""Semantic cache (memory and milvus-lite backends) and config reload, with the real
embedder, against a real upstream process."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from tests.integration.router.conftest import router_config
from tests.integration.router.test_proxy import BIOLOGY, MATH, chat, sse_content

PARAPHRASE = "Which organelle produces most of the ATP in eukaryotic cells via cellular respiration?"


@pytest.mark.parametrize("backend", ["memory", "milvus"])
def test_cache_hit_scoped_per_user_with_ttl(start_router, upstream, tmp_path, backend):
    upstream.reset()
    config = router_config(upstream.url, ttl="3", cache_backend=backend, milvus_uri=str(tmp_path / "cache.db"))
    router = start_router(config)
    alice = {"x-user-id": "alice"}
    first = chat(router, BIOLOGY, headers=alice)
    assert first.status_code == 200 and "x-vsr-cache-hit" not in first.headers
    hit = chat(router, PARAPHRASE, headers=alice)
    assert hit.headers["x-vsr-cache-hit"] == "true"
    assert hit.headers["x-vsr-selected-category"] == "biology"
    assert hit.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert len(upstream.received()) == 1
    # Another user (header) and another user (`user` field) never see alice's answer.
    assert "x-vsr-cache-hit" not in chat(router, BIOLOGY, headers={"x-user-id": "bob"}).headers
    assert "x-vsr-cache-hit" not in chat(router, BIOLOGY, user="carol").headers
    assert chat(router, BIOLOGY, user="carol").headers["x-vsr-cache-hit"] == "true"
    # A different question is a miss.
    assert "x-vsr-cache-hit" not in chat(router, MATH, headers=alice).headers
    assert len(upstream.received()) == 4
    time.sleep(3.2)  # ttl_seconds: 3
    assert "x-vsr-cache-hit" not in chat(router, BIOLOGY, headers=alice).headers
    assert len(upstream.received()) == 5


def test_paraphrase_with_other_settings_or_numbers_is_not_a_hit(start_router, upstream):
    upstream.reset()
    router = start_router(router_config(upstream.url))
    assert "x-vsr-cache-hit" not in chat(router, BIOLOGY, user="erin", max_tokens=2).headers
    # The same question with room for a whole answer, or several choices, is sent upstream.
    assert "x-vsr-cache-hit" not in chat(router, PARAPHRASE, user="erin", max_tokens=500).headers
    assert "x-vsr-cache-hit" not in chat(router, PARAPHRASE, user="erin", max_tokens=500, n=2).headers
    assert chat(router, PARAPHRASE, user="erin", max_tokens=500).headers["x-vsr-cache-hit"] == "true"
    first = chat(router, "What is 17 times 23? Show the product.", user="erin")
    assert "x-vsr-cache-hit" not in first.headers
    assert "x-vsr-cache-hit" not in chat(router, "What is 17 times 24? Show the product.", user="erin").headers
    assert len(upstream.received()) == 5


def test_streamed_answer_is_cached_and_replayed(start_router, upstream):
    upstream.reset()
    router = start_router(router_config(upstream.url))
    first = chat(router, BIOLOGY, stream=True, user="dave")
    content, finish = sse_content(first.text)
    assert content.startswith("echo: Which organelle") and finish == "stop"
    replay = chat(router, BIOLOGY, stream=True, user="dave")
    assert replay.headers["x-vsr-cache-hit"] == "true"
    assert replay.headers["content-type"].startswith("text/event-stream")
    assert sse_content(replay.text) == (content, "stop")
    as_json = chat(router, BIOLOGY, user="dave")
    assert as_json.json()["choices"][0]["message"]["content"] == content
    assert len(upstream.received()) == 1


def test_reload_on_file_change_keeps_last_good_config(start_router, upstream, tmp_path):
    upstream.reset()
    path = tmp_path / "router.yaml"
    router = start_router(router_config(upstream.url), watch=True, path=path)
    assert chat(router, MATH, user="r1").headers["x-vsr-selected-model"] == "qwen-big"
    path.write_text(router_config(upstream.url, math_model="gpt-oss"))
    _wait_for_model(router, "gpt-oss")
    # An invalid file is rejected; the router keeps serving with the previous config.
    path.write_text(router_config(upstream.url, math_model="no-such-model"))
    time.sleep(1.0)
    assert httpx.get(f"{router.url}/ready").json()["config_version"] == 2
    assert chat(router, MATH, user="r3").headers["x-vsr-selected-model"] == "gpt-oss"
    metrics = httpx.get(f"{router.url}/metrics").text
    assert 'mixroute_router_config_reloads_total{result="rejected"}' in metrics


def _wait_for_model(router, model: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    i = 0
    while time.monotonic() < deadline:
        i += 1
        seen = chat(router, MATH, user=f"poll{i}").headers.get("x-vsr-selected-model")
        if seen == model:
            return
        time.sleep(0.2)
    raise AssertionError(f"config change not applied within {timeout}s (still routing to {seen})")


def test_milvus_store_evicts_oldest_and_filters_scope(tmp_path):
    from mixroute.router.cache import CachedAnswer
    from mixroute.router.cache.milvus import MilvusCacheStore

    store = MilvusCacheStore(str(tmp_path / "evict.db"), "evict_test", max_entries=2)
    vectors = np.eye(3, 8, dtype=np.float32)
    for i in range(3):
        store.store("scope-a", vectors[i], CachedAnswer(content=f"a{i}", model="m"), now=100.0 + i, ttl=60)
    assert len(store) == 2
    assert store.lookup("scope-a", vectors[0], 0.9, now=105.0) is None  # oldest evicted
    hit = store.lookup("scope-a", vectors[2], 0.9, now=105.0)
    assert hit is not None and hit.answer.content == "a2"
    assert store.lookup("scope-b", vectors[2], 0.9, now=105.0) is None
    assert store.lookup("scope-a", vectors[2], 0.9, now=170.0) is None  # expired
    store.close()


def test_milvus_store_lru_keeps_the_entry_that_was_hit(tmp_path):
    from mixroute.router.cache import CachedAnswer
    from mixroute.router.cache.milvus import MilvusCacheStore

    vectors = np.eye(3, 8, dtype=np.float32)
    for eviction, survivor, evicted in (("lru", 0, 1), ("fifo", 1, 0)):
        store = MilvusCacheStore(str(tmp_path / f"{eviction}.db"), "lru_test", 2, eviction)
        store.store("s", vectors[0], CachedAnswer(content="a0", model="m"), now=100.0, ttl=60)
        store.store("s", vectors[1], CachedAnswer(content="a1", model="m"), now=101.0, ttl=60)
        assert store.lookup("s", vectors[0], 0.9, now=102.0) is not None  # a0 is now the freshest use
        store.store("s", vectors[2], CachedAnswer(content="a2", model="m"), now=103.0, ttl=60)
        hit = store.lookup("s", vectors[survivor], 0.9, now=104.0)
        assert hit is not None and hit.answer.content == f"a{survivor}", eviction
        assert store.lookup("s", vectors[evicted], 0.9, now=104.0) is None, eviction
        store.close()


def test_milvus_collection_of_another_dimension_is_a_clear_error(tmp_path):
    from mixroute.errors import ConfigError
    from mixroute.router.cache import CachedAnswer
    from mixroute.router.cache.milvus import MilvusCacheStore

    uri = str(tmp_path / "dims.db")
    old = MilvusCacheStore(uri, "answers", 4)
    old.store("s", np.eye(1, 8, dtype=np.float32)[0], CachedAnswer(content="a", model="m"), now=1.0, ttl=60)
    old.close()
    MilvusCacheStore(uri, "answers", 4, dim=8).close()
    with pytest.raises(ConfigError, match="holds 8-d vectors but the router's embedder makes 6-d"):
        MilvusCacheStore(uri, "answers", 4, dim=6)
