"""Choosing a worker for a request: KV-aware cost, round-robin or random.

KV mode, per DESIGN.md, with one departure, a weight on the prefill term:

    prefill_blocks(w) = (active prefill tokens(w) + prompt tokens - overlap(w) * block_size) / block_size
    decode_blocks(w)  = active blocks(w) + blocks this request adds (prompt blocks not cached)
    cost(w)           = overlap_weight * prefill_blocks(w) + decode_blocks(w)

The lowest cost wins (ties broken at random); with a temperature > 0 the choice is
sampled from softmax(-cost / temperature) over costs normalised to [0, 1], which spreads
load at the price of some cache hits.

`overlap_weight` (constructor argument, else env `MIXROUTE_KV_OVERLAP_WEIGHT`, else
`DEFAULT_OVERLAP_WEIGHT`): with 1.0 the cost is DESIGN.md's. A cached prefix of P blocks
lowers the cost by (overlap_weight + 1) * P, while each request already running on a
worker raises it by its distinct blocks; at 1.0 a worker one long request busier than
another loses its prefix group to it, so the group's prefix ends up computed and cached
on several workers (bench/results/routing-tuning.md measures this).

Prefix work in flight: when requests on a worker are computing blocks this prompt shares
(same group, sent moments earlier, no first token yet), the worker will not compute them
again for it (the engine scheduler defers it until they are cached), so those tokens are
taken out of the worker's queued prefill for this request:

    prefill_blocks(w) = (max(active prefill tokens(w) - shared in flight(w) * block_size, 0)
                         + prompt tokens - overlap(w) * block_size) / block_size

Without it a group's second request in a cold burst saw its sibling's whole prompt as
someone else's queue, went to a worker one request less busy, and computed the prefix a
second time there (bench/results/routing.md: the cold-start burst).

Active blocks are deduplicated (see load.py): requests sharing a prefix on one worker
count the shared blocks once, as the worker itself does.

Predicted blocks: a prompt routed to a worker is recorded as cached there for
`predict_ttl_s` (10 s), because its KV events only arrive after its prefill; without this
the same group's next request, arriving meanwhile, sees no overlap anywhere. Recorded for
every worker, not only live ones: a worker turns live when its first events arrive, which
drops its approximate records below, while requests sent to it just before are still
being computed (in a cold-start burst a group's second request then went elsewhere).

Approximate mode: a worker whose KV events have never arrived is scored from this
frontend's own past decisions (the prompt blocks it sent there), each forgotten after a
TTL, because without events nothing would tell us when the worker evicts them.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from mixroute.frontend.routing.indexer import KvIndexer
from mixroute.frontend.routing.load import LoadTracker, chain_keys

log = logging.getLogger(__name__)

RouterMode = Literal["kv", "round-robin", "random"]
ROUTER_MODES: tuple[str, ...] = ("kv", "round-robin", "random")


DEFAULT_OVERLAP_WEIGHT = 4.0
"""Weight of `prefill_blocks` in the KV cost (1.0 would be DESIGN.md's cost). Tuned on
Workload A (bench/results/routing-tuning.md): 1 -> 49% cache hit, 3 -> 59%, 4 -> 59-63%,
6 -> 63% with a more uneven spread; 67.5% is the most that run allows."""
OVERLAP_WEIGHT_ENV = "MIXROUTE_KV_OVERLAP_WEIGHT"
PREDICT_TTL_S = 10.0
PREDICT_STRIDE = 8
"""Predictions keep every 8th block (and the last): matches are found to within 7 blocks."""


def default_overlap_weight() -> float:
    """`MIXROUTE_KV_OVERLAP_WEIGHT` when set (a clear error if it is not a number), else the default."""
    raw = os.environ.get(OVERLAP_WEIGHT_ENV, "").strip()
    if not raw:
        return DEFAULT_OVERLAP_WEIGHT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{OVERLAP_WEIGHT_ENV} must be a number >= 0, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"{OVERLAP_WEIGHT_ENV} must be a number >= 0, got {raw!r}")
    return value


class HashedPrompt(Protocol):
    """What routing needs of a prompt (`mixroute.frontend.preprocess.PreparedPrompt`)."""

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def local_hashes(self) -> Sequence[int]: ...

    @property
    def seq_hashes(self) -> Sequence[int]: ...


@dataclass(slots=True, frozen=True)
class Decision:
    worker_id: int
    overlap_blocks: int
    """Leading prompt blocks the chosen worker already holds (as far as the router knows)."""
    num_prompt_blocks: int
    cost: float


class ApproxTracker:
    """Own decisions as a stand-in for KV events, each expiring after `ttl_s`."""

    def __init__(self, ttl_s: float = 120.0) -> None:
        self.ttl_s = ttl_s
        self.index = KvIndexer()
        self._expiry: dict[int, dict[int, float]] = {}
        """Worker -> block -> expiry (per worker, so forgetting a worker is one pop)."""
        self._heap: list[tuple[float, int, list[int]]] = []

    def record(self, worker_id: int, local_hashes: Sequence[int], seq_hashes: Sequence[int], now: float) -> None:
        if not seq_hashes:
            return
        self.expire(now)
        expire_at = now + self.ttl_s
        self.index.store_blocks(worker_id, local_hashes, seq_hashes)
        expiry = self._expiry.setdefault(worker_id, {})
        for h in seq_hashes:
            expiry[h] = expire_at
        heapq.heappush(self._heap, (expire_at, worker_id, list(seq_hashes)))

    def expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, worker_id, hashes = heapq.heappop(heap)
            expiry = self._expiry.get(worker_id)
            if expiry is None:
                continue  # forgotten since
            gone = [h for h in hashes if expiry.get(h, math.inf) <= now]
            for h in gone:
                del expiry[h]
            self.index.remove_blocks(worker_id, gone)

    def forget_worker(self, worker_id: int) -> None:
        # Called when a worker's first KV events arrive, for each worker of a cold-start
        # burst: one pop, not a scan of every recorded block.
        self.index.remove_worker(worker_id)
        self._expiry.pop(worker_id, None)


class PredictedBlocks:
    """Prompt blocks just sent to workers, by chain key (`load.chain_keys`), each
    forgotten `ttl_s` after its latest recording.

    A flat map rather than a radix index, holding every `stride`-th block of a prompt and
    its last one: recording costs one dict store per kept block, which matters because
    every decision records, and a lookup costs a binary search per worker (see
    `find_matches`). A match is rounded down to a kept block (at most stride - 1 short)."""

    def __init__(self, ttl_s: float, stride: int = PREDICT_STRIDE) -> None:
        self.ttl_s = ttl_s
        self.stride = stride
        self._blocks: dict[int, dict[int, float]] = {}
        """Chain key -> worker -> expiry."""
        self._queue: deque[tuple[float, int, list[int]]] = deque()

    def _kept(self, n: int) -> list[int]:
        """Positions of an n-block prompt that predictions keep."""
        stride = self.stride
        kept = list(range(stride - 1, n, stride))
        if n % stride:
            kept.append(n - 1)
        return kept

    def record(self, worker_id: int, keys: list[int], now: float) -> None:
        self.expire(now)
        stride = self.stride
        keys = keys[stride - 1 :: stride] + ([keys[-1]] if len(keys) % stride else [])
        expire_at = now + self.ttl_s
        blocks = self._blocks
        for k in keys:
            holders = blocks.get(k)
            if holders is None:
                blocks[k] = {worker_id: expire_at}
            else:
                holders[worker_id] = expire_at
        self._queue.append((expire_at, worker_id, keys))

    def expire(self, now: float) -> None:
        queue, blocks = self._queue, self._blocks
        while queue and queue[0][0] <= now:
            _, worker_id, keys = queue.popleft()
            for k in keys:
                holders = blocks.get(k)
                if holders is not None and holders.get(worker_id, math.inf) <= now:
                    del holders[worker_id]
                    if not holders:
                        del blocks[k]

    def find_matches(self, keys: Sequence[int]) -> dict[int, int]:
        """Leading blocks of `keys` predicted per worker (workers with 0 omitted).

        A chain key names its whole prefix, and every recording (and so every refresh and
        expiry) covers a prefix of its chain, so the positions of `keys` a worker holds are
        always a leading run: a binary search per worker finds its end."""
        blocks = self._blocks
        kept = self._kept(len(keys))
        first = blocks.get(keys[kept[0]]) if kept else None
        if not first:
            return {}
        scores: dict[int, int] = {}
        for w in first:
            lo, hi = 0, len(kept) - 1  # kept[lo] is held; the run ends at or before hi
            while lo < hi:
                mid = (lo + hi + 1) // 2
                holders = blocks.get(keys[kept[mid]])
                if holders is not None and w in holders:
                    lo = mid
                else:
                    hi = mid - 1
            scores[w] = kept[lo] + 1
        return scores

    def forget_worker(self, worker_id: int) -> None:
        for k in [k for k, holders in self._blocks.items() if worker_id in holders]:
            holders = self._blocks[k]
            del holders[worker_id]
            if not holders:
                del self._blocks[k]


class WorkerSelector:
    """Picks a worker among candidates. Owned by the event loop thread (see indexer)."""

    def __init__(
        self,
        mode: RouterMode = "kv",
        *,
        block_size: int = 16,
        temperature: float = 0.0,
        approx_ttl_s: float = 120.0,
        rng: random.Random | None = None,
        name: str = "backend",
        use_kv_events: bool = True,
        overlap_weight: float | None = None,
        predict_ttl_s: float = PREDICT_TTL_S,
    ) -> None:
        if mode not in ROUTER_MODES:
            raise ValueError(f"unknown router mode {mode!r}; use one of {', '.join(ROUTER_MODES)}")
        self.mode = mode
        self.block_size = block_size
        self.overlap_weight = default_overlap_weight() if overlap_weight is None else overlap_weight
        if not self.overlap_weight >= 0:
            raise ValueError(f"overlap weight must be >= 0, got {self.overlap_weight}")
        self.temperature = temperature
        self.name = name
        self.use_kv_events = use_kv_events
        """False: never trust KV events or dumps; route from own decisions (approximate mode)."""
        self.indexer = KvIndexer()
        self.loads = LoadTracker()
        self.approx = ApproxTracker(approx_ttl_s)
        self.predicted = PredictedBlocks(predict_ttl_s)
        """Blocks just sent to live workers, until their KV events can have arrived."""
        self.live_workers: set[int] = set()
        """Workers whose KV events have arrived over the event plane (no approximation)."""
        self._rng = rng or random.Random()
        self._rr_next = 0

    # ---- membership ----

    def add_worker(self, worker_id: int) -> None:
        if self.use_kv_events:
            self.indexer.add_worker(worker_id)  # asks for the worker's dump
        self.loads.get(worker_id)

    def remove_worker(self, worker_id: int) -> None:
        self.indexer.remove_worker(worker_id)
        self.loads.remove_worker(worker_id)
        self.approx.forget_worker(worker_id)
        self.predicted.forget_worker(worker_id)
        self.live_workers.discard(worker_id)

    def mark_live(self, worker_id: int) -> None:
        if self.use_kv_events and worker_id not in self.live_workers:
            self.live_workers.add(worker_id)
            self.approx.forget_worker(worker_id)

    # ---- decisions ----

    def overlaps(
        self, worker_ids: Sequence[int], local_hashes: Sequence[int], keys: Sequence[int] | None = None
    ) -> dict[int, int]:
        """Leading prompt blocks each worker holds: KV events, else own decisions (workers
        without events), raised by predictions (`keys`: the prompt's
        `chain_keys`, computed here when not given)."""
        if keys is None:
            keys = chain_keys(local_hashes)
        scores = self.indexer.find_matches(local_hashes, keys)
        now = time.monotonic()
        if len(self.live_workers) < len(worker_ids):
            self.approx.expire(now)
            for w, n in self.approx.index.find_matches(local_hashes, keys).items():
                if w not in self.live_workers and n > scores.get(w, 0):
                    scores[w] = n
        self.predicted.expire(now)
        for w, n in self.predicted.find_matches(keys).items():
            if n > scores.get(w, 0):
                scores[w] = n
        return scores

    def select(self, request_id: str, worker_ids: Sequence[int], prompt: HashedPrompt) -> Decision:
        """Choose a worker and account the request to it (release with `finish`)."""
        local_hashes = prompt.local_hashes
        num_prompt_tokens = len(prompt.token_ids)
        if not worker_ids:
            raise LookupError("no workers to choose from")
        bs = self.block_size
        num_prompt_blocks = -(-num_prompt_tokens // bs)
        keys = chain_keys(local_hashes)
        if self.mode == "round-robin":
            ordered = sorted(worker_ids)
            worker_id = ordered[self._rr_next % len(ordered)]
            self._rr_next += 1
            overlap = self.overlaps([worker_id], local_hashes, keys).get(worker_id, 0) if local_hashes else 0
            cost = 0.0
        elif self.mode == "random":
            worker_id = self._rng.choice(list(worker_ids))
            overlap = self.overlaps([worker_id], local_hashes, keys).get(worker_id, 0) if local_hashes else 0
            cost = 0.0
        else:
            scores = self.overlaps(worker_ids, local_hashes, keys) if local_hashes else {}
            worker_id, cost = self._lowest_cost(worker_ids, scores, num_prompt_tokens, num_prompt_blocks, keys)
            overlap = scores.get(worker_id, 0)
        self.loads.add_request(
            request_id,
            worker_id,
            prefill_tokens=max(num_prompt_tokens - overlap * bs, 0),
            num_blocks=num_prompt_blocks - overlap,
            block_hashes=keys,
            num_cached_blocks=overlap,
        )
        # The approximate indexes are private, so the cheap chain keys stand in for the
        # sequence hashes there.
        if worker_id not in self.live_workers:
            self.approx.record(worker_id, local_hashes, keys, time.monotonic())
        if self.mode == "kv" and overlap < len(local_hashes):
            self.predicted.record(worker_id, keys, time.monotonic())
        if log.isEnabledFor(logging.INFO):
            log.info(
                "routed pool=%s request_id=%s worker_id=%x cached blocks: %d prompt_blocks=%d cost=%.2f mode=%s",
                self.name, request_id, worker_id, overlap, num_prompt_blocks, cost, self.mode,
            )  # fmt: skip
        return Decision(worker_id, overlap, num_prompt_blocks, cost)

    def _lowest_cost(
        self,
        worker_ids: Sequence[int],
        scores: dict[int, int],
        num_prompt_tokens: int,
        num_prompt_blocks: int,
        keys: Sequence[int] = (),
    ) -> tuple[int, float]:
        bs = self.block_size
        weight = self.overlap_weight
        costs: list[float] = []
        for w in worker_ids:
            load = self.loads.get(w)
            overlap = scores.get(w, 0)
            queued = load.prefill_tokens
            if queued > 0 and overlap > 0 and load.prefill_refs:
                # Blocks in flight there are predicted there, so they lie within the overlap.
                queued = max(queued - load.prefilling_shared(keys[:overlap]) * bs, 0)
            prefill_blocks = (queued + num_prompt_tokens - overlap * bs) / bs
            decode_blocks = load.active_blocks + num_prompt_blocks - overlap
            costs.append(weight * prefill_blocks + decode_blocks)
        if self.temperature > 0 and len(costs) > 1:
            lo, hi = min(costs), max(costs)
            span = (hi - lo) or 1.0
            weights = [math.exp(-((c - lo) / span) / self.temperature) for c in costs]
            i = self._rng.choices(range(len(costs)), weights=weights)[0]
            return worker_ids[i], costs[i]
        best = min(costs)
        ties = [i for i, c in enumerate(costs) if c == best]
        i = ties[0] if len(ties) == 1 else self._rng.choice(ties)
        return worker_ids[i], best

    def first_token(self, request_id: str) -> None:
        self.loads.mark_prefill_done(request_id)

    def finish(self, request_id: str) -> None:
        self.loads.finish_request(request_id)
