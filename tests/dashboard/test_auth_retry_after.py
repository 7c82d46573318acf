"""``dashboard.auth.limit_attempts``'s Retry-After: the whole seconds left in the window, rounded
up, against the test Redis (windows are set with millisecond expiries to pin the rounding)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from dashboard import auth
from dashboard.problems import Problem
from tests.dashboard.conftest import REDIS_URL

KEY = auth.ATTEMPTS_KEY.format("siwe", "127.0.0.9")
LIMIT = 2


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.delete(KEY)
    yield client
    await client.delete(KEY)
    await client.aclose()


async def refused_after(redis: Redis) -> Problem:
    with pytest.raises(Problem) as refused:
        await auth.limit_attempts(redis, KEY, LIMIT, 60, "sign-ins")
    return refused.value


@pytest.mark.parametrize(
    ("left_ms", "retry_after"),
    [(400, "1"), (1_600, "2"), (2_900, "3"), (45_000, "45")],  # the test takes far less than 100 ms
)
async def test_limit_attempts_call_rounds_the_seconds_left_up(
    redis: Redis, left_ms: int, retry_after: str
) -> None:
    await redis.set(KEY, LIMIT, px=left_ms)  # the window is full, and ends in left_ms
    problem = await refused_after(redis)
    assert (problem.status, problem.code) == (429, "too_many_sign_ins")
    assert problem.headers == {"Retry-After": retry_after}
    assert problem.detail == f"too many sign-ins from your address; wait {retry_after} seconds"


async def test_limit_attempts_state_gives_a_window_back_to_a_key_that_lost_its_expiry(redis: Redis) -> None:
    await redis.set(KEY, LIMIT)  # counted, but its expiry was never set (a client gone in between)
    problem = await refused_after(redis)
    assert problem.headers == {"Retry-After": "60"}  # a whole new window, from this attempt
    assert 59_000 < await redis.pttl(KEY) <= 60_000


async def test_limit_attempts_call_lets_the_limit_itself_through(redis: Redis) -> None:
    for _ in range(LIMIT):
        await auth.limit_attempts(redis, KEY, LIMIT, 60, "sign-ins")
    assert int(await redis.get(KEY)) == LIMIT
    await refused_after(redis)
