"""The scaling policy: from one pool's load, how many workers that pool should have.

Pure and clock-free (the caller passes `now`), so it is tested without processes.

A pool is the prefill workers or the decode workers (decode includes aggregated "both"
workers: they register as the same `backend` component). Each pool has one *pressure*
figure in [0, ∞): for decode the KV-cache utilisation (active / total blocks), for
prefill the prompt tokens in flight relative to what the pool absorbs per step. Queued
requests are a second, direct signal: a queue means the pool is already short.

Hysteresis keeps the count from flapping:
- a band: scale up above `high`, down only below `low`, hold in between;
- time: a scale-up needs `cooldown_up_s` since the pool's last change, a scale-down
  needs the low condition to have held for `down_stable_s` and `cooldown_down_s` since the
  last change;
- steps: up by `max_step_up` at most (more when pressure says so), down by one.
`min_replicas`/`max_replicas` bound everything and are enforced at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from mixroute.errors import ConfigError

Pool = Literal["prefill", "decode"]
POOLS: tuple[Pool, ...] = ("prefill", "decode")


@dataclass(slots=True, frozen=True)
class PoolLoad:
    """The latest load of one pool, summed over the workers that reported recently."""

    num_workers: int
    num_active_blocks: int = 0
    num_total_blocks: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_active_prefill_tokens: int = 0

    @property
    def kv_utilization(self) -> float:
        return self.num_active_blocks / self.num_total_blocks if self.num_total_blocks else 0.0


@dataclass(slots=True, frozen=True)
class PolicyConfig:
    min_replicas: int = 1
    max_replicas: int = 4
    high: float = 0.8
    """Pressure above which the pool grows."""
    low: float = 0.3
    """Pressure below which (with an empty queue) the pool may shrink."""
    waiting_per_worker_high: float = 2.0
    """Queued requests per worker above which the pool grows whatever the pressure."""
    prefill_tokens_per_worker: int = 8192
    """Prompt tokens in flight one prefill worker handles at pressure 1.0."""
    cooldown_up_s: float = 30.0
    cooldown_down_s: float = 120.0
    down_stable_s: float = 60.0
    max_step_up: int = 2
    startup_grace_s: float = 180.0
    """After a change (and after the planner starts), hold while fewer workers report than
    run (they are loading their model); past this, decide on the workers that do report
    (one may be crash-looping)."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError(f"min replicas must be >= 0 (got {self.min_replicas})")
        if self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(
                f"max replicas ({self.max_replicas}) must be >= 1 and >= min replicas ({self.min_replicas})"
            )
        if not 0.0 <= self.low < self.high:
            raise ConfigError(
                f"need 0 <= low < high for the scaling band (got low={self.low}, high={self.high})"
            )
        if self.max_step_up < 1:
            raise ConfigError(f"max step up must be >= 1 (got {self.max_step_up})")
        if self.prefill_tokens_per_worker < 1:
            raise ConfigError("prefill tokens per worker must be >= 1")


@dataclass(slots=True, frozen=True)
class Decision:
    pool: Pool
    current: int
    desired: int
    reason: str

    @property
    def is_change(self) -> bool:
        return self.desired != self.current


@dataclass(slots=True)
class _PoolState:
    last_change_at: float = -math.inf
    low_since: float | None = None
    grace_from: float | None = None
    """Start of the current startup grace: the first decision (the planner just started,
    workers may be loading) or the last change."""


@dataclass(slots=True)
class ScalingPolicy:
    config: PolicyConfig
    _state: dict[Pool, _PoolState] = field(default_factory=lambda: {p: _PoolState() for p in POOLS})

    def pressure(self, pool: Pool, load: PoolLoad) -> float:
        if load.num_workers == 0:
            return 0.0
        if pool == "decode":
            return load.kv_utilization
        capacity = load.num_workers * self.config.prefill_tokens_per_worker
        return load.num_active_prefill_tokens / capacity

    def decide(self, pool: Pool, current: int, load: PoolLoad, now: float) -> Decision:
        """The replica count `pool` should have, given `current` (what the connector
        reports) and the load its reporting workers publish."""
        cfg, state = self.config, self._state[pool]
        bounded = min(max(current, cfg.min_replicas), cfg.max_replicas)
        if bounded != current:
            return self._apply(
                pool, current, bounded, now, f"outside [{cfg.min_replicas}, {cfg.max_replicas}]"
            )

        pressure = self.pressure(pool, load)
        waiting_per_worker = load.num_waiting / max(load.num_workers, 1)
        signals = f"pressure={pressure:.2f} waiting_per_worker={waiting_per_worker:.1f}"
        if state.grace_from is None:
            state.grace_from = now
        if load.num_workers < current and now - state.grace_from < cfg.startup_grace_s:
            # Workers still starting: their load is unknown, so hold.
            state.low_since = None
            return Decision(
                pool, current, current, f"hold: {load.num_workers}/{current} workers reporting"
            )

        if pressure > cfg.high or waiting_per_worker > cfg.waiting_per_worker_high:
            state.low_since = None
            if current >= cfg.max_replicas:
                return Decision(pool, current, current, f"hold at max: {signals}")
            if now - state.last_change_at < cfg.cooldown_up_s:
                return Decision(pool, current, current, f"hold (cooldown): {signals}")
            # Grow towards the count that brings pressure back under `high`.
            wanted = (
                math.ceil(current * pressure / cfg.high) if pressure > cfg.high else current + 1
            )
            step = min(max(wanted - current, 1), cfg.max_step_up)
            desired = min(current + step, cfg.max_replicas)
            return self._apply(pool, current, desired, now, f"scale up: {signals}")

        if pressure < cfg.low and load.num_waiting == 0 and current > cfg.min_replicas:
            if state.low_since is None:
                state.low_since = now
            stable_for = now - state.low_since
            if stable_for < cfg.down_stable_s or now - state.last_change_at < cfg.cooldown_down_s:
                return Decision(
                    pool, current, current, f"hold (low for {stable_for:.0f}s): {signals}"
                )
            return self._apply(pool, current, current - 1, now, f"scale down: {signals}")

        state.low_since = None
        return Decision(pool, current, current, f"hold: {signals}")

    def _apply(self, pool: Pool, current: int, desired: int, now: float, reason: str) -> Decision:
        state = self._state[pool]
        state.last_change_at = state.grace_from = now
        state.low_since = None
        return Decision(pool, current, desired, reason)
