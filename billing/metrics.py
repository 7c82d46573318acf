"""Prometheus metrics: the listener the gateway and the worker serve them on, and the worker's own.

:func:`serving_metrics` is a small aiohttp application beside a process's real work, on a port of
its own: ``GET /metrics`` (Prometheus text or OpenMetrics, as the scraper asks), ``/healthz`` (the
process answers) and ``/readyz`` (its dependencies answer: 503 with the reasons otherwise). It has
no authentication: bind it to loopback or a private interface (the default is 127.0.0.1), never
to the Internet. It lives here because every long-running part imports ``billing`` already.

The worker's counters are plain ints in :class:`WorkerStats`, bumped per batch; the backlog of
the usage stream (length, entries pending or not yet delivered, age of the oldest one) is read
from Redis when scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ipsx.listen import listening
from pool.server_time import time_seconds

log = logging.getLogger(__name__)

SECONDS = 1.0
READY_TIMEOUT = 2 * SECONDS  # a dependency slower than this to answer a ping is not ready

#: What is not ready, one short reason each; empty when ready.
ReadyCheck = Callable[[], Awaitable[list[str]]]
Refresh = Callable[[], Awaitable[None]]


def metrics_handler(
    registry: CollectorRegistry, refresh: Refresh | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A ``GET /metrics`` handler for ``registry``; ``refresh`` is awaited before each scrape
    (collectors run synchronously, so whatever needs I/O is read into a snapshot first)."""
    expose = make_aiohttp_handler(registry)

    async def metrics(request: web.Request) -> web.StreamResponse:
        if refresh is not None:
            await refresh()
        return await expose(request)

    return metrics


def _health_app(registry: CollectorRegistry, ready: ReadyCheck, refresh: Refresh | None) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = await ready()
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry, refresh))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def serving_metrics(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    ready: ReadyCheck,
    refresh: Refresh | None = None,
    option: str = "--metrics-port",
) -> AsyncIterator[int]:
    """Serve /metrics, /healthz and /readyz on ``host:port``; yields the bound port (useful
    with port 0). Raises :class:`ipsx.listen.ListenError`, naming the command-line ``option``
    that set the port, when it cannot be bound."""
    runner = web.AppRunner(_health_app(registry, ready, refresh), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        with listening(option, host, port):
            await site.start()
        bound = int(runner.addresses[0][1])
        log.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)", host, bound)
        yield bound
    finally:
        await runner.cleanup()


async def redis_problem(redis: Redis) -> str | None:
    """Why Redis is not usable (it does not answer a PING in time), or None."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as error:
        return f"redis: {type(error).__name__}"
    return None


async def postgres_problem(pool: asyncpg.Pool) -> str | None:
    """Why PostgreSQL is not usable (``SELECT 1`` fails or is late), or None."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await pool.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
        return f"postgresql: {type(error).__name__}"
    return None


def new_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own (never the process-global one, so two apps in one process do not
    collide) with the process collector (CPU, memory, file descriptors) and ``collectors``."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


# the billing worker
RECORD_KINDS = ("event", "report")


@dataclass(slots=True)
class WorkerStats:
    """What one worker process did since it started; plain counters, bumped once per batch."""

    ingested: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_KINDS, 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RECORD_KINDS, 0))
    batches: int = 0
    dead_lettered: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("redis", "database", "network"), 0))
    last_batch_at: float | None = None  # unix time of the last batch stored

    def batch(self, kind: str, seen: int, stored: int) -> None:
        """``seen`` records of ``kind`` were read, ``stored`` of them were new to the database."""
        self.ingested[kind] += stored
        self.duplicates[kind] += seen - stored


@dataclass(frozen=True, slots=True)
class Backlog:
    """The usage stream as the consumer group sees it."""

    length: int  # entries in the stream
    pending: int  # read by a worker, not acked yet
    undelivered: int  # not read by any worker yet
    oldest_age: float  # seconds since the oldest pending or undelivered entry was added; 0 if none
    waiting: bool = field(default=False, compare=False)  # whether there is such an entry


def _entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def usage_backlog(redis: Redis, stream: str, group: str, *, now: float | None = None) -> Backlog:
    """The backlog of ``group`` on ``stream`` (zeros when neither exists yet); raises RedisError.

    Entry ids carry the Redis server's clock, so the oldest entry's age is measured by that clock
    too (``now`` overrides it), whatever the clock of the host asking."""
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return Backlog(0, 0, 0, 0.0)
    length = int(await redis.xlen(stream))
    wanted = group.encode()
    info = next((g for g in groups if g["name"] in (group, wanted)), None)
    oldest: list[int] = []
    pending = 0
    last = "0-0"  # no group yet: every entry is undelivered
    if info is not None:
        summary: Any = await redis.xpending(stream, group)
        pending = int(summary["pending"])
        if pending and summary["min"] is not None:
            oldest.append(_entry_ms(summary["min"]))
        delivered = info["last-delivered-id"]
        last = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
    first_new: Any = await redis.xrange(stream, min=f"({last}", count=1)
    if first_new:
        oldest.append(_entry_ms(first_new[0][0]))
    lag = None if info is None else info.get("lag")
    # Redis cannot always tell (entries were deleted): then the stream holds, with the worker's
    # default delete_acked, exactly the pending and the undelivered entries.
    undelivered = int(lag) if lag is not None else max(0, length - pending)
    age = 0.0
    if oldest:
        if now is None:
            now = time_seconds(await redis.time())
        age = max(0.0, now - min(oldest) / 1000)
    return Backlog(length, pending, undelivered, age, bool(oldest))


class WorkerCollector(Collector):
    """Exports a worker's :class:`WorkerStats` and the last :class:`Backlog` read."""

    def __init__(self, stats: WorkerStats, consumer: str) -> None:
        self.stats = stats
        self.consumer = consumer
        self.backlog: Backlog | None = None  # None: Redis did not answer at the last scrape

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        ingested = CounterMetricFamily(
            "ipsx_worker_records_ingested", "Usage records stored for the first time", labels=["kind"]
        )
        duplicates = CounterMetricFamily(
            "ipsx_worker_duplicates_skipped",
            "Usage records read again and skipped (already stored: at-least-once delivery)",
            labels=["kind"],
        )
        for kind in RECORD_KINDS:
            ingested.add_metric([kind], stats.ingested[kind])
            duplicates.add_metric([kind], stats.duplicates[kind])
        yield ingested
        yield duplicates
        yield CounterMetricFamily("ipsx_worker_batches", "Batches read and stored", value=stats.batches)
        yield CounterMetricFamily(
            "ipsx_worker_dead_lettered", "Malformed entries or rows moved aside", value=stats.dead_lettered
        )
        errors = CounterMetricFamily(
            "ipsx_worker_errors", "Ingestion rounds failed, by the service that failed", labels=["service"]
        )
        for service, count in stats.errors.items():
            errors.add_metric([service], count)
        yield errors
        if stats.last_batch_at is not None:
            yield GaugeMetricFamily(
                "ipsx_worker_last_batch_timestamp_seconds",
                "Unix time of the last batch stored",
                value=stats.last_batch_at,
            )
        backlog = self.backlog
        if backlog is not None:
            yield GaugeMetricFamily(
                "ipsx_usage_stream_length", "Entries in the usage stream", value=backlog.length
            )
            yield GaugeMetricFamily(
                "ipsx_usage_pending_entries",
                "Entries read by a worker and not acked yet",
                value=backlog.pending,
            )
            yield GaugeMetricFamily(
                "ipsx_usage_undelivered_entries",
                "Entries no worker has read yet",
                value=backlog.undelivered,
            )
            yield GaugeMetricFamily(
                "ipsx_usage_ingestion_lag_seconds",
                "Age of the oldest usage entry not ingested yet (0 when none waits)",
                value=backlog.oldest_age,
            )

    async def refresh(self, redis: Redis, stream: str, group: str) -> None:
        """Read the backlog for the coming scrape; on a Redis error it is left out of it."""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                self.backlog = await usage_backlog(redis, stream, group)
        except (RedisError, OSError, TimeoutError) as error:
            log.debug("usage backlog not read for the metrics: %s", type(error).__name__)
            self.backlog = None
