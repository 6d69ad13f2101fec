"""What a connector does: report and set the replica count of each pool."""

from __future__ import annotations

from typing import Protocol

from mixroute.errors import MixrouteError
from mixroute.planner.policy import Pool


class ScaleError(MixrouteError):
    """A connector could not read or change a pool's size (API refused, process failed).
    The planner logs it and retries on its next tick; it never stops the planner."""


class Connector(Protocol):
    def pools(self) -> tuple[Pool, ...]:
        """The pools this connector can scale (a pool with no target is left alone)."""

    async def current_replicas(self, pool: Pool) -> int: ...

    async def set_replicas(self, pool: Pool, replicas: int) -> None: ...

    async def close(self) -> None: ...
