from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mixroute.errors import ConfigError
from mixroute.planner.connectors.base import ScaleError
from mixroute.planner.connectors.kubernetes import ApiAccess, KubernetesConnector
from mixroute.planner.load import LoadTable
from mixroute.planner.planner import Planner
from mixroute.planner.policy import PolicyConfig, ScalingPolicy
from mixroute.protocol.messages import LoadMetrics

from .fake_k8s_api import FakeKubeApi

SCALE = "/apis/apps/v1/namespaces/serving/deployments/{}/scale"


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi(namespace="serving", replicas={"mr-prefill": 1, "mr-decode": 2})
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


def connector(api: FakeKubeApi, token_file: Path, **deployments: str) -> KubernetesConnector:
    targets = deployments or {"prefill": "mr-prefill", "decode": "mr-decode"}
    return KubernetesConnector(ApiAccess(api.url, token_file, False), "serving", targets)  # type: ignore[arg-type]


async def test_reads_and_patches_the_scale_subresource(api: FakeKubeApi, token_file: Path) -> None:
    conn = connector(api, token_file)
    try:
        assert await conn.current_replicas("prefill") == 1
        assert await conn.current_replicas("decode") == 2
        await conn.set_replicas("decode", 4)
        await conn.set_replicas("prefill", 0)  # spec.replicas omitted at 0, as the API does
        assert await conn.current_replicas("prefill") == 0
    finally:
        await conn.close()
    assert api.replicas == {"mr-prefill": 0, "mr-decode": 4}
    assert ("PATCH", SCALE.format("mr-decode"), {"spec": {"replicas": 4}}) in api.requests
    patch_queries = [q for (m, _, _), q in zip(api.requests, api.queries) if m == "PATCH"]
    assert patch_queries == [{"fieldManager": ["mixroute-planner"]}] * 2


async def test_rotated_token_is_picked_up(api: FakeKubeApi, token_file: Path) -> None:
    conn = connector(api, token_file)
    try:
        assert await conn.current_replicas("decode") == 2
        api.token = "token-2"
        with pytest.raises(ScaleError, match="HTTP 401: Unauthorized"):
            await conn.current_replicas("decode")
        token_file.write_text("token-2")
        assert await conn.current_replicas("decode") == 2
    finally:
        await conn.close()


async def test_api_errors_become_scale_errors_with_the_api_message(
    api: FakeKubeApi, token_file: Path
) -> None:
    conn = connector(api, token_file, decode="missing")
    try:
        with pytest.raises(ScaleError, match='HTTP 404: deployments.apps "missing" not found'):
            await conn.current_replicas("decode")
        with pytest.raises(ScaleError, match="no Deployment configured for the prefill pool"):
            await conn.current_replicas("prefill")
        api.fail_with = 403
        with pytest.raises(ScaleError, match="HTTP 403: injected failure"):
            await conn.set_replicas("decode", 3)
    finally:
        await conn.close()


async def test_unreachable_api_is_a_scale_error(token_file: Path) -> None:
    down = FakeKubeApi(namespace="serving", replicas={})
    down.start()
    url = down.url
    down.stop()
    conn = KubernetesConnector(
        ApiAccess(url, token_file, False), "serving", {"decode": "d"}, timeout_s=2
    )
    try:
        with pytest.raises(ScaleError, match="ConnectError"):
            await conn.current_replicas("decode")
    finally:
        await conn.close()


def test_in_cluster_access_outside_a_pod_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="--connector local"):
        ApiAccess.in_cluster()


async def test_planner_tick_scales_the_deployment_from_load(
    api: FakeKubeApi, token_file: Path
) -> None:
    loads = LoadTable()
    for worker_id in (1, 2):
        loads.record(
            "decode",
            LoadMetrics(
                worker_id=worker_id,
                num_active_blocks=95,
                num_total_blocks=100,
                num_running=8,
                num_waiting=0,
            ),
        )
    policy = ScalingPolicy(PolicyConfig(min_replicas=1, max_replicas=3))
    conn = connector(api, token_file, decode="mr-decode")
    try:
        planner = Planner(policy, loads, conn, clock=lambda: 1000.0)
        (decision,) = await planner.tick()
        assert (decision.pool, decision.current, decision.desired) == ("decode", 2, 3)
        assert api.replicas["mr-decode"] == 3
        # Dry run: decides, does not patch.
        api.requests.clear()
        loads.record(
            "decode",
            LoadMetrics(
                worker_id=3,
                num_active_blocks=99,
                num_total_blocks=100,
                num_running=8,
                num_waiting=9,
            ),
        )
        dry = Planner(
            ScalingPolicy(PolicyConfig(min_replicas=1, max_replicas=5)),
            loads,
            conn,
            dry_run=True,
            clock=lambda: 0.0,
        )
        (decision,) = await dry.tick()
        assert decision.desired > 3
        assert [m for m, _, _ in api.requests] == ["GET"]
    finally:
        await conn.close()


async def test_planner_survives_a_failing_api(api: FakeKubeApi, token_file: Path) -> None:
    conn = connector(api, token_file)
    api.fail_with = 500
    try:
        planner = Planner(ScalingPolicy(PolicyConfig()), LoadTable(), conn)
        assert await planner.tick() == []
    finally:
        await conn.close()
