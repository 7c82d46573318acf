"""``ServerClock``: this process's estimate of the Redis server's clock, against a real Redis."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from pool.server_time import ServerClock, time_seconds


class Ticks:
    """A monotonic clock the test moves: seconds since some start, nothing to do with the date."""

    def __init__(self, now: float = 5.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_server_clock_reads_the_wall_clock_until_it_is_shown_the_servers() -> None:
    ticks = Ticks()
    clock = ServerClock(ticks, wall=lambda: 1_800_000_000.0)
    assert not clock.calibrated
    assert clock.now() == 1_800_000_000.0
    ticks.now += 2
    assert clock.now() == 1_800_000_002.0


def test_server_clock_counts_from_the_servers_answer_on_its_local_clock() -> None:
    ticks = Ticks()
    clock = ServerClock(ticks, wall=lambda: 1_800_000_000.0)
    # Asked at tick 5.0, answered at 5.2: the server's 1,700,000,000 is taken as read at 5.1.
    clock.observe(1_700_000_000.0, 5.0, 5.2)
    assert clock.calibrated
    assert clock.now() == pytest.approx(1_699_999_999.9)
    ticks.now = 65.1
    assert clock.now() == pytest.approx(1_700_000_060.0)
    assert clock.to_server(35.1) == pytest.approx(1_700_000_030.0)


async def test_server_clock_calibrate_call_tracks_the_redis_server(redis: Redis) -> None:
    clock = ServerClock()  # the defaults: the monotonic clock, the wall clock before an answer
    server = await clock.calibrate(redis)
    assert abs(server - time.time()) < 60  # the server on this machine: the same clock, roughly
    again = time_seconds(await redis.time())
    assert clock.now() == pytest.approx(again, abs=0.5)
    assert clock.local() == pytest.approx(time.monotonic(), abs=0.5)
