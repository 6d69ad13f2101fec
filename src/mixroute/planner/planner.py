"""The planner loop: every interval, for each pool the connector scales, read the
current replica count and the pool's load, ask the policy, apply a change.

A connector failure (API down, process would not start) is logged and retried on the
next tick; the planner itself keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mixroute.logs import kv
from mixroute.planner.connectors.base import Connector, ScaleError
from mixroute.planner.load import LoadTable
from mixroute.planner.policy import Decision, ScalingPolicy

log = logging.getLogger(__name__)


class Planner:
    def __init__(
        self,
        policy: ScalingPolicy,
        loads: LoadTable,
        connector: Connector,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._loads = loads
        self._connector = connector
        self._dry_run = dry_run
        self._clock = clock

    async def tick(self) -> list[Decision]:
        decisions = []
        for pool in self._connector.pools():
            try:
                current = await self._connector.current_replicas(pool)
            except ScaleError as exc:
                log.warning("cannot read replicas %s", kv(pool=pool, error=exc))
                continue
            load = self._loads.snapshot(pool)
            decision = self._policy.decide(pool, current, load, self._clock())
            decisions.append(decision)
            fields = kv(
                pool=pool,
                current=current,
                desired=decision.desired,
                workers_reporting=load.num_workers,
            )
            if not decision.is_change:
                log.debug("%s %s", decision.reason, fields)
                continue
            log.info("%s %s%s", decision.reason, fields, " (dry run)" if self._dry_run else "")
            if self._dry_run:
                continue
            try:
                await self._connector.set_replicas(pool, decision.desired)
            except ScaleError as exc:
                log.warning("scaling failed %s", kv(pool=pool, desired=decision.desired, error=exc))
        return decisions

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick()
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
