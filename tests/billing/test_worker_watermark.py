"""The ingestion watermark against real Redis: the time up to which the billing workers' group has
ingested the usage stream, for the market to settle only deals whose usage is all in."""

from __future__ import annotations

import dataclasses
import math

import asyncpg
from redis.asyncio import Redis

from billing.keys import USAGE_GROUP, USAGE_STREAM
from billing.usage import encode
from billing.worker import WorkerSettings, ensure_group, ingest_once, ingested_until
from tests.billing.conftest import REDIS_URL, make_event

T = 1_764_000_000_000  # an entry id's milliseconds
NOW = 1_000.0  # the caller's clock: nowhere near the Redis server's, which stamps the entries


async def redis_now(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return seconds + micros / 1_000_000


async def assert_ingested_until(redis: Redis, entry_ms: int, now: float = NOW) -> None:
    """The watermark is the entry's age by the server's clock, counted back from the caller's."""
    before = await redis_now(redis)
    watermark = await ingested_until(redis, now)
    after = await redis_now(redis)
    added = entry_ms / 1000
    assert now - (after - added) - 1e-6 <= watermark <= now - (before - added) + 1e-6


async def add(redis: Redis, ms: int) -> None:
    await redis.xadd(USAGE_STREAM, encode(make_event()), id=f"{ms}-0")  # type: ignore[arg-type]


def worker(database_url: str, **changes: object) -> WorkerSettings:
    settings = WorkerSettings(redis_url=REDIS_URL, database_url=database_url, consumer="b", block_ms=0)
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


async def test_ingested_until_without_a_stream_is_unbounded(redis: Redis) -> None:
    assert await ingested_until(redis, NOW) == math.inf
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)  # an empty stream and its group
    assert await ingested_until(redis, NOW) == math.inf


async def test_ingested_until_before_the_group_exists_waits_for_every_entry(redis: Redis) -> None:
    # Workers create the group reading from the start: nothing present is ingested yet.
    await add(redis, T)
    await add(redis, T + 2000)
    await assert_ingested_until(redis, T)


async def test_ingested_until_stops_at_the_oldest_undelivered_entry(
    redis: Redis, pool: asyncpg.Pool, database_url: str
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    await add(redis, T)
    assert await ingest_once(redis, pool, worker(database_url)) == 1
    assert await ingested_until(redis, NOW) == math.inf  # acked and deleted
    await add(redis, T + 1500)
    await add(redis, T + 3000)
    await assert_ingested_until(redis, T + 1500)


async def test_ingested_until_stops_at_the_oldest_pending_entry(
    redis: Redis, pool: asyncpg.Pool, database_url: str
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    await add(redis, T)
    await add(redis, T + 1000)
    # Consumer "a" reads both and dies without acking; the last-delivered id is past them both.
    await redis.xreadgroup(USAGE_GROUP, "a", {USAGE_STREAM: ">"}, count=10)
    await add(redis, T + 2000)
    await assert_ingested_until(redis, T)
    # A live worker takes the undelivered entry; the dead one's wait to be claimed.
    assert await ingest_once(redis, pool, worker(database_url)) == 1
    await assert_ingested_until(redis, T)
    assert await ingest_once(redis, pool, worker(database_url, claim_idle_ms=0)) == 2
    assert await ingested_until(redis, NOW) == math.inf


async def test_ingested_until_ignores_acked_entries_kept_in_the_stream(
    redis: Redis, pool: asyncpg.Pool, database_url: str
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    await add(redis, T)
    assert await ingest_once(redis, pool, worker(database_url, delete_acked=False)) == 1
    assert await redis.xlen(USAGE_STREAM) == 1
    assert await ingested_until(redis, NOW) == math.inf


async def test_ingested_until_counts_the_age_on_the_servers_clock(redis: Redis) -> None:
    # An entry added a minute ago by the server's clock, asked about from a host whose clock runs
    # an hour ahead: ingested up to about a minute before that host's now, not an hour before it.
    added_ms = int(await redis_now(redis) * 1000) - 60_000
    await add(redis, added_ms)
    await assert_ingested_until(redis, added_ms, now=await redis_now(redis) + 3600)
