"""The billing worker's /metrics, /healthz and /readyz, scraped over HTTP while it ingests for real."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from billing.keys import USAGE_GROUP, USAGE_STREAM
from billing.metrics import Backlog, new_registry, redis_problem, serving_metrics, usage_backlog
from billing.usage import UsagePublisher
from billing.worker import WorkerSettings, ensure_group, run_worker
from tests.billing.conftest import REDIS_URL, make_event, make_report

WAIT = 15.0  # seconds before waiting for the worker is given up (a failure, not a measurement)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


@contextlib.asynccontextmanager
async def running_worker(settings: WorkerSettings) -> AsyncIterator[str]:
    """The worker with its metrics on a free port; yields their base URL once they answer."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    url = f"http://127.0.0.1:{settings.metrics_port}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(WAIT):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                assert not worker.done(), "the worker stopped"
                await asyncio.sleep(0.05)
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=10)


async def scrape_until(url: str, name: str, expected: float, **labels: str) -> str:
    """The /metrics text once ``name{labels}`` reads ``expected``."""
    async with httpx.AsyncClient() as client, asyncio.timeout(WAIT):
        while True:
            text = (await client.get(f"{url}/metrics")).text
            found = samples(text).get((name, frozenset(labels.items())))
            if found == expected:
                return text
            await asyncio.sleep(0.05)


@pytest.fixture
def settings(database_url: str) -> WorkerSettings:
    return WorkerSettings(
        redis_url=REDIS_URL, database_url=database_url, consumer="m", block_ms=50, metrics_port=free_port()
    )


async def test_worker_metrics_count_ingested_duplicate_and_dead_records(
    redis: Redis, pool: asyncpg.Pool, settings: WorkerSettings
) -> None:
    publisher = UsagePublisher(redis)
    events = [make_event() for _ in range(5)]
    async with running_worker(settings) as url:
        for item in [*events, make_report(), make_report()]:
            publisher.publish(item)
        await publisher.flush()
        await scrape_until(url, "ipsx_worker_records_ingested_total", 5, kind="event")
        publisher.publish(events[0])  # delivered again, as after a gateway's retried XADD
        await publisher.flush()
        await redis.xadd(USAGE_STREAM, {"v": "not a usage entry"})
        text = await scrape_until(url, "ipsx_worker_duplicates_skipped_total", 1, kind="event")
        text = await scrape_until(url, "ipsx_worker_dead_lettered_total", 1)

    assert value(text, "ipsx_worker_records_ingested_total", kind="event") == 5
    assert value(text, "ipsx_worker_records_ingested_total", kind="report") == 2
    assert value(text, "ipsx_worker_duplicates_skipped_total", kind="report") == 0
    assert value(text, "ipsx_worker_batches_total") >= 2  # the first records, then the duplicate
    assert value(text, "ipsx_worker_errors_total", service="redis") == 0
    assert value(text, "ipsx_worker_last_batch_timestamp_seconds") <= time.time()
    # everything acked (and deleted): nothing waits
    assert value(text, "ipsx_usage_stream_length") == 0
    assert value(text, "ipsx_usage_pending_entries") == 0
    assert value(text, "ipsx_usage_ingestion_lag_seconds") == 0
    assert int(await pool.fetchval("SELECT count(*) FROM usage_events")) == 5


async def test_worker_health_and_readiness(redis: Redis, settings: WorkerSettings) -> None:
    async with running_worker(settings) as url, httpx.AsyncClient() as client:
        health = await client.get(f"{url}/healthz")
        ready = await client.get(f"{url}/readyz")
        missing = await client.get(f"{url}/nothing")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert missing.status_code == 404


async def test_readyz_names_the_service_that_does_not_answer(closed_port: int) -> None:
    down = Redis(host="127.0.0.1", port=closed_port, retry=Retry(NoBackoff(), 0))

    async def ready() -> list[str]:
        problem = await redis_problem(down)
        return [] if problem is None else [problem]

    try:
        async with (
            serving_metrics("127.0.0.1", 0, new_registry(), ready=ready) as port,
            httpx.AsyncClient() as client,
        ):
            answer = await client.get(f"http://127.0.0.1:{port}/readyz")
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        await down.aclose()
    assert answer.status_code == 503
    assert answer.json() == {"status": "not ready", "problems": ["redis: ConnectionError"]}
    assert health.status_code == 200  # alive, just not ready


async def test_usage_backlog_state(redis: Redis) -> None:
    now_ms = 1_764_000_000_000
    assert await usage_backlog(redis, USAGE_STREAM, USAGE_GROUP) == Backlog(0, 0, 0, 0.0)
    for offset in (0, 10_000, 20_000):  # entries added 30, 20 and 10 seconds before "now"
        await redis.xadd(USAGE_STREAM, {"v": "x"}, id=f"{now_ms - 30_000 + offset}-0")
    now = now_ms / 1000
    # no consumer group yet: everything is undelivered
    assert await usage_backlog(redis, USAGE_STREAM, USAGE_GROUP, now=now) == Backlog(3, 0, 3, 30.0)
    await ensure_group(redis, USAGE_STREAM, USAGE_GROUP)
    assert await usage_backlog(redis, USAGE_STREAM, USAGE_GROUP, now=now) == Backlog(3, 0, 3, 30.0)
    read: Any = await redis.xreadgroup(USAGE_GROUP, "c", {USAGE_STREAM: ">"}, count=1)
    assert await usage_backlog(redis, USAGE_STREAM, USAGE_GROUP, now=now) == Backlog(3, 1, 2, 30.0)
    await redis.xack(USAGE_STREAM, USAGE_GROUP, read[0][1][0][0])
    assert await usage_backlog(redis, USAGE_STREAM, USAGE_GROUP, now=now) == Backlog(3, 0, 2, 20.0)
    await redis.xreadgroup(USAGE_GROUP, "c", {USAGE_STREAM: ">"}, count=2)
    assert await usage_backlog(redis, USAGE_STREAM, USAGE_GROUP, now=now) == Backlog(3, 2, 0, 20.0)
