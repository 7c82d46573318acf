"""Holding a deal's streams to its traffic allowance while they run, on every gateway node.

The market ends a deal once its finished streams carried its allowance; a single tunnel that
stays open could carry far more before it finishes. So each node adds what its streams of
allowance-bound deals carried since the last pass to one Redis counter per deal, every
``interval``, and reads back the total all nodes counted. When a deal's total reaches its
allowance the node cuts that deal's streams it relays and opens no new stream under it. A stream
overshoots by at most what it carries in one interval. The relays' own byte counters are read,
so the relay path itself does nothing more per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("ipsx.gateway.allowance")

COUNTER_TTL = 2 * 86_400  # seconds a deal's counter outlives its last update


def used_key(requester: str, deal_id: str) -> str:
    """Bytes every node's streams carried under the deal (same slot as the requester's routes)."""
    return f"ipsx:market:used:{{{requester}}}:{deal_id}"


@dataclass(slots=True, eq=False)
class Watched:
    """One stream of an allowance-bound deal: how to read what it carried and how to cut it."""

    requester: str
    deal_id: str
    gauge: Callable[[], int] | None = None  # bytes carried so far both ways, once relaying
    cut: Callable[[], None] | None = None
    counted: int = 0  # bytes already added to the deal's counter


class AllowanceGuard:
    def __init__(self, redis: Redis, *, interval: float = 0.5) -> None:
        self._redis = redis
        self.interval = interval
        self._live: dict[str, set[Watched]] = {}  # deal id → its streams on this node
        self._finished: dict[tuple[str, str], int] = {}  # (requester, deal) → bytes not yet added
        self._allowances: dict[str, int] = {}  # deal id → its allowance, for the deals seen here
        self._exhausted: set[str] = set()

    def watch(self, requester: str, deal_id: str, allowance: int) -> Watched:
        watched = Watched(requester, deal_id)
        self._live.setdefault(deal_id, set()).add(watched)
        if len(self._allowances) > 100_000:  # ended deals are never routed again: start afresh
            self._allowances = {deal: self._allowances.get(deal, 0) for deal in self._live}
        self._allowances[deal_id] = allowance
        return watched

    def done(self, watched: Watched, carried: int) -> None:
        """The stream finished having carried ``carried`` bytes: the rest is added next pass."""
        streams = self._live.get(watched.deal_id)
        if streams is not None:
            streams.discard(watched)
            if not streams:
                del self._live[watched.deal_id]
        rest = carried - watched.counted
        if rest > 0:
            key = (watched.requester, watched.deal_id)
            self._finished[key] = self._finished.get(key, 0) + rest
        watched.counted = max(watched.counted, carried)

    def exhausted(self, deal_id: str) -> bool:
        """Whether the deal carried its allowance, as this node last learned."""
        return deal_id in self._exhausted

    async def flush(self) -> None:
        """Add what the streams carried since the last pass; cut the deals that used their allowance."""
        deltas = dict(self._finished)
        self._finished.clear()
        for deal_id, streams in self._live.items():
            for watched in streams:
                key = (watched.requester, deal_id)
                now = watched.gauge() if watched.gauge is not None else 0
                # INCRBY 0 too: it reads the total the other nodes' streams brought the deal to
                deltas[key] = deltas.get(key, 0) + max(0, now - watched.counted)
                watched.counted = max(now, watched.counted)
        if not deltas:
            return
        keys = list(deltas)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for requester, deal_id in keys:
                    pipe.incrby(used_key(requester, deal_id), deltas[requester, deal_id])
                    pipe.expire(used_key(requester, deal_id), COUNTER_TTL)
                totals = (await pipe.execute())[::2]
        except (RedisError, OSError) as error:
            for key in keys:  # counted again next pass, not lost
                self._finished[key] = self._finished.get(key, 0) + deltas[key]
            log.warning("allowance counters not updated: %s", type(error).__name__)
            return
        for (_, deal_id), total in zip(keys, totals, strict=True):
            allowance = self._allowances.get(deal_id, 0)
            if allowance and int(total) >= allowance:
                self._exhaust(deal_id, int(total), allowance)

    def _exhaust(self, deal_id: str, total: int, allowance: int) -> None:
        if deal_id not in self._exhausted:
            log.info("deal %s carried %d of its %d bytes: cutting its streams", deal_id, total, allowance)
        self._exhausted.add(deal_id)
        if len(self._exhausted) > 100_000:  # ended deals are never routed again: forget the oldest
            self._exhausted = {deal_id}
        for watched in list(self._live.get(deal_id, ())):
            if watched.cut is not None:
                watched.cut()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            await self.flush()
