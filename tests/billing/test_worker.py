"""The billing worker against real Redis and PostgreSQL: exactly-once ingestion, dead letters, claims."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from billing.keys import USAGE_DEAD_STREAM, USAGE_GROUP, USAGE_STREAM
from billing.usage import UsagePublisher, encode, encode_batch
from billing.worker import WorkerSettings, ensure_group, ingest_once, run_worker
from tests.billing.conftest import REDIS_URL, make_event, make_report


@pytest.fixture
def settings(database_url: str) -> WorkerSettings:
    return WorkerSettings(redis_url=REDIS_URL, database_url=database_url, consumer="b", block_ms=50)


async def count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def pending(redis: Redis) -> int:
    info: Any = await redis.xpending(USAGE_STREAM, USAGE_GROUP)
    return int(info["pending"])


def test_worker_settings_hide_urls() -> None:
    settings = WorkerSettings(
        redis_url="redis://:redispass@host:6379/0", database_url="postgresql://u:dbpass@host/db"
    )
    assert "redispass" not in repr(settings)
    assert "dbpass" not in repr(settings)
    assert settings.consumer
    assert (settings.stream, settings.group) == ("ipsx:usage", "billing")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch = 1  # type: ignore[misc]


def test_worker_settings_from_env() -> None:
    settings = WorkerSettings.from_env({"IPSX_REDIS_URL": "redis://r", "IPSX_DATABASE_URL": "postgresql://d"})
    assert (settings.redis_url, settings.database_url) == ("redis://r", "postgresql://d")
    with pytest.raises(KeyError):
        WorkerSettings.from_env({})


async def test_ensure_group_is_idempotent(redis: Redis) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    groups: Any = await redis.xinfo_groups(USAGE_STREAM)
    assert [group["name"] for group in groups] == [USAGE_GROUP.encode()]


async def test_ingest_once_reads_entries_added_before_the_group(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await redis.xadd(USAGE_STREAM, encode(make_event()))  # type: ignore[arg-type]
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    assert await ingest_once(redis, pool, settings) == 1
    assert await count(pool, "usage_events") == 1


async def test_ingest_once_state(redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    event = make_event(opened_at=1_764_000_000.123456, closed_at=1_764_000_002.5)
    report = make_report(event_id=event.event_id, bytes_down=56000)
    publisher = UsagePublisher(redis)
    publisher.publish(event)
    publisher.publish(report)
    await publisher.flush()

    assert await ingest_once(redis, pool, settings) == 2
    row = await pool.fetchrow(
        "SELECT *, extract(epoch FROM opened_at)::float8 AS opened,"
        " extract(epoch FROM closed_at)::float8 AS closed FROM usage_events"
    )
    assert row["event_id"] == event.event_id
    assert (row["requester"], row["protocol"], row["target"]) == ("alice", "connect", "example.com:443")
    assert (row["bytes_up"], row["bytes_down"], row["attempts"]) == (1234, 56789, 1)
    assert row["opened"] == pytest.approx(event.opened_at, abs=1e-6)
    assert row["closed"] == pytest.approx(event.closed_at, abs=1e-6)
    metered = await pool.fetchrow("SELECT * FROM metered_streams WHERE event_id = $1", event.event_id)
    assert (metered["gateway_bytes_down"], metered["agent_bytes_down"]) == (56789, 56000)
    assert await pending(redis) == 0
    assert await redis.xlen(USAGE_STREAM) == 0  # acked entries are deleted by default


async def test_metered_streams_without_agent_report(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    event = make_event(deal_id=None)
    await redis.xadd(USAGE_STREAM, encode(event))  # type: ignore[arg-type]
    await ingest_once(redis, pool, settings)
    metered = await pool.fetchrow("SELECT * FROM metered_streams")
    assert metered["deal_id"] is None
    assert metered["gateway_bytes_up"] == 1234
    assert metered["agent_bytes_up"] is None


async def test_ingest_once_counts_each_event_once(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    event, report = make_event(), make_report()
    for item in (event, event, report, report):  # a publisher retry can send an item twice
        await redis.xadd(USAGE_STREAM, encode(item))  # type: ignore[arg-type]
    assert await ingest_once(redis, pool, settings) == 4
    assert await ingest_once(redis, pool, settings) == 0
    # The same event again, in a later batch.
    await redis.xadd(USAGE_STREAM, encode(event))  # type: ignore[arg-type]
    assert await ingest_once(redis, pool, settings) == 1
    assert await count(pool, "usage_events") == 1
    assert await count(pool, "agent_reports") == 1
    assert await pending(redis) == 0


async def test_ingest_once_keeps_the_stream_when_asked(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    await redis.xadd(USAGE_STREAM, encode(make_event()))  # type: ignore[arg-type]
    keep = dataclasses.replace(settings, delete_acked=False)
    assert await ingest_once(redis, pool, keep) == 1
    assert await redis.xlen(USAGE_STREAM) == 1
    assert await pending(redis) == 0


async def test_ingest_once_respects_batch(redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    for _ in range(7):
        await redis.xadd(USAGE_STREAM, encode(make_event()))  # type: ignore[arg-type]
    small = dataclasses.replace(settings, batch=3)
    assert [await ingest_once(redis, pool, small) for _ in range(4)] == [3, 3, 1, 0]
    assert await count(pool, "usage_events") == 7


async def test_ingest_once_dead_letters_malformed_entries(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    good = [make_event(), make_report()]
    bad_fields = encode(make_event())
    bad_fields["bytes_up"] = "-5"
    bad_fields["target"] = "secret-host.internal:443"
    await redis.xadd(USAGE_STREAM, encode(good[0]))  # type: ignore[arg-type]
    bad_id: Any = await redis.xadd(USAGE_STREAM, bad_fields)  # type: ignore[arg-type]
    garbage_id = await redis.xadd(USAGE_STREAM, {"hello": "world"})
    await redis.xadd(USAGE_STREAM, encode(good[1]))  # type: ignore[arg-type]

    assert await ingest_once(redis, pool, settings) == 4
    assert await count(pool, "usage_events") == 1
    assert await count(pool, "agent_reports") == 1
    assert await pending(redis) == 0
    dead: Any = await redis.xrange(USAGE_DEAD_STREAM)
    assert [fields[b"dead:source_id"] for _, fields in dead] == [bad_id, garbage_id]
    first = dead[0][1]
    assert first[b"bytes_up"] == b"-5"
    assert first[b"dead:stream"] == USAGE_STREAM.encode()
    assert b"bytes_up" in first[b"dead:reason"]
    assert dead[1][1][b"hello"] == b"world"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert bad_id.decode() in logged
    assert "secret-host" not in logged


async def test_ingest_once_dead_letters_the_bad_rows_of_a_batch(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    event, report = make_event(), make_report()
    entry = encode_batch([event, report])
    rows = json.loads(entry["items"])
    rows.insert(1, ["gateway", "not an event"])
    entry["items"] = json.dumps(rows)
    source: Any = await redis.xadd(USAGE_STREAM, entry)  # type: ignore[arg-type]

    assert await ingest_once(redis, pool, settings) == 3  # two records stored, one dead-lettered
    assert await count(pool, "usage_events") == 1
    assert await count(pool, "agent_reports") == 1
    dead: Any = await redis.xrange(USAGE_DEAD_STREAM)
    assert len(dead) == 1
    assert dead[0][1][b"dead:source_id"] == source
    assert json.loads(dead[0][1][b"item"]) == ["gateway", "not an event"]
    assert await pending(redis) == 0


async def test_ingest_once_dead_letters_a_row_with_a_time_out_of_range(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    event, report = make_event(), make_report()
    entry = encode_batch([event, report])
    rows = json.loads(entry["items"])
    rows[1][6:8] = [1e13, 1e13]  # an agent's finite times that to_timestamp cannot take
    entry["items"] = json.dumps(rows)
    source: Any = await redis.xadd(USAGE_STREAM, entry)  # type: ignore[arg-type]

    assert await ingest_once(redis, pool, settings) == 2
    assert await count(pool, "usage_events") == 1
    assert await count(pool, "agent_reports") == 0
    dead: Any = await redis.xrange(USAGE_DEAD_STREAM)
    assert [fields[b"dead:source_id"] for _, fields in dead] == [source]
    assert json.loads(dead[0][1][b"item"])[1] == report.event_id
    assert b"unix time" in dead[0][1][b"dead:reason"]
    assert await pending(redis) == 0


async def test_ingest_once_stores_a_refused_batch_one_record_at_a_time(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    poison = make_event(target="secret-host:443")
    good = [make_event() for _ in range(3)]
    report = make_report(event_id=good[0].event_id)
    first: Any = await redis.xadd(USAGE_STREAM, encode_batch([good[0], poison, report]))  # type: ignore[arg-type]
    await redis.xadd(USAGE_STREAM, encode_batch(good[1:]))  # type: ignore[arg-type]
    # A row that passes validation but that PostgreSQL refuses (a check constraint of this
    # test's own): the batch fails on this row.
    await pool.execute("ALTER TABLE usage_events ADD CONSTRAINT refused CHECK (target <> 'secret-host:443')")
    try:
        assert await ingest_once(redis, pool, settings) == 5
    finally:
        await pool.execute("ALTER TABLE usage_events DROP CONSTRAINT refused")
    stored = await pool.fetch("SELECT event_id FROM usage_events")
    assert {row["event_id"] for row in stored} == {event.event_id for event in good}
    assert await count(pool, "agent_reports") == 1
    assert await pending(redis) == 0
    dead: Any = await redis.xrange(USAGE_DEAD_STREAM)
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"dead:source_id"] == first
    assert fields[b"event_id"] == poison.event_id.encode()
    assert fields[b"kind"] == b"gateway"
    assert b"refused by the database" in fields[b"dead:reason"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert poison.event_id in logged
    assert "secret-host" not in logged


async def test_ingest_once_claims_a_dead_consumers_entries(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    events = [make_event() for _ in range(3)]
    for event in events:
        await redis.xadd(USAGE_STREAM, encode(event))  # type: ignore[arg-type]
    # Consumer "a" reads them and dies without acking.
    read: Any = await redis.xreadgroup(USAGE_GROUP, "a", {USAGE_STREAM: ">"}, count=10)
    assert len(read[0][1]) == 3
    assert await pending(redis) == 3
    patient = dataclasses.replace(settings, consumer="b")
    assert await ingest_once(redis, pool, patient) == 0  # not idle long enough (60 s default)
    eager = dataclasses.replace(settings, consumer="b", claim_idle_ms=0)
    assert await ingest_once(redis, pool, eager) == 3
    assert await pending(redis) == 0
    stored = await pool.fetch("SELECT event_id FROM usage_events")
    assert {row["event_id"] for row in stored} == {event.event_id for event in events}


async def test_ingest_once_leaves_entries_pending_when_the_database_fails(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    await redis.xadd(USAGE_STREAM, encode(make_event()))  # type: ignore[arg-type]
    closed = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    await closed.close()
    with pytest.raises(asyncpg.InterfaceError):
        await ingest_once(redis, closed, settings)
    assert await pending(redis) == 1
    retry = dataclasses.replace(settings, claim_idle_ms=0)
    assert await ingest_once(redis, pool, retry) == 1
    assert await count(pool, "usage_events") == 1
    assert await pending(redis) == 0


async def test_run_worker_ingests_until_stopped(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    try:
        publisher = UsagePublisher(redis)
        events = [make_event() for _ in range(20)]
        for event in events:
            publisher.publish(event)
        await publisher.flush()
        deadline = time.monotonic() + 10
        while await count(pool, "usage_events") < 20:
            assert time.monotonic() < deadline, "worker did not ingest in time"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=5)
    assert await pending(redis) == 0
