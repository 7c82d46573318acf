"""Functional tests of exit health and its circuit breaker against a real Redis.

A node judges by its estimate of the Redis server's clock: the server's time when the node last
read it (its first flush, each refresh, each trip it writes) plus what its own clock counted
since. Each node here gets a fake clock, years off and still unless the test moves it, so a
quarantine of minutes passes in no time for a node until it next reads the server's time. What
the server itself must see end (a cool-down before a probe's failure trips it again, the memory of
past trips) is kept short and waited for on the server's clock. Redis key expiry, far longer, runs
on real time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from pool import keys
from pool.health import Breaker, ExitHealth, HealthSettings, report, reports
from pool.models import ExitFilters
from pool.registry import ExitRegistry
from pool.select import Choice, Selector
from tests.pool.conftest import REDIS_URL, make_exit

T0 = 1_700_000_000.0  # the nodes' own clocks start here, years off the server's
SETTINGS = HealthSettings(
    trip_streak=3,
    min_attempts=10,
    trip_rate=0.5,
    cooldown=10,
    max_cooldown=40,
    trip_memory=600,
    probe_timeout=5,
    recent_errors=5,
    latency_slack=0,  # the weight formula's latency term exactly (the slack has its own test)
)
FR = ExitFilters(country="fr")


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def node(redis: Redis, clock: Clock, name: str = "n1", **overrides: Any) -> ExitHealth:
    return ExitHealth(redis, name, settings=replace(SETTINGS, **overrides), clock=clock)


async def shared(redis: Redis, exit_id: str, health: ExitHealth) -> dict[str, Any]:
    """The exit's shared report, judged when ``health`` thinks it is (its clock may have moved)."""
    return await report(redis, exit_id, SETTINGS, now=health.now())


async def server_time(redis: Redis) -> float:
    """The Redis server's clock, unix seconds."""
    seconds, micros = await redis.time()
    return float(seconds + micros / 1_000_000)


async def server_reaches(redis: Redis, when: float) -> None:
    """Wait until the Redis server's clock reads ``when`` (unix seconds) or later."""
    for _ in range(100):  # once or twice; bounded by the test's timeout anyway
        left = when - await server_time(redis)
        if left <= 0:
            return
        await asyncio.sleep(left)


def remaining(health: ExitHealth, exit_id: str) -> float:
    """Seconds of the exit's quarantine left, as ``health`` sees it."""
    return health.quarantined_until(exit_id) - health.now()


def fail(health: ExitHealth, exit_id: str, times: int = 1, reason: str = "timeout") -> None:
    for _ in range(times):
        health.dial_failed(exit_id, reason)


async def tripped(redis: Redis, clock: Clock, exit_id: str = "a", **overrides: Any) -> ExitHealth:
    """A node whose breaker for ``exit_id`` tripped, written to Redis. The trip's answer gave the
    node the server's time, so its cool-down starts at ``health.now()``: moving its clock by the
    cool-down ends it for the node."""
    health = node(redis, clock, **overrides)
    fail(health, exit_id, 3)
    await health.flush()
    return health


# recording and flushing


async def test_records_stay_in_memory_until_flush(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    health.dial_ok("a", 0.1)
    health.dial_failed("a", "timeout")
    health.stream_done("a", 1000, 2.0, ok=True)
    assert await redis.keys("ipsx:health:*") == []  # no round trip per record
    await health.flush()
    assert set(await redis.keys("ipsx:health:*")) == {
        keys.exit_health("a").encode(),
        keys.exit_errors("a").encode(),
    }
    assert 0 < await redis.ttl(keys.exit_health("a")) <= 24 * 3600
    assert 0 < await redis.ttl(keys.exit_errors("a")) <= 24 * 3600


async def test_report_contents(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    for latency in (0.1, 0.2, 0.3):
        health.dial_ok("a", latency)
    health.dial_failed("a", "timeout")
    clock.advance(1)
    health.stream_done("a", 125_000, 2.0, ok=True)
    health.stream_done("a", 125_000, 3.0, ok=False, reason="exit_lost")
    await health.flush()  # its first: the node reads the server's time, which dates the errors
    assert await shared(redis, "a", health) == {
        "state": "degraded",  # 75% of dials got through, under the 90% of a healthy exit
        "success_rate": 0.75,
        "attempts": 4.0,
        "dial_latency_ms": 200.0,
        "throughput_bps": 400_000,  # 250 kB in 5 s of streams
        "stream_success_rate": 0.5,
        "quarantined_until": None,
        "trips": 0,
        "last_trip_reason": None,
        "recent_errors": [
            {"at": pytest.approx(health.now(), abs=1e-3), "reason": "exit_lost", "node": "n1"},
            {"at": pytest.approx(health.now() - 1, abs=1e-3), "reason": "timeout", "node": "n1"},
        ],
    }


async def test_report_of_unknown_exit(redis: Redis) -> None:
    found = await report(redis, "nobody", SETTINGS)
    assert found["state"] == "healthy"
    assert found["attempts"] == 0.0
    assert found["success_rate"] is None
    assert found["dial_latency_ms"] is None
    assert found["throughput_bps"] is None
    assert found["recent_errors"] == []


async def test_recent_errors_capped_newest_first(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    for number in range(8):
        health.dial_failed("a", f"refused{number}", exit_fault=False)
    await health.flush()
    health.dial_failed("a", "x" * 100, exit_fault=False)
    await health.flush()
    errors = (await shared(redis, "a", health))["recent_errors"]
    assert [error["reason"] for error in errors] == ["x" * 64, "refused7", "refused6", "refused5", "refused4"]


async def test_failures_not_the_exits_fault(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    for _ in range(10):
        health.dial_failed("a", "refused", exit_fault=False)
    assert health.state("a") is Breaker.CLOSED
    await health.flush()
    found = await shared(redis, "a", health)
    assert found["attempts"] == 0.0  # listed among the errors, not counted against the exit
    assert found["state"] == "healthy"
    assert len(found["recent_errors"]) == 5


async def test_counts_decay_by_half_life(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    for _ in range(4):
        health.dial_ok("a", 0.1)
    await health.flush()
    clock.advance(60)
    assert (await shared(redis, "a", health))["attempts"] == 2.0
    health.dial_failed("a", "timeout")
    await health.flush()
    found = await shared(redis, "a", health)
    assert found["attempts"] == 3.0
    assert found["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    clock.advance(120)
    assert (await shared(redis, "a", health))["attempts"] == 0.75


async def test_two_nodes_aggregate(redis: Redis, clock: Clock) -> None:
    one, two = node(redis, clock, "n1"), node(redis, clock, "n2")
    for _ in range(3):
        one.dial_ok("a", 0.1)
    two.dial_ok("a", 0.5)
    two.dial_failed("a", "exit")
    await one.flush()
    await two.flush()  # a few milliseconds later by the server's clock: a hair more weight
    found = await report(redis, "a", SETTINGS)
    assert found["attempts"] == pytest.approx(5.0, abs=0.02)
    assert found["success_rate"] == pytest.approx(0.8, abs=1e-3)
    assert found["dial_latency_ms"] == pytest.approx(200.0, abs=0.1)  # (3 * 100 + 500) / 4
    assert found["recent_errors"] == [
        {"at": pytest.approx(two.now(), abs=1e-3), "reason": "exit", "node": "n2"}
    ]
    one.state("a")  # selection asked about it: the next refresh reads it
    await one.refresh()
    assert one.snapshot(["a"])["a"]["attempts"] == pytest.approx(5.0, abs=0.02)


async def test_stale_epoch_fields_are_removed(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    epoch = int(await server_time(redis) // SETTINGS.epoch_span)
    old = {f"ok@{epoch - 3}".encode(), f"lat@{epoch - 3}".encode()}  # as a node left them long ago
    await redis.hset(keys.exit_health("a"), mapping=dict.fromkeys(old, 1.0))
    health.dial_ok("a", 0.1)
    health.state("a")
    await health.sync()  # the refresh finds the old epoch's fields; the next flush drops them
    await health.flush()
    fields = {field for field in await redis.hkeys(keys.exit_health("a")) if b"@" in field}
    assert fields and not fields & old
    assert (await shared(redis, "a", health))["attempts"] == pytest.approx(1.0, abs=0.01)


# the breaker


async def test_streak_trips_at_once_locally(redis: Redis, clock: Clock) -> None:
    one, two = node(redis, clock, "n1"), node(redis, clock, "n2")
    fail(one, "a", 2)
    assert one.state("a") is Breaker.CLOSED
    fail(one, "a")
    assert one.state("a") is Breaker.OPEN  # before anything reached Redis
    assert remaining(one, "a") == 10
    assert two.state("a") is Breaker.CLOSED
    await one.flush()
    assert remaining(one, "a") == 10  # from when the server wrote the trip
    tripped_at = int(await redis.hget(keys.exit_health("a"), "tripped") or 0) / 1000
    assert one.quarantined_until("a") == tripped_at + 10
    await two.refresh()
    assert two.state("a") is Breaker.OPEN
    assert two.quarantined_until("a") == tripped_at + 10
    found = await shared(redis, "a", one)
    assert found["state"] == "quarantined"
    assert found["quarantined_until"] == tripped_at + 10
    assert found["trips"] == 1
    assert found["last_trip_reason"] == "streak"


async def test_streak_of_this_node_survives_its_flushes(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    fail(health, "a", 2)
    await health.flush()  # the shared streak is not read back yet
    fail(health, "a")
    assert health.state("a") is Breaker.OPEN


async def test_streak_across_nodes(redis: Redis, clock: Clock) -> None:
    one, two = node(redis, clock, "n1"), node(redis, clock, "n2")
    fail(one, "a", 2)
    fail(two, "a")
    await one.flush()
    await two.flush()
    assert one.state("a") is Breaker.CLOSED and two.state("a") is Breaker.CLOSED
    await one.sync()  # the shared streak is 3: the refresh trips it, and writes the trip
    assert one.state("a") is Breaker.OPEN
    assert (await shared(redis, "a", one))["last_trip_reason"] == "streak"


async def test_success_restarts_shared_streak(redis: Redis, clock: Clock) -> None:
    one, two = node(redis, clock, "n1"), node(redis, clock, "n2")
    fail(one, "a", 2)
    await one.flush()
    assert await redis.hget(keys.exit_health("a"), "streak") == b"2"
    two.dial_ok("a", 0.1)
    fail(two, "a")
    await two.flush()
    assert await redis.hget(keys.exit_health("a"), "streak") == b"1"


async def test_rate_trips(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    outcomes = [False, False, True] * 3  # never three failures in a row
    for ok in outcomes:
        if ok:
            health.dial_ok("a", 0.1)
        else:
            health.dial_failed("a", "timeout")
    assert health.state("a") is Breaker.CLOSED  # 3 of 9: too few attempts to judge
    health.dial_failed("a", "timeout")  # 3 of 10 got through, under half
    assert health.state("a") is Breaker.OPEN
    await health.flush()
    assert (await shared(redis, "a", health))["last_trip_reason"] == "rate"


async def test_rate_trips_on_shared_attempts(redis: Redis, clock: Clock) -> None:
    one, two = node(redis, clock, "n1"), node(redis, clock, "n2")
    for health in (one, two):
        for ok in (False, False, True, False, True, False):
            if ok:
                health.dial_ok("a", 0.1)
            else:
                health.dial_failed("a", "timeout")
        assert health.state("a") is Breaker.CLOSED
        await health.flush()
    await one.sync()  # 4 of 12 over both nodes (decayed a little since: still over 10 dials)
    assert one.state("a") is Breaker.OPEN
    assert (await shared(redis, "a", one))["last_trip_reason"] == "rate"


async def test_cool_down_then_one_probe(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    clock.advance(9.9)
    assert health.state("a") is Breaker.OPEN
    clock.advance(0.1)
    assert health.state("a") is Breaker.HALF_OPEN
    assert (await shared(redis, "a", health))["state"] == "probing"
    assert health.begin_probe("a")
    assert health.state("a") is Breaker.PROBING
    assert not health.begin_probe("a")  # one probe at a time
    health.dial_abandoned("a")  # the client left before the dial ended: another may probe
    assert health.state("a") is Breaker.HALF_OPEN
    assert health.begin_probe("a")
    clock.advance(5)  # probe_timeout: an outcome that never came
    assert health.state("a") is Breaker.HALF_OPEN
    assert not health.begin_probe("b")  # never tripped: nothing to probe


async def test_probe_success_closes(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    other = node(redis, clock, "n2")
    other.state("a")
    await other.refresh()
    assert other.state("a") is Breaker.OPEN
    clock.advance(10)
    assert health.begin_probe("a")
    health.dial_ok("a", 0.2)
    assert health.state("a") is Breaker.CLOSED
    await health.sync()
    assert health.state("a") is Breaker.CLOSED  # the failures before the quarantine are forgiven
    found = await shared(redis, "a", health)
    assert found["quarantined_until"] is None
    assert found["state"] == "degraded"  # 1 of 4 recent dials got through
    await other.refresh()
    assert other.state("a") is Breaker.CLOSED
    fail(health, "a", 2)  # the streak starts again from zero
    assert health.state("a") is Breaker.CLOSED


async def test_reconnected_agent_ends_the_quarantine_on_every_node(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    other = node(redis, clock, "n2")
    other.state("a")
    await other.refresh()
    assert other.state("a") is Breaker.OPEN
    clock.advance(1)  # well inside the 10 s cool-down
    health.reconnected(["a", "never-seen"])
    assert health.state("a") is Breaker.HALF_OPEN  # its next selection is the probe
    await health.sync()
    await other.refresh()
    assert other.state("a") is Breaker.HALF_OPEN
    assert health.begin_probe("a")
    health.dial_ok("a", 0.01)
    assert health.state("a") is Breaker.CLOSED


async def test_reconnected_leaves_a_closed_breaker_alone(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    health.dial_ok("a", 0.01)
    await health.sync()
    health.reconnected(["a"])
    await health.sync()
    assert health.state("a") is Breaker.CLOSED
    assert (await shared(redis, "a", health))["quarantined_until"] is None


async def test_probe_answered_by_destination_closes(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    clock.advance(10)
    assert health.begin_probe("a")
    health.dial_failed("a", "refused", exit_fault=False)  # the exit dialed; the origin said no
    assert health.state("a") is Breaker.CLOSED


async def cooled_down(redis: Redis, health: ExitHealth, exit_id: str = "a") -> None:
    """Wait until the server's clock ends the exit's cool-down, and let the node read it."""
    await server_reaches(redis, health.quarantined_until(exit_id))
    health.state(exit_id)
    await health.refresh()
    assert health.state(exit_id) is Breaker.HALF_OPEN


async def test_probe_failure_reopens_longer(redis: Redis, clock: Clock) -> None:
    short: dict[str, Any] = {
        "cooldown": 0.2,
        "max_cooldown": 0.8,
        "trip_memory": 2.0,
    }  # waited for on the server
    health = await tripped(redis, clock, **short)
    for cool_down, trips in ((0.4, 2), (0.8, 3), (0.8, 4)):  # doubled each time, at most max_cooldown
        await cooled_down(redis, health)
        assert health.begin_probe("a")
        health.dial_failed("a", "timeout")
        assert health.state("a") is Breaker.OPEN
        assert remaining(health, "a") == pytest.approx(cool_down, abs=1e-3)
        await health.flush()
        assert remaining(health, "a") == pytest.approx(cool_down, abs=1e-3)  # from the server's write
        found = await shared(redis, "a", health)
        assert found["quarantined_until"] == health.quarantined_until("a")
        assert found["trips"] == trips
        assert found["last_trip_reason"] == "probe"


async def test_repeat_trips_forgotten_after_trip_memory(redis: Redis, clock: Clock) -> None:
    short: dict[str, Any] = {
        "cooldown": 0.2,
        "max_cooldown": 0.8,
        "trip_memory": 1.0,
    }  # waited for on the server
    health = await tripped(redis, clock, **short)
    await cooled_down(redis, health)
    assert health.begin_probe("a")
    health.dial_ok("a", 0.1)
    fail(health, "a", 3)  # soon after: a repeat, twice as long
    assert remaining(health, "a") == pytest.approx(0.4, abs=1e-3)
    await health.flush()
    assert remaining(health, "a") == pytest.approx(0.4, abs=1e-3)
    assert (await shared(redis, "a", health))["trips"] == 2
    last_trip = health.now()  # the node just read it in the trip's answer
    await server_reaches(redis, last_trip + 1.01)
    health.state("a")
    await health.refresh()
    assert health.begin_probe("a")
    health.dial_ok("a", 0.1)
    fail(health, "a", 3)  # long after the last trip: a first one again
    assert remaining(health, "a") == pytest.approx(0.2, abs=1e-3)
    await health.flush()
    assert (await shared(redis, "a", health))["trips"] == 1


async def test_nodes_tripping_together_trip_once(redis: Redis, clock: Clock) -> None:
    first = await tripped(redis, clock)
    second = node(redis, Clock(T0 + 1), "n2")  # saw the same failures, its clock a second ahead
    fail(second, "a", 3)
    assert remaining(second, "a") == 10  # its own guess…
    await second.flush()
    assert second.quarantined_until("a") == first.quarantined_until("a")  # …until Redis says who was first
    assert (await shared(redis, "a", second))["trips"] == 1


async def test_refresh_keeps_a_move_not_yet_written(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    late = node(redis, clock, "n2", trip_streak=100, min_attempts=1000)  # (not to trip on its own)
    fail(late, "a", 15)  # another node's dials, begun before the trip, fail after it
    await late.flush()  # the breaker is open already: they stay in Redis as evidence
    clock.advance(10)
    assert health.begin_probe("a")
    health.dial_ok("a", 0.1)
    await health.refresh()  # before the close is written: Redis still says quarantined
    assert health.state("a") is Breaker.CLOSED  # and the old evidence does not trip it again
    await health.flush()
    await health.refresh()
    assert health.state("a") is Breaker.CLOSED
    assert (await shared(redis, "a", health))["quarantined_until"] is None


async def test_failures_while_open_change_nothing(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    until = health.quarantined_until("a")
    fail(health, "a", 5)  # dials that began before the trip
    assert health.quarantined_until("a") == until
    clock.advance(10)
    fail(health, "a", 5)  # not a probe: no escalation
    assert health.state("a") is Breaker.HALF_OPEN
    await health.flush()
    assert (await shared(redis, "a", health))["trips"] == 1


# weights


async def test_weights(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock, trip_streak=100, min_attempts=1000)
    for _ in range(10):
        health.dial_ok("fast", 0.1)
        health.dial_ok("slow", 0.4)
        health.dial_ok("lossy", 0.1)
    for _ in range(5):
        health.dial_ok("failing", 0.1)
        health.dial_failed("failing", "timeout")
    for ok in (True, True, True, False):
        health.stream_done("lossy", 1000, 1.0, ok=ok)
    assert health.weight("slow") == 1.0  # nothing known before the first sync
    await health.sync()
    # reference latency: the median of 0.1, 0.4, 0.1, 0.1; the counts decayed a hair between the
    # flush and the refresh (the server's clock moved on), and the one virtual success did not
    assert health.weight("fast") == pytest.approx(1.0)
    assert health.weight("slow") == pytest.approx(0.25)
    assert health.weight("failing") == pytest.approx((6 / 11) ** 2, rel=1e-3)
    assert health.weight("lossy") == pytest.approx(4 / 5, rel=1e-3)
    assert health.weight("new") == 1.0
    assert health.snapshot(["slow"])["slow"]["weight"] == 0.25


async def test_latency_slack_ignores_milliseconds_but_not_a_slow_exit(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock, trip_streak=100, min_attempts=1000, latency_slack=0.05)
    for _ in range(10):
        for exit_id, latency in (("a", 0.002), ("b", 0.002), ("noisy", 0.008), ("slow", 0.5)):
            health.dial_ok(exit_id, latency)
    await health.sync()
    # reference: the median of 2, 2, 8 and 500 ms = 5 ms
    assert health.weight("noisy") == pytest.approx(55 / 58)
    assert health.weight("noisy") > 0.9
    assert health.weight("slow") == pytest.approx(55 / 550)


async def test_weight_has_a_floor(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock, trip_streak=100, min_attempts=1000)
    fail(health, "a", 50)
    await health.sync()
    assert health.weight("a") == SETTINGS.weight_floor


# selection with health


@dataclass
class View:
    loads: dict[str, int]

    def load(self, exit_id: str) -> int:
        return self.loads.get(exit_id, 0)


async def selector_with(
    redis: Redis, health: ExitHealth, *exit_ids: str, view: View | None = None
) -> Selector:
    await ExitRegistry(redis).register([make_exit(exit_id) for exit_id in exit_ids])
    view = view or View({})
    return Selector(redis, "n1", is_available=lambda _: True, load=view.load, cache_ttl=0.0, health=health)


async def test_choose_skips_quarantined(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    selector = await selector_with(redis, health, "a", "b", "c")
    picks = Counter([await selector.choose(FR) for _ in range(30)])
    assert picks == {"b": 15, "c": 15}


async def test_choose_probes_half_open_exit_once(redis: Redis, clock: Clock) -> None:
    health = await tripped(redis, clock)
    selector = await selector_with(redis, health, "a", "b", "c")
    clock.advance(10)
    assert await selector.choose(FR) == "a"  # the probe goes first
    assert health.state("a") is Breaker.PROBING
    assert Counter([await selector.choose(FR) for _ in range(10)]) == {"b": 5, "c": 5}
    health.dial_ok("a", 0.1)
    assert Counter([await selector.choose(FR) for _ in range(30)]) == {"a": 10, "b": 10, "c": 10}


async def test_choose_gives_slow_and_failing_exits_fewer_picks(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock, trip_streak=100, min_attempts=1000)
    for _ in range(10):
        health.dial_ok("a", 0.1)
        health.dial_ok("b", 0.1)
        health.dial_ok("slow", 0.4)
        health.dial_ok("failing", 0.1)
        health.dial_failed("failing", "timeout")
    selector = await selector_with(redis, health, "a", "b", "slow", "failing")
    await selector.choose(FR)
    await health.sync()
    weights = {exit_id: health.weight(exit_id) for exit_id in ("a", "b", "slow", "failing")}
    assert weights["a"] == weights["b"] == 1.0 and weights["slow"] == pytest.approx(0.25)
    picks = Counter([await selector.choose(FR) for _ in range(1000)])
    total = sum(weights.values())
    for exit_id, weight in weights.items():
        assert abs(picks[exit_id] - 1000 * weight / total) <= 3, (exit_id, picks)
    assert picks["slow"] < picks["a"] / 3 and picks["failing"] < picks["a"] / 3


async def test_choose_by_load_relative_to_weight(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    for _ in range(10):
        health.dial_ok("a", 0.1)
        health.dial_ok("b", 0.1)
        health.dial_ok("slow", 0.4)
    view = View({"a": 3, "slow": 1})
    selector = await selector_with(redis, health, "a", "slow", view=view)
    await selector.choose(FR)
    await health.sync()
    assert await selector.choose(FR) == "a"  # 3 / 1 beats 1 / 0.25
    view.loads["a"] = 5
    assert await selector.choose(FR) == "slow"  # 5 / 1 loses to 1 / 0.25


async def test_choose_accept_with_health(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    selector = await selector_with(redis, health, "a", "b", "c")
    picks = Counter([await selector.choose(FR, accept=lambda exit_id: exit_id != "b") for _ in range(20)])
    assert picks == {"a": 10, "c": 10}
    assert await selector.choose(FR, accept=lambda _: False) is None


async def test_all_quarantined_probes_the_first_to_cool_down(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    fail(health, "b", 3)
    until = health.quarantined_until("b")
    clock.advance(1)
    fail(health, "a", 3)  # quarantined a second after "b"
    selector = await selector_with(redis, health, "a", "b")
    assert await selector.choose(FR) == "b"  # early, rather than no exit at all
    assert await selector.choose(FR) is None  # one last-resort probe at a time
    health.dial_failed("b", "timeout")
    assert health.quarantined_until("b") == until  # an early probe's failure costs no longer cool-down
    assert await selector.choose(FR) == "b"
    health.dial_ok("b", 0.1)
    assert health.state("b") is Breaker.CLOSED
    assert await selector.choose(FR) == "b"


async def test_session_rebinds_when_quarantined(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    selector = await selector_with(redis, health, "a", "b")
    first = await selector.select("alice", FR, session="s1")
    assert first is not None
    other = "b" if first.exit_id == "a" else "a"
    assert await selector.select("alice", FR, session="s1") == Choice(first.exit_id, sticky=True)
    fail(health, first.exit_id, 3)
    assert await selector.select("alice", FR, session="s1") == Choice(other, sticky=False)
    assert await redis.get(keys.session("alice", "s1")) == other.encode()
    assert await selector.select("alice", FR, session="s1") == Choice(other, sticky=True)


async def test_session_not_accepted_rebinds_with_health(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    selector = await selector_with(redis, health, "a", "b")
    first = await selector.select("alice", FR, session="s1")
    assert first is not None
    other = "b" if first.exit_id == "a" else "a"
    refuse = first.exit_id
    choice = await selector.select("alice", FR, session="s1", accept=lambda exit_id: exit_id != refuse)
    assert choice == Choice(other, sticky=False)


async def test_a_probe_chosen_for_a_session_another_connection_bound_is_freed(
    redis: Redis, clock: Clock
) -> None:
    health = await tripped(redis, clock)
    selector = await selector_with(redis, health, "a", "b")
    clock.advance(10)  # "a" half-open: the next choice probes it
    key = keys.session("alice", "s1")

    def bound_meanwhile(_exit_id: str) -> bool:  # another connection binds s1 to "b" meanwhile
        SyncRedis.from_url(REDIS_URL).set(key, "b")
        return True

    assert await selector.select("alice", FR, session="s1", accept=bound_meanwhile) == Choice(
        "b", sticky=True
    )
    assert health.state("a") is Breaker.HALF_OPEN  # not left probing with no connection to probe it
    assert await selector.choose(FR) == "a"


# lifecycle and settings


async def test_start_syncs_and_close_flushes(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock, sync_interval=0.02)
    await health.start()
    health.dial_ok("a", 0.1)
    for _ in range(500):  # the background sync writes it; bounded by the test timeout anyway
        if await redis.exists(keys.exit_health("a")):
            break
        await asyncio.sleep(0.01)
    # (decayed by the server's clock since: the syncs keep reading it)
    assert (await shared(redis, "a", health))["attempts"] == pytest.approx(1.0, abs=0.02)
    health.dial_failed("a", "timeout")
    await health.close()  # the last records are flushed on the way out
    assert (await shared(redis, "a", health))["attempts"] == pytest.approx(2.0, abs=0.02)
    await health.start()  # closed: stays stopped
    health.dial_ok("a", 0.1)
    await asyncio.sleep(0.05)
    assert (await shared(redis, "a", health))["attempts"] == pytest.approx(2.0, abs=0.02)


async def test_reports_many(redis: Redis, clock: Clock) -> None:
    health = node(redis, clock)
    health.dial_ok("a", 0.1)
    fail(health, "b", 3)
    await health.flush()
    found = await reports(redis, ["a", "b", "c"], SETTINGS)  # judged by the server's clock
    assert {exit_id: item["state"] for exit_id, item in found.items()} == {
        "a": "healthy",
        "b": "quarantined",
        "c": "healthy",
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"half_life": 0},
        {"trip_streak": 0},
        {"trip_rate": 1.5},
        {"cooldown": 0},
        {"cooldown": 100, "max_cooldown": 50},
        {"cooldown_growth": 0.5},
        {"trip_memory": 10},  # not longer than max_cooldown
        {"retention": 100},  # shorter than trip_memory
        {"weight_floor": 0},
    ],
)
def test_settings_refuse_inconsistent_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(SETTINGS, **overrides)
