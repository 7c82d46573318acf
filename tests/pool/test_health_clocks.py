"""Exit health on hosts whose clocks disagree, against a real Redis: quarantines, their lifting on
reconnection, the counters' ages and the API's labels all go by the Redis server's clock.

Each gateway node gets a clock of its own, set off the real time by the test and still unless the
test moves it (the Redis server runs on this machine: the real time is its clock). ``host_clock``
skews the API process's clock.
"""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from pool.health import Breaker, ExitHealth, reports
from tests.pool.conftest import host_clock
from tests.pool.test_health import SETTINGS, Clock, fail, node, remaining, server_time

BEHIND, AHEAD = -30.0, 30.0  # seconds; half the 60 s half-life, three times the 10 s cool-down


def host(skew: float) -> Clock:
    """A gateway host's clock, ``skew`` seconds off the real time."""
    return Clock(time.time() + skew)


@pytest.mark.parametrize(
    ("writer_skew", "reader_skew"),
    [(BEHIND, 0.0), (AHEAD, 0.0), (0.0, BEHIND), (0.0, AHEAD)],
    ids=["writer-behind", "writer-ahead", "reader-behind", "reader-ahead"],
)
async def test_a_quarantine_lasts_its_cool_down_for_every_node(
    redis: Redis, writer_skew: float, reader_skew: float
) -> None:
    writer = node(redis, host(writer_skew), "n1")
    reader_clock = host(reader_skew)
    reader = node(redis, reader_clock, "n2")
    fail(writer, "a", 3)
    await writer.flush()
    assert remaining(writer, "a") == pytest.approx(10, abs=1e-3)
    reader.state("a")
    await reader.refresh()
    assert reader.state("a") is Breaker.OPEN
    left = remaining(reader, "a")
    assert 9 < left <= 10  # the 10 s the writer set, less the milliseconds since the trip
    assert reader.quarantined_until("a") == writer.quarantined_until("a")
    reader_clock.advance(9)
    assert reader.state("a") is Breaker.OPEN
    reader_clock.advance(1)
    assert reader.state("a") is Breaker.HALF_OPEN
    found = (await reports(redis, ["a"], SETTINGS))["a"]
    assert found["state"] == "quarantined"
    assert found["quarantined_until"] == writer.quarantined_until("a")


async def test_a_node_ahead_lifts_a_quarantine_for_every_node_when_the_agent_is_back(redis: Redis) -> None:
    on_time = node(redis, host(0.0), "n1")
    fail(on_time, "a", 3)
    await on_time.flush()
    ahead = node(redis, host(AHEAD), "n2")
    ahead.state("a")
    await ahead.refresh()
    assert ahead.state("a") is Breaker.OPEN  # its clock says 30 s later: the server's says 0
    ahead.reconnected(["a"])  # the exit's agent logged in again through this node
    await ahead.sync()
    on_time.state("a")
    await on_time.refresh()
    assert on_time.state("a") is Breaker.HALF_OPEN  # its next selection probes it
    assert (await reports(redis, ["a"], SETTINGS))["a"]["state"] == "probing"


async def test_the_report_judges_by_the_servers_clock_not_the_api_hosts(redis: Redis) -> None:
    gateway = ExitHealth(redis, "n1", settings=SETTINGS)  # a node whose clock is right
    for _ in range(4):
        gateway.dial_ok("a", 0.1)
    fail(gateway, "a", 3)
    await gateway.flush()
    until = gateway.quarantined_until("a")
    for skew in (AHEAD, BEHIND):
        with host_clock(skew):
            found = (await reports(redis, ["a"], SETTINGS))["a"]
        assert found["state"] == "quarantined", skew
        assert found["quarantined_until"] == until
        assert found["attempts"] == pytest.approx(7, abs=0.05)
    gateway.reconnected(["a"])
    await gateway.flush()  # the cool-down ends now, by the server's clock
    for skew in (BEHIND, AHEAD):
        with host_clock(skew):
            found = (await reports(redis, ["a"], SETTINGS))["a"]
        assert found["state"] == "probing", skew
        assert found["quarantined_until"] is None


async def test_counts_and_errors_of_skewed_nodes_are_dated_by_the_servers_clock(redis: Redis) -> None:
    for exit_id, skew in (("behind", BEHIND), ("ahead", AHEAD)):
        writer = node(redis, host(skew), f"n-{exit_id}")
        for _ in range(4):
            writer.dial_ok(exit_id, 0.1)
        writer.dial_failed(exit_id, "refused", exit_fault=False)
        await writer.flush()
    now = await server_time(redis)
    found = await reports(redis, ["behind", "ahead"], SETTINGS)
    for exit_id in ("behind", "ahead"):
        assert found[exit_id]["attempts"] == pytest.approx(4, abs=0.05), exit_id  # not 4 / √2 or 4 · √2
        (error,) = found[exit_id]["recent_errors"]
        assert error["at"] == pytest.approx(now, abs=1), exit_id
    reader = node(redis, host(AHEAD), "n-reader")
    for exit_id in ("behind", "ahead"):
        reader.state(exit_id)
    await reader.refresh()
    view = reader.snapshot(["behind", "ahead"])
    assert view["behind"]["attempts"] == pytest.approx(4, abs=0.05)
    assert view["ahead"]["attempts"] == pytest.approx(4, abs=0.05)


async def test_a_step_of_a_nodes_clock_is_undone_at_its_next_sync(redis: Redis) -> None:
    clock = host(0.0)
    health = node(redis, clock)
    fail(health, "a", 3)
    await health.flush()
    clock.advance(AHEAD)  # the host's clock steps 30 s forward (an NTP step, a hand set it)
    await health.sync()
    assert health.state("a") is Breaker.OPEN
    assert 9 < remaining(health, "a") <= 10
