from __future__ import annotations

import pytest

from mixroute.errors import ConfigError
from mixroute.planner.policy import PolicyConfig, PoolLoad, ScalingPolicy

CFG = PolicyConfig(
    min_replicas=1, max_replicas=5, high=0.8, low=0.3, waiting_per_worker_high=2.0,
    prefill_tokens_per_worker=1000, cooldown_up_s=30, cooldown_down_s=60, down_stable_s=20, max_step_up=2,
)  # fmt: skip


def decode_load(workers: int, utilization: float, waiting: int = 0) -> PoolLoad:
    total = 100 * workers
    return PoolLoad(
        num_workers=workers,
        num_active_blocks=int(total * utilization),
        num_total_blocks=total,
        num_waiting=waiting,
    )


def test_holds_inside_the_band() -> None:
    policy = ScalingPolicy(CFG)
    d = policy.decide("decode", 2, decode_load(2, 0.5), now=0)
    assert (d.desired, d.is_change) == (2, False)


def test_scales_up_on_kv_pressure_proportionally_capped_by_step() -> None:
    policy = ScalingPolicy(CFG)
    # 0.9 / 0.8 * 2 = 2.25 -> 3 workers.
    assert policy.decide("decode", 2, decode_load(2, 0.9), now=0).desired == 3
    # Far over: 1.0 utilisation on 1 worker with a long queue -> step capped at +2.
    policy = ScalingPolicy(CFG)
    assert policy.decide("decode", 1, decode_load(1, 1.0, waiting=50), now=0).desired == 2
    policy = ScalingPolicy(PolicyConfig(max_replicas=10, high=0.2, low=0.1, max_step_up=2))
    assert policy.decide("decode", 2, decode_load(2, 1.0), now=0).desired == 4


def test_queue_alone_triggers_scale_up() -> None:
    policy = ScalingPolicy(CFG)
    d = policy.decide("decode", 2, decode_load(2, 0.1, waiting=6), now=0)
    assert d.desired == 3
    assert "scale up" in d.reason


def test_cooldown_blocks_back_to_back_scale_ups() -> None:
    policy = ScalingPolicy(CFG)
    assert policy.decide("decode", 1, decode_load(1, 0.95), now=100).desired == 2
    assert policy.decide("decode", 2, decode_load(2, 0.95), now=110).desired == 2
    assert policy.decide("decode", 2, decode_load(2, 0.95), now=131).desired == 3


def test_never_above_max_or_below_min() -> None:
    policy = ScalingPolicy(CFG)
    assert policy.decide("decode", 5, decode_load(5, 1.0, waiting=100), now=0).desired == 5
    assert policy.decide("decode", 7, decode_load(7, 1.0), now=0).desired == 5
    policy = ScalingPolicy(CFG)
    assert policy.decide("decode", 0, PoolLoad(num_workers=0), now=0).desired == 1


def test_scale_down_needs_sustained_low_load_and_cooldown() -> None:
    policy = ScalingPolicy(CFG)
    idle = decode_load(3, 0.05)
    assert policy.decide("decode", 3, idle, now=0).desired == 3  # low starts now
    assert policy.decide("decode", 3, idle, now=19).desired == 3  # not stable long enough
    assert policy.decide("decode", 3, idle, now=21).desired == 2  # one step down
    idle2 = decode_load(2, 0.05)
    assert policy.decide("decode", 2, idle2, now=50).desired == 2  # cooldown after the change
    assert policy.decide("decode", 2, idle2, now=82).desired == 1
    assert policy.decide("decode", 1, decode_load(1, 0.0), now=500).desired == 1  # min


def test_a_burst_resets_the_low_timer() -> None:
    policy = ScalingPolicy(CFG)
    assert policy.decide("decode", 3, decode_load(3, 0.05), now=0).desired == 3
    assert policy.decide("decode", 3, decode_load(3, 0.5), now=15).desired == 3  # back in the band
    assert (
        policy.decide("decode", 3, decode_load(3, 0.05), now=25).desired == 3
    )  # timer restarted at 25
    assert policy.decide("decode", 3, decode_load(3, 0.05), now=46).desired == 2


def test_queued_requests_block_scale_down() -> None:
    policy = ScalingPolicy(CFG)
    for now in (0, 30, 100):
        assert policy.decide("decode", 3, decode_load(3, 0.05, waiting=1), now=now).desired == 3


def test_holds_while_workers_are_starting_then_decides_without_the_missing_ones() -> None:
    policy = ScalingPolicy(CFG)  # startup_grace_s 180 (default)
    d = policy.decide("decode", 3, decode_load(1, 1.0, waiting=20), now=0)
    assert d.desired == 3
    assert "1/3 workers reporting" in d.reason
    assert policy.decide("decode", 3, decode_load(2, 1.0, waiting=20), now=179).desired == 3
    # One worker never reports (crash-looping): after the grace the two that do decide.
    assert policy.decide("decode", 3, decode_load(2, 1.0, waiting=20), now=181).desired == 4
    # A change restarts the grace for the new worker.
    assert policy.decide("decode", 4, decode_load(2, 1.0, waiting=20), now=250).desired == 4


def test_prefill_pressure_is_tokens_in_flight_per_worker() -> None:
    policy = ScalingPolicy(CFG)
    busy = PoolLoad(num_workers=2, num_active_prefill_tokens=1800)  # 0.9 of 2 x 1000
    assert policy.pressure("prefill", busy) == pytest.approx(0.9)
    assert policy.decide("prefill", 2, busy, now=0).desired == 3
    # Pools keep separate cooldowns: decode may still scale right after prefill did.
    assert policy.decide("decode", 1, decode_load(1, 0.95), now=1).desired == 2


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "max replicas"),
        ({"low": 0.9, "high": 0.8}, "low < high"),
        ({"max_step_up": 0}, "max step up"),
        ({"min_replicas": -1}, "min replicas"),
    ],
)
def test_bad_config_is_rejected_with_a_reason(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        PolicyConfig(**kwargs)  # type: ignore[arg-type]
