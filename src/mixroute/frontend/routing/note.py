"""What the router did with one request, for the HTTP response headers.

A routing backend fills the note while it routes (the decision is made before the first
frame, so a streaming response can send it in its headers); the HTTP app turns it into
`x-mixroute-*` headers. A backend that does not route (a worker's own `--http-port` API)
leaves it empty and no headers are sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixroute.protocol.names import COMPONENT_PREFILL

WORKER_ID_HEADER = "x-mixroute-worker-id"
PREFILL_WORKER_ID_HEADER = "x-mixroute-prefill-worker-id"
ROUTE_US_HEADER = "x-mixroute-route-us"
CACHED_BLOCKS_HEADER = "x-mixroute-cached-blocks"


@dataclass(slots=True)
class RouteNote:
    worker_id: int | None = None
    """The worker that serves the request (the decode worker when disaggregated)."""
    prefill_worker_id: int | None = None
    route_us: float = 0.0
    """Microseconds spent choosing workers (every choice this request needed, retries included)."""
    cached_blocks: int = 0
    """Leading prompt blocks the router believed the chosen worker held."""

    def record(self, pool: str, worker_id: int, route_us: float, cached_blocks: int) -> None:
        self.route_us += route_us
        if pool == COMPONENT_PREFILL:
            self.prefill_worker_id = worker_id
        else:
            self.worker_id = worker_id
            self.cached_blocks = cached_blocks

    def headers(self) -> dict[str, str]:
        """Response headers (none when nothing was routed). Worker ids are hex, as in the logs."""
        if self.worker_id is None:
            return {}
        out = {
            WORKER_ID_HEADER: f"{self.worker_id:x}",
            ROUTE_US_HEADER: f"{self.route_us:.1f}",
            CACHED_BLOCKS_HEADER: str(self.cached_blocks),
        }
        if self.prefill_worker_id is not None:
            out[PREFILL_WORKER_ID_HEADER] = f"{self.prefill_worker_id:x}"
        return out
