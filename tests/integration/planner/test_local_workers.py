"""The local connector with real `mixroute worker --engine mocker` processes: the planner
starts them, sees their load on the ZeroMQ event plane and their model in file
discovery, and stops them cleanly (their discovery records go with them)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from mixroute.planner.connectors.local import LocalConnector
from mixroute.planner.load import LoadTable, subject_prefix
from mixroute.planner.planner import Planner
from mixroute.planner.policy import PolicyConfig, ScalingPolicy
from mixroute.protocol import names
from mixroute.runtime.discovery import open_discovery
from mixroute.runtime.events import open_event_subscriber


async def test_planner_runs_local_mocker_workers(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'discovery'}"
    discovery = await open_discovery(url, lease_ttl_s=3)
    subscriber = await open_event_subscriber("zmq", discovery=discovery, namespace="ns-plan")
    loads = LoadTable(model="mock")
    tasks = [
        asyncio.create_task(loads.consume(subscriber.subscribe(subject_prefix("ns-plan")))),
        asyncio.create_task(
            loads.consume_instances(discovery.watch_prefix(names.instances_prefix("ns-plan")))
        ),
    ]
    connector = LocalConnector(
        {"decode": ["--engine", "mocker", "--served-model-name", "mock"]},
        ["--namespace", "ns-plan", "--events", "zmq", "--discovery", url],
        log_dir=tmp_path / "logs",
    )
    planner = Planner(ScalingPolicy(PolicyConfig(min_replicas=2, max_replicas=2)), loads, connector)
    try:
        (decision,) = await planner.tick()
        assert (decision.current, decision.desired) == (0, 2)
        assert await connector.current_replicas("decode") == 2

        async def reporting(n: int) -> None:
            while loads.snapshot("decode").num_workers != n:
                await asyncio.sleep(0.2)

        try:
            await asyncio.wait_for(reporting(2), 90)
        except TimeoutError:
            logs = "\n".join(p.read_text()[-1500:] for p in (tmp_path / "logs").iterdir())
            raise AssertionError(f"workers never reported load:\n{logs}") from None
        (decision,) = await planner.tick()
        assert not decision.is_change  # inside the band: hold
        assert len(await discovery.get_prefix(names.instances_prefix("ns-plan"))) == 2
    finally:
        await connector.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # Stopped workers deregister (SIGTERM: they revoke their lease on the way out).
    assert await discovery.get_prefix(names.instances_prefix("ns-plan")) == {}
    await subscriber.close()
    await discovery.close()
