"""`mixroute planner` as a real process: load metrics published on a real nats-server
reach it, and it scales a Deployment through the (stand-in) Kubernetes API."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixroute.protocol import names
from mixroute.protocol.messages import LoadMetrics, encode
from mixroute.runtime.events import open_event_publisher
from mixroute.runtime.infra import NatsProcess

from ...unit.planner.fake_k8s_api import FakeKubeApi


@pytest.fixture
def nats_server() -> Iterator[NatsProcess]:
    server = NatsProcess.start()
    yield server
    server.stop()


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi(namespace="serving", replicas={"mr-decode": 2})
    fake.start()
    yield fake
    fake.stop()


async def test_planner_scales_up_from_nats_load(
    nats_server: NatsProcess, api: FakeKubeApi, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(api.token)
    log = (tmp_path / "planner.log").open("wb")
    cmd = [
        sys.executable, "-m", "mixroute", "planner",
        "--connector", "kubernetes", "--k8s-api-url", api.url, "--k8s-token-file", str(token),
        "--k8s-namespace", "serving", "--decode-deployment", "mr-decode",
        "--namespace", "ns-test", "--events", nats_server.url,
        "--discovery", f"file://{tmp_path / 'discovery'}",
        "--interval-s", "0.3", "--cooldown-up-s", "0", "--max-replicas", "3",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=subprocess.STDOUT)
    publisher = await open_event_publisher(nats_server.url, name="test-workers")
    subject = names.event_subject("ns-test", names.COMPONENT_BACKEND, names.LOAD_METRICS)
    try:
        deadline = time.monotonic() + 30
        while api.replicas["mr-decode"] != 3:
            assert proc.returncode is None, (tmp_path / "planner.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "planner.log").read_text()
            for worker_id in (1, 2):
                metrics = LoadMetrics(
                    worker_id=worker_id,
                    num_active_blocks=95,
                    num_total_blocks=100,
                    num_running=4,
                    num_waiting=0,
                )
                await publisher.publish(subject, encode(metrics))
            await asyncio.sleep(0.1)
        # Never past max, whatever the load keeps saying.
        await asyncio.sleep(1.0)
        assert api.replicas["mr-decode"] == 3
        patches = [body for method, _, body in api.requests if method == "PATCH"]
        assert patches == [{"spec": {"replicas": 3}}]
    finally:
        await publisher.close()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
            log.close()
    assert code == 0, (tmp_path / "planner.log").read_text()
    assert "scale up" in (tmp_path / "planner.log").read_text()
