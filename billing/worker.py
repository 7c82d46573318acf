"""The billing worker: ingests the usage stream into PostgreSQL, each event exactly once.

Delivery from Redis is at-least-once (a consumer group; entries are acked only after the database
commit, and a dead worker's pending entries are claimed by another), and the inserts are
idempotent by ``event_id`` (``ON CONFLICT DO NOTHING``), which together make ingestion
exactly-once. Entries that cannot be decoded go to a dead-letter stream so they never block the
others; so do the records PostgreSQL refuses: a batch refused for one row's data is stored again
one record at a time, and only the refused records are dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from billing import db
from billing.errors import MalformedEvent
from billing.keys import USAGE_DEAD_STREAM, USAGE_GROUP, USAGE_STREAM
from billing.metrics import (
    WorkerCollector,
    WorkerStats,
    new_registry,
    postgres_problem,
    redis_problem,
    serving_metrics,
    usage_backlog,
)
from billing.usage import AgentReport, UsageEvent, decode_entry, encode
from pool.client import redis_from_url

log = logging.getLogger(__name__)

SECONDS = 1.0
PROGRESS_INTERVAL = 60 * SECONDS
_RETRY_INITIAL = 0.5 * SECONDS
_RETRY_MAX = 10 * SECONDS

_Entry = tuple[bytes, Mapping[bytes, bytes] | None]
_Dead = tuple[bytes, Mapping[bytes, bytes], str]  # (source entry id, fields, reason)

# A row's own data the database refuses (class 22 data exceptions, class 23 constraint
# violations): storing the batch again without that row succeeds.
_ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker reaches Redis and PostgreSQL and reads the usage stream.

    Both URLs may carry passwords, so neither is in the repr. ``delete_acked`` removes entries
    from the stream once ingested, which keeps it from growing without bound; turn it off if
    another consumer group also reads the stream. ``metrics_port`` (None: off) serves /metrics,
    /healthz and /readyz on ``metrics_host``, unauthenticated: keep it on loopback or a private
    network.
    """

    redis_url: str = field(repr=False)
    database_url: str = field(repr=False)
    stream: str = USAGE_STREAM
    group: str = USAGE_GROUP
    consumer: str = field(default_factory=_default_consumer)
    batch: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    dead_stream: str = USAGE_DEAD_STREAM
    delete_acked: bool = True
    db_pool: int = 2  # one batch is stored at a time; the second connection covers a reconnect
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Settings from ``IPSX_REDIS_URL`` and ``IPSX_DATABASE_URL``; raises ``KeyError`` if unset."""
        env = os.environ if environ is None else environ
        return cls(redis_url=env["IPSX_REDIS_URL"], database_url=env["IPSX_DATABASE_URL"])


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) unless it exists; new groups start at the beginning."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise


async def ingested_until(
    redis: Redis, now: float, stream: str = USAGE_STREAM, group: str = USAGE_GROUP
) -> float:
    """The time, on the caller's clock whose reading is ``now``, up to which every entry of
    ``stream`` has been ingested by ``group``.

    That is when the oldest entry the group has not acked was added: read but pending (a worker
    may have died holding it), or not delivered yet (:func:`billing.metrics.usage_backlog`). Its
    age is taken by the Redis server's clock, which stamps the entries, and then counted back from
    ``now``: the caller's clock need not agree with the server's. ``math.inf`` when no entry
    waits: an entry added later gets a later id. Without the group, every entry present waits for
    it (workers create it reading from the start); without the stream, nothing waits. Raises
    RedisError.
    """
    backlog = await usage_backlog(redis, stream, group)
    if not backlog.waiting:
        return math.inf
    return now - backlog.oldest_age


_INSERT_EVENTS = """
INSERT INTO usage_events (event_id, deal_id, requester, provider, exit_id, node, protocol, target,
                          bytes_up, bytes_down, opened_at, closed_at, outcome, attempts)
SELECT e.event_id, e.deal_id, e.requester, e.provider, e.exit_id, e.node, e.protocol, e.target,
       e.bytes_up, e.bytes_down, to_timestamp(e.opened_at), to_timestamp(e.closed_at), e.outcome, e.attempts
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::int8[], $10::int8[], $11::float8[], $12::float8[], $13::text[], $14::int4[])
     AS e(event_id, deal_id, requester, provider, exit_id, node, protocol, target,
          bytes_up, bytes_down, opened_at, closed_at, outcome, attempts)
ON CONFLICT (event_id) DO NOTHING
"""

_INSERT_REPORTS = """
INSERT INTO agent_reports (event_id, provider, exit_id, bytes_up, bytes_down, opened_at, closed_at, outcome)
SELECT r.event_id, r.provider, r.exit_id, r.bytes_up, r.bytes_down,
       to_timestamp(r.opened_at), to_timestamp(r.closed_at), r.outcome
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::float8[], $7::float8[],
            $8::text[])
     AS r(event_id, provider, exit_id, bytes_up, bytes_down, opened_at, closed_at, outcome)
ON CONFLICT (event_id) DO NOTHING
"""

_EVENT_COLUMNS = (
    "event_id",
    "deal_id",
    "requester",
    "provider",
    "exit_id",
    "node",
    "protocol",
    "target",
    "bytes_up",
    "bytes_down",
    "opened_at",
    "closed_at",
    "outcome",
    "attempts",
)
_REPORT_COLUMNS = (
    "event_id",
    "provider",
    "exit_id",
    "bytes_up",
    "bytes_down",
    "opened_at",
    "closed_at",
    "outcome",
)


def _columns(items: Sequence[object], names: Sequence[str]) -> list[list[Any]]:
    return [[getattr(item, name) for item in items] for name in names]


def _inserted(status: str) -> int:
    """The row count of an ``INSERT 0 <rows>`` command status."""
    return int(status.rsplit(" ", 1)[-1])


async def _store(
    pool: asyncpg.Pool, events: Sequence[UsageEvent], reports: Sequence[AgentReport]
) -> tuple[int, int]:
    """Store what is new; returns the events and the reports that were (the others were stored
    before: delivery is at-least-once)."""
    stored_events = stored_reports = 0
    async with pool.acquire() as conn, conn.transaction():
        if events:
            stored_events = _inserted(await conn.execute(_INSERT_EVENTS, *_columns(events, _EVENT_COLUMNS)))
        if reports:
            stored_reports = _inserted(
                await conn.execute(_INSERT_REPORTS, *_columns(reports, _REPORT_COLUMNS))
            )
    return stored_events, stored_reports


async def _store_each(
    pool: asyncpg.Pool, records: Sequence[tuple[bytes, UsageEvent | AgentReport]]
) -> tuple[int, int, list[_Dead]]:
    """Store ``records`` ((source entry id, record) pairs) one per transaction; returns the events
    and the reports stored, and the records the database refused for their data as dead letters
    (``encode`` fields; the reason is the error's type and SQLSTATE, as its message may quote the
    row). Other errors propagate."""
    stored_events = stored_reports = 0
    refused: list[_Dead] = []
    for source, item in records:
        try:
            if isinstance(item, UsageEvent):
                stored_events += (await _store(pool, [item], []))[0]
            else:
                stored_reports += (await _store(pool, [], [item]))[1]
        except _ROW_ERRORS as exc:
            fields = {key.encode(): value.encode() for key, value in encode(item).items()}
            refused.append(
                (source, fields, f"refused by the database: {type(exc).__name__} ({exc.sqlstate})")
            )
    return stored_events, stored_reports, refused


async def _store_batch(
    pool: asyncpg.Pool,
    settings: WorkerSettings,
    events: Mapping[str, tuple[bytes, UsageEvent]],
    reports: Mapping[str, tuple[bytes, AgentReport]],
    dead: list[_Dead],
) -> tuple[int, int]:
    """Store the batch (``event_id`` -> (source entry id, record)); returns the events and the
    reports stored. A batch refused for a row's data is stored again one record at a time: one bad
    row must not hold back the others, nor be retried forever. The records the database refuses
    are logged by id and appended to ``dead``."""
    try:
        return await _store(
            pool, [event for _, event in events.values()], [report for _, report in reports.values()]
        )
    except _ROW_ERRORS as exc:
        log.warning(
            "a usage batch of %d record(s) was refused (%s); storing them one at a time",
            len(events) + len(reports),
            type(exc).__name__,
        )
    stored_events, stored_reports, refused = await _store_each(pool, [*events.values(), *reports.values()])
    for source, fields, reason in refused:
        log.warning(
            "usage record %s of entry %s is malformed (%s); moved to %s",
            fields[b"event_id"].decode(),
            source.decode(),
            reason,
            settings.dead_stream,
        )
    dead.extend(refused)
    return stored_events, stored_reports


async def _read(redis: Redis, settings: WorkerSettings) -> list[_Entry]:
    # Entries a dead (or stuck) consumer read but never acked come first.
    claimed: Any = await redis.xautoclaim(
        settings.stream,
        settings.group,
        settings.consumer,
        min_idle_time=settings.claim_idle_ms,
        start_id="0-0",
        count=settings.batch,
    )
    entries: list[_Entry] = list(claimed[1])
    room = settings.batch - len(entries)
    if room > 0:
        block = settings.block_ms if not entries and settings.block_ms > 0 else None
        response: Any = await redis.xreadgroup(
            settings.group, settings.consumer, {settings.stream: ">"}, count=room, block=block
        )
        for _stream, stream_entries in response or ():
            entries.extend(stream_entries)
    return entries


async def _dead_letter(
    redis: Redis, settings: WorkerSettings, entry_id: bytes, fields: Mapping[bytes, bytes], reason: str
) -> None:
    record = dict(fields)
    record[b"dead:source_id"] = entry_id
    record[b"dead:stream"] = settings.stream.encode()
    record[b"dead:reason"] = reason.encode()
    await redis.xadd(settings.dead_stream, record)  # type: ignore[arg-type]


async def ingest_once(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings, stats: WorkerStats | None = None
) -> int:
    """Read one batch from the usage stream, store it, and ack it; return the records handled.

    A record is one usage event or agent report (an entry may hold a batch of them), or one
    malformed entry or row.

    Malformed entries are logged by id, copied to ``settings.dead_stream`` and acked; so are the
    records the database refuses for their data (see :func:`_store_batch`). Entries are acked only
    after the database commit: if storing fails otherwise the error propagates and the entries
    stay pending, to be claimed again after ``claim_idle_ms``. ``stats`` counts what was stored,
    skipped as a duplicate and dead-lettered.
    """
    entries = await _read(redis, settings)
    if not entries:
        return 0
    events: dict[str, tuple[bytes, UsageEvent]] = {}
    reports: dict[str, tuple[bytes, AgentReport]] = {}
    dead: list[_Dead] = []
    handled = seen_events = seen_reports = 0
    for entry_id, fields in entries:
        if fields is None:  # deleted from the stream while pending: nothing to ingest
            continue
        try:
            items, bad_rows = decode_entry(fields)
        except MalformedEvent as exc:
            log.warning(
                "usage entry %s is malformed (%s); moved to %s",
                entry_id.decode(),
                exc.reason,
                settings.dead_stream,
            )
            dead.append((entry_id, fields, exc.reason))
            handled += 1
            continue
        handled += len(items) + len(bad_rows)
        for row, reason in bad_rows:
            log.warning(
                "a row of usage entry %s is malformed (%s); moved to %s",
                entry_id.decode(),
                reason,
                settings.dead_stream,
            )
            dead.append((entry_id, {b"item": row.encode()}, reason))
        for item in items:
            if isinstance(item, UsageEvent):
                events.setdefault(item.event_id, (entry_id, item))
                seen_events += 1
            else:
                reports.setdefault(item.event_id, (entry_id, item))
                seen_reports += 1
    stored = (0, 0)
    if events or reports:
        stored = await _store_batch(pool, settings, events, reports, dead)
    for entry_id, fields, reason in dead:
        await _dead_letter(redis, settings, entry_id, fields, reason)
    ids = [entry_id for entry_id, _ in entries]
    pipe = redis.pipeline(transaction=False)
    pipe.xack(settings.stream, settings.group, *ids)
    if settings.delete_acked:
        pipe.xdel(settings.stream, *ids)
    await pipe.execute()
    if stats is not None:
        stats.batch("event", seen_events, stored[0])
        stats.batch("report", seen_reports, stored[1])
        stats.dead_lettered += len(dead)
        stats.batches += 1
        stats.last_batch_at = time.time()
    return handled


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


def _failed_service(error: Exception) -> str:
    if isinstance(error, RedisError):
        return "redis"
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
        return "database"
    return "network"  # an OSError from either client


@contextlib.asynccontextmanager
async def _metrics(
    settings: WorkerSettings, redis: Redis, pool: asyncpg.Pool, stats: WorkerStats
) -> AsyncIterator[None]:
    """Serve the worker's metrics and health beside the ingestion when ``metrics_port`` is set."""
    if settings.metrics_port is None:
        yield
        return
    collector = WorkerCollector(stats, settings.consumer)

    async def ready() -> list[str]:
        problems = [await redis_problem(redis), await postgres_problem(pool)]
        return [problem for problem in problems if problem is not None]

    async with serving_metrics(
        settings.metrics_host,
        settings.metrics_port,
        new_registry(collector),
        ready=ready,
        refresh=lambda: collector.refresh(redis, settings.stream, settings.group),
    ):
        yield


async def run_worker(settings: WorkerSettings, *, stop: asyncio.Event | None = None) -> None:
    """Ingest the usage stream until ``stop`` is set (forever without one).

    Redis and database errors are logged and retried with backoff. The schema must already be
    migrated (:func:`billing.db.migrate`).
    """
    stop = stop if stop is not None else asyncio.Event()
    pool = await db.connect(settings.database_url, min_size=1, max_size=settings.db_pool)
    redis = redis_from_url(settings.redis_url)
    log.info("billing worker %s reading %s as group %s", settings.consumer, settings.stream, settings.group)
    handled = 0
    window_start = time.monotonic()
    delay = _RETRY_INITIAL
    need_group = True
    stats = WorkerStats()
    try:
        async with _metrics(settings, redis, pool, stats):
            while not stop.is_set():
                try:
                    if need_group:
                        await ensure_group(redis, settings.stream, settings.group)
                        need_group = False
                    handled += await ingest_once(redis, pool, settings, stats)
                except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                        need_group = True  # the stream or group was deleted under us
                    stats.errors[_failed_service(exc)] += 1
                    log.warning(
                        "usage ingestion failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay
                    )
                    await _wait(stop, delay)
                    delay = min(_RETRY_MAX, delay * 2)
                    continue
                delay = _RETRY_INITIAL
                now = time.monotonic()
                if now - window_start >= PROGRESS_INTERVAL:
                    per_minute = handled * 60 / (now - window_start)
                    log.info(
                        "billing worker %s: %d entries in the last %.0fs (%.0f/min)",
                        settings.consumer,
                        handled,
                        now - window_start,
                        per_minute,
                    )
                    handled, window_start = 0, now
    finally:
        await pool.close()
        await redis.aclose()
    log.info("billing worker %s stopped", settings.consumer)
