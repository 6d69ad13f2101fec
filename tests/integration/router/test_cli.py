"""`mixroute router` as a real process: flags, config errors, serving, clean shutdown."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mixroute.router.main import wants_screen_process
from tests.integration.router.conftest import free_port, router_config, wait_http
from tests.integration.router.test_proxy import MATH


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mixroute", "router", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_invalid_config_exits_with_the_fix(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("default_model: ghost\nmodels:\n  real: {}\n")
    proc = _cli("--config", str(path), "--port", str(free_port()))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "default_model: unknown model 'ghost'; add it under `models:`" in err


def test_port_in_use_exits_with_one_line_before_loading_models(tmp_path, upstream):
    import socket

    path = tmp_path / "router.yaml"
    path.write_text(router_config(upstream.url))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = _cli("--config", str(path), "--port", str(port))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use; stop what holds it or pass --port N" in err
    assert "Traceback" not in err and "loading router signals" not in err


@pytest.mark.slow  # loads the real signal models a second time, in the child process
def test_router_process_serves_and_stops_on_sigterm(tmp_path, upstream, signal_models):
    del signal_models  # only to skip when the real signals are not installed
    path = tmp_path / "router.yaml"
    path.write_text(router_config(upstream.url))
    port, extproc_port = free_port(), free_port()
    proc = _cli("--config", str(path), "--port", str(port), "--mode", "both", "--extproc-port", str(extproc_port))
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", timeout=150, proc=proc)
        body = {"model": "MoM", "messages": [{"role": "user", "content": MATH}]}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.headers["x-vsr-selected-model"] == "qwen-big"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("router did not stop within 20 s of SIGTERM")
    assert proc.returncode == 0, err
    assert "decision=forward category=math" in err and "pii=none" in err
    if wants_screen_process("auto"):  # screening ran in a child process, which stopped with the router
        child = re.search(r"PII detection and the sentence scan run in a child process pid=(\d+)", err)
        assert child is not None, err
        assert not Path(f"/proc/{child.group(1)}").exists()
