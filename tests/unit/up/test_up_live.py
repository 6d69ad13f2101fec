"""`mixroute up` end to end in under a minute: mocker engine, one aggregated worker, embedded
discovery and events, a tiny random model's tokenizer. Runs in CI (no marker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest


def _registered(discovery_dir: Path) -> dict[str, bytes]:
    from mixroute.runtime.discovery import open_discovery

    async def read() -> dict[str, bytes]:
        discovery = await open_discovery(f"file://{discovery_dir}")
        try:
            return await discovery.get_prefix("v1/")
        finally:
            await discovery.close()

    return asyncio.run(read())


@pytest.mark.timeout(240)
def test_up_serves_through_the_router_and_stops_cleanly(tmp_path: Path, up_stack) -> None:  # type: ignore[no-untyped-def]
    from mixroute.testing.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny-model")
    up = up_stack("--engine", "mocker", "--agg", "--model", str(model), timeout_s=180)
    assert sorted(up.child_pids()) == ["frontend", "router", "worker-both-0"]
    assert up.router_url in up.output

    response = httpx.post(
        f"{up.router_url}/v1/chat/completions",
        json={
            "model": "MoM",
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "max_tokens": 8,
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-model"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.headers["x-vsr-selected-model"] == "tiny-model"
    instances = [k for k in _registered(up.run_dir / "discovery") if k.startswith("v1/instances/")]
    assert len(instances) == 1

    assert up.interrupt() == 0, up.output
    assert "stopped." in up.output
    assert up.leftover_processes() == []
    assert [
        k
        for k in _registered(up.run_dir / "discovery")
        if k.startswith(("v1/instances/", "v1/kv_routers/"))
    ] == []
