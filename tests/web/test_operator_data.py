"""The operator page's data that is judged by a clock, against the real Redis (a database of
its own: the session's web API serves from the web tests' one meanwhile)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from dashboard.web import operator_data as data
from pool.health import ExitHealth, reports
from tests.pool.conftest import host_clock

REDIS_URL = os.environ.get("IPSX_TEST_OPERATOR_DATA_REDIS_URL", "redis://127.0.0.1:6379/2")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.mark.parametrize("skew", [-(data.WINDOW_MINUTES + 5) * 60.0, (data.WINDOW_MINUTES + 5) * 60.0])
async def test_recent_exit_errors_call_counts_by_the_servers_clock_not_the_api_hosts(
    redis: Redis, skew: float
) -> None:
    gateway = ExitHealth(redis, "n1")
    gateway.dial_failed("a", "timeout", exit_fault=True)
    gateway.dial_failed("a", "timeout", exit_fault=True)
    gateway.dial_failed("b", "refused", exit_fault=False)
    await gateway.flush()
    health = await reports(redis, ["a", "b"])
    # An API host whose clock is off by more than the window still shows the errors of its window.
    with host_clock(skew):
        assert await data.recent_exit_errors(redis, health) == [("timeout", 2), ("refused", 1)]
