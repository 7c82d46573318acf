"""Live exits in Redis: registration, heartbeats, indexes and removal."""

from __future__ import annotations

import time
from dataclasses import asdict, fields

import redis.asyncio as aioredis

from pool import keys
from pool.models import ExitInfo

_FIELDS = tuple(f.name for f in fields(ExitInfo))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode_exit(raw: dict[bytes, bytes]) -> ExitInfo | None:
    data = {k.decode(): v.decode() for k, v in raw.items()}
    if not all(name in data for name in _FIELDS):
        return None
    return ExitInfo(
        exit_id=data["exit_id"], provider=data["provider"], node=data["node"], bind=data["bind"],
        country=data["country"], region=data["region"], city=data["city"],
        asn=int(data["asn"] or 0), type=data["type"],
    )


class ExitRegistry:
    """The pool's view of which exits are live, their attributes, and which node holds them.

    An exit is live while its heartbeat is younger than ``heartbeat_ttl`` seconds; a provider
    that vanishes without a goodbye drops out of selection within that time, and ``sweep``
    removes its records.
    """

    def __init__(self, redis: aioredis.Redis, *, heartbeat_ttl: float = 10.0) -> None:
        self._redis = redis
        self.heartbeat_ttl = heartbeat_ttl

    async def register(self, exits: list[ExitInfo]) -> None:
        now = _now_ms()
        async with self._redis.pipeline(transaction=True) as pipe:
            for info in exits:
                record = {k: str(v) for k, v in asdict(info).items()}
                pipe.hset(keys.exit_hash(info.exit_id), mapping=record)  # type: ignore[arg-type]
                for attribute, value in info.attributes():
                    pipe.sadd(keys.index(attribute, value), info.exit_id)
                pipe.sadd(keys.node_exits(info.node), info.exit_id)
                pipe.zadd(keys.alive(), {info.exit_id: now})
            await pipe.execute()

    async def heartbeat(self, exit_ids: list[str]) -> None:
        if exit_ids:
            now = _now_ms()
            await self._redis.zadd(keys.alive(), dict.fromkeys(exit_ids, now))

    async def deregister(self, exits: list[ExitInfo]) -> None:
        if not exits:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for info in exits:
                self._queue_removal(pipe, info)
            await pipe.execute()

    @staticmethod
    def _queue_removal(pipe: aioredis.client.Pipeline, info: ExitInfo) -> None:
        pipe.delete(keys.exit_hash(info.exit_id))
        for attribute, value in info.attributes():
            pipe.srem(keys.index(attribute, value), info.exit_id)
        pipe.srem(keys.node_exits(info.node), info.exit_id)
        pipe.zrem(keys.alive(), info.exit_id)

    async def get(self, exit_id: str) -> ExitInfo | None:
        return _decode_exit(await self._redis.hgetall(keys.exit_hash(exit_id)))

    async def live_ids(self) -> list[str]:
        floor = _now_ms() - int(self.heartbeat_ttl * 1000)
        return [m.decode() for m in await self._redis.zrangebyscore(keys.alive(), floor, "+inf")]

    async def list_live(self) -> list[ExitInfo]:
        found = [await self.get(exit_id) for exit_id in await self.live_ids()]
        return [info for info in found if info is not None]

    async def sweep(self) -> int:
        """Remove exits whose heartbeat expired (their node died); returns how many."""
        floor = _now_ms() - int(self.heartbeat_ttl * 1000)
        stale = [m.decode() for m in await self._redis.zrangebyscore(keys.alive(), "-inf", f"({floor}")]
        removed = 0
        for exit_id in stale:
            info = await self.get(exit_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                if info is not None:
                    self._queue_removal(pipe, info)
                else:
                    pipe.zrem(keys.alive(), exit_id)
                await pipe.execute()
            removed += 1
        return removed
