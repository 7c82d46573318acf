"""Unit tests of the provider's limits: serving hours, caps per local day and month (with an
injected clock), the token bucket, the governor's serving state, its state file, and what
``ipsx provide status`` makes of it.

Nothing here opens a socket; the functional tests of the same limits through a real tunnel are
in ``test_tunnel.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.agent.caps import (
    Limits,
    LocalTime,
    ServingState,
    TokenBucket,
    Window,
    format_bytes,
    format_rate,
    hours_change,
    hours_open,
    parse_rate,
    parse_size,
    parse_window,
)
from gateway.agent.governor import Governor
from gateway.agent.meter import NO_DEAL, UsageMeter, read_state, write_state
from gateway.agent.policy import ExitPolicy
from gateway.agent.status import describe, read_status
from gateway.wire import WireError

PARIS = ZoneInfo("Europe/Paris")
NIGHT = (parse_window("22:00-07:00"),)


def paris(*args: int) -> float:
    """The unix time of a wall-clock time in Paris."""
    return dt.datetime(*args, tzinfo=PARIS).timestamp()  # type: ignore[misc]


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# serving hours


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("22:00-07:00", Window(22 * 60, 7 * 60)),
        ("9:30-17:45", Window(9 * 60 + 30, 17 * 60 + 45)),
        ("00:00-06:00", Window(0, 360)),
        ("18:00-24:00", Window(18 * 60, 1440)),
        (" 23:59-00:01 ", Window(1439, 1)),
    ],
)
def test_parse_window_call(text: str, window: Window) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("22-07", "must look like 22:00-07:00"),
        ("22:00 to 07:00", "must look like"),
        ("24:00-07:00", "no such time of day"),
        ("22:60-07:00", "no such time of day"),
        ("22:00-24:01", "no such time of day"),
        ("08:00-08:00", "empty or the whole day"),
        ("00:00-24:00", "empty or the whole day"),
    ],
)
def test_parse_window_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_window_str_round_trip() -> None:
    for text in ("22:00-07:00", "09:30-17:45", "18:00-24:00"):
        assert str(parse_window(text)) == text


@pytest.mark.parametrize(
    ("hour", "minute", "open_"),
    [
        (21, 59, False),
        (22, 0, True),
        (23, 59, True),
        (0, 0, True),
        (6, 59, True),
        (7, 0, False),
        (12, 0, False),
    ],
)
def test_hours_open_across_midnight(hour: int, minute: int, open_: bool) -> None:
    assert hours_open(NIGHT, dt.datetime(2026, 5, 1, hour, minute)) is open_


def test_hours_open_several_windows() -> None:
    hours = (parse_window("06:00-08:00"), parse_window("20:00-22:00"))
    assert [hours_open(hours, dt.datetime(2026, 5, 1, h)) for h in (5, 6, 7, 8, 19, 20, 21, 22)] == [
        False,
        True,
        True,
        False,
        False,
        True,
        True,
        False,
    ]


def test_hours_open_without_hours_is_always() -> None:
    assert hours_open((), dt.datetime(2026, 5, 1, 3, 0))
    assert hours_change((), dt.datetime(2026, 5, 1, 3, 0)) is None


@pytest.mark.parametrize(
    ("now", "change"),
    [
        (dt.datetime(2026, 5, 1, 12, 0), dt.datetime(2026, 5, 1, 22, 0)),  # closed: opens tonight
        (dt.datetime(2026, 5, 1, 23, 0), dt.datetime(2026, 5, 2, 7, 0)),  # open: closes tomorrow
        (dt.datetime(2026, 5, 2, 3, 0), dt.datetime(2026, 5, 2, 7, 0)),  # open after midnight
        (dt.datetime(2026, 5, 1, 22, 0), dt.datetime(2026, 5, 2, 7, 0)),  # just opened
        (dt.datetime(2026, 5, 1, 7, 0), dt.datetime(2026, 5, 1, 22, 0)),  # just closed
    ],
)
def test_hours_change_across_midnight(now: dt.datetime, change: dt.datetime) -> None:
    assert hours_change(NIGHT, now) == change


def test_hours_change_skips_edges_that_change_nothing() -> None:
    # Two windows touching at midnight are one stretch from 20:00 to 08:00.
    hours = (parse_window("20:00-24:00"), parse_window("00:00-08:00"))
    assert hours_change(hours, dt.datetime(2026, 5, 1, 21, 0)) == dt.datetime(2026, 5, 2, 8, 0)
    assert hours_change(hours, dt.datetime(2026, 5, 1, 9, 0)) == dt.datetime(2026, 5, 1, 20, 0)


# sizes and rates


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 10**9),
        ("1.5", 1_500_000_000),
        ("500MB", 500 * 10**6),
        ("500 mb", 500 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1TB", 10**12),
        ("3000B", 3000),
        ("64kB", 64_000),
    ],
)
def test_parse_size_call(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1", "1 PB", "0", "0.0000000001B", "1e3"])
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10", 1_250_000),
        ("10Mbit", 1_250_000),
        ("500kbit", 62_500),
        ("1Gbit/s", 125_000_000),
        ("8 mbps", 10**6),
    ],
)
def test_parse_rate_call(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "1kbit", "10 MB/s", "-5"])
def test_parse_rate_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_format_bytes_and_rate() -> None:
    assert [format_bytes(n) for n in (0, 999, 1000, 2_500_000, 3 * 10**9, 10**12)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "2.5 MB",
        "3.0 GB",
        "1.0 TB",
    ]
    assert format_rate(1_250_000) == "10 Mbit/s"
    assert format_rate(62_500) == "500 kbit/s"


# local time


def test_local_time_day_and_month_ends_in_a_zone() -> None:
    local = LocalTime("Europe/Paris")
    now = paris(2026, 3, 28, 23, 30)
    assert local.day_key(now) == "2026-03-28"
    assert local.day_end(now) == paris(2026, 3, 29, 0, 0)
    assert local.month_end(now) == paris(2026, 4, 1, 0, 0)
    # 29 March 2026 is 23 hours long in Paris (summer time starts).
    assert local.day_end(paris(2026, 3, 29, 12, 0)) - paris(2026, 3, 29, 0, 0) == 23 * 3600


def test_local_time_december_rolls_into_january() -> None:
    local = LocalTime("UTC")
    now = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC).timestamp()
    assert local.month_end(now) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    assert local.month_key(now) == "2026-12"


def test_local_time_unknown_zone_raises() -> None:
    with pytest.raises(KeyError):
        LocalTime("Mars/Olympus_Mons")


# the meter


def test_meter_take_stops_at_the_daily_cap() -> None:
    meter = UsageMeter(Limits(cap_day=1000, tz="Europe/Paris"), paris(2026, 5, 1, 12, 0))
    now = paris(2026, 5, 1, 12, 0)
    assert meter.take(600, True, now) == 600
    assert meter.take(600, False, now) == 400  # only what is left of the cap
    assert meter.take(10, False, now) == 0
    assert (meter.day.up, meter.day.down, meter.day.bytes) == (600, 400, 1000)
    assert meter.remaining(now) == 0
    assert meter.cap_reached(now) == ("daily cap of 1.0 kB reached", paris(2026, 5, 2, 0, 0))


def test_meter_daily_cap_resets_at_local_midnight_but_month_goes_on() -> None:
    meter = UsageMeter(Limits(cap_day=1000, cap_month=1500, tz="Europe/Paris"), paris(2026, 5, 1, 23, 0))
    assert meter.take(1000, False, paris(2026, 5, 1, 23, 59, 59)) == 1000
    assert meter.cap_reached(paris(2026, 5, 1, 23, 59, 59)) is not None
    after_midnight = paris(2026, 5, 2, 0, 0, 1)
    assert meter.remaining(after_midnight) == 500  # the month's cap is now the tighter one
    assert meter.day.period == "2026-05-02" and meter.day.bytes == 0
    assert meter.take(800, False, after_midnight) == 500
    assert meter.cap_reached(after_midnight) == ("monthly cap of 1.5 kB reached", paris(2026, 6, 1, 0, 0))


def test_meter_month_resets_on_the_first() -> None:
    meter = UsageMeter(
        Limits(cap_month=100, tz="UTC"), dt.datetime(2026, 5, 31, 22, tzinfo=dt.UTC).timestamp()
    )
    meter.take(100, True, dt.datetime(2026, 5, 31, 23, tzinfo=dt.UTC).timestamp())
    june = dt.datetime(2026, 6, 1, 0, 0, 1, tzinfo=dt.UTC).timestamp()
    assert meter.cap_reached(june) is None
    assert (meter.month.period, meter.month.bytes, meter.day.period) == ("2026-06", 0, "2026-06-01")


def test_meter_without_caps_counts_everything() -> None:
    meter = UsageMeter(Limits(), 0.0)
    assert meter.remaining(0.0) is None
    assert meter.take(10**12, True, 0.0) == 10**12
    assert meter.cap_reached(0.0) is None


def test_meter_streams_per_deal() -> None:
    now = paris(2026, 5, 1, 12, 0)
    meter = UsageMeter(Limits(tz="Europe/Paris"), now)
    meter.add(10, 90, now)
    meter.stream_done("deal-1", 100, now)
    meter.stream_done("deal-1", 50, now)
    meter.stream_done("", 7, now)
    assert meter.day.streams == meter.month.streams == 3
    assert meter.day.deals == {"deal-1": [150, 2], NO_DEAL: [7, 1]}
    assert meter.day.bytes == 100  # bytes are counted by add/take, streams by stream_done


def test_meter_payouts_today_starts_from_yesterdays_last_total() -> None:
    meter = UsageMeter(Limits(tz="UTC"), 0.0)
    day1 = dt.datetime(2026, 5, 1, 10, tzinfo=dt.UTC).timestamp()
    meter.note_payouts(100, day1)
    meter.note_payouts(130, day1 + 3600)
    assert (meter.payouts.day_start, meter.payouts.latest) == (100, 130)  # first seen today
    meter.note_payouts(170, day1 + 86_400)
    assert (meter.payouts.day, meter.payouts.day_start, meter.payouts.latest) == ("2026-05-02", 130, 170)
    assert meter.payouts.month_start == 100


def test_meter_restore_keeps_the_current_periods_only() -> None:
    may1 = paris(2026, 5, 1, 20, 0)
    meter = UsageMeter(Limits(cap_day=10**6, tz="Europe/Paris"), may1, address="0xabc")
    meter.take(700, False, may1)
    meter.stream_done("d", 700, may1)
    saved = json.loads(json.dumps(meter.to_json()))

    same_day = UsageMeter(Limits(cap_day=10**6, tz="Europe/Paris"), may1 + 60, address="0xabc")
    same_day.restore(saved, may1 + 60)
    assert (same_day.day.bytes, same_day.day.streams, same_day.month.bytes) == (700, 1, 700)
    assert same_day.remaining(may1 + 60) == 10**6 - 700

    next_day = UsageMeter(Limits(tz="Europe/Paris"), may1 + 86_400, address="0xabc")
    next_day.restore(saved, may1 + 86_400)
    assert (next_day.day.bytes, next_day.month.bytes) == (0, 700)

    other = UsageMeter(Limits(tz="Europe/Paris"), may1 + 60, address="0xdef")
    other.restore(saved, may1 + 60)
    assert other.month.bytes == 0  # another wallet's file


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"version": 99},
        {"version": 1, "day": "x", "month": {"period": 7}},
        {"version": 1, "payouts": []},
    ],
)
def test_meter_restore_ignores_unreadable_state(raw: object) -> None:
    meter = UsageMeter(Limits(), 0.0)
    meter.restore(raw, 0.0)
    assert (meter.day.bytes, meter.month.bytes, meter.payouts.latest) == (0, 0, None)


def test_meter_restore_refuses_negative_counts() -> None:
    meter = UsageMeter(Limits(tz="UTC"), 0.0)
    bad = meter.to_json()
    bad["day"]["up"] = -5
    meter.restore(bad, 0.0)
    assert meter.day.up == 0


# the state file


def test_write_state_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "agent.usage.json"
    write_state(path, {"a": 1})
    write_state(path, {"a": 2})
    assert read_state(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["agent.usage.json"]  # no temporary left
    assert path.stat().st_mode & 0o077 == 0


def test_read_state_missing_and_malformed(tmp_path: Path) -> None:
    assert read_state(tmp_path / "absent.json") is None
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="not an agent state file"):
        read_state(tmp_path / "list.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError):
        read_state(tmp_path / "junk.json")


# the token bucket


def test_token_bucket_burst_then_debt() -> None:
    bucket = TokenBucket(1000, 0.0, burst=500)
    assert bucket.spend(500, 0.0) == 0.0  # the burst
    assert bucket.spend(250, 0.0) == pytest.approx(0.25)  # 250 bytes of debt at 1000 B/s
    assert bucket.spend(0, 0.25) == 0.0  # paid back
    assert bucket.spend(100, 0.35) == pytest.approx(0.0, abs=1e-9)  # 100 refilled in 0.1 s


def test_token_bucket_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(1000, 0.0, burst=500)
    assert bucket.spend(1500, 100.0) == pytest.approx(1.0)  # an hour idle still only saves 500


def test_token_bucket_average_rate() -> None:
    bucket = TokenBucket(10_000, 0.0, burst=1000)
    now = 0.0
    for _ in range(100):  # 100 chunks of 1000 bytes, each read as soon as the bucket allows
        now += bucket.spend(1000, now)
    assert now == pytest.approx((100 * 1000 - 1000) / 10_000)


def test_token_bucket_default_burst() -> None:
    assert TokenBucket(80_000, 0.0).burst == 16 * 1024
    assert TokenBucket(8_000_000, 0.0).burst == 1_000_000


# limits and serving state on the wire


def test_limits_wire_round_trip() -> None:
    limits = Limits(
        cap_day=10**9, cap_month=10**11, rate_stream=125_000, rate_total=10**6, hours=NIGHT, tz="UTC"
    )
    wire = limits.to_wire()
    assert wire["hours"] == ["22:00-07:00"]
    assert Limits.from_wire(wire) == limits
    assert Limits.from_wire({"allow_private": True}) == Limits()  # the policy's fields are not limits
    assert not Limits().gated and Limits(rate_stream=1000).gated and Limits(cap_month=1).gated


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        {"cap_day": 0},
        {"cap_day": True},
        {"cap_day": "1GB"},
        {"hours": "22:00-07:00"},
        {"hours": ["25:00-01:00"]},
        {"hours": [1]},
        {"tz": 5},
    ],
)
def test_limits_from_wire_malformed(raw: object) -> None:
    with pytest.raises(WireError):
        Limits.from_wire(raw)


def test_serving_state_wire() -> None:
    state = ServingState(False, "daily cap of 1.0 GB reached", 1_800_000_000.0)
    assert ServingState.from_wire({"t": "state", **state.to_wire()}) == state
    assert ServingState.from_wire({"serving": True, "reason": "ignored"}) == ServingState()
    assert ServingState.from_wire({"serving": False}) == ServingState(False, "not serving", None)
    assert ServingState.from_wire(None) == ServingState()
    for bad in ({"serving": "no"}, {"serving": False, "until": "soon"}, {"serving": False, "reason": 3}, []):
        with pytest.raises(WireError):
            ServingState.from_wire(bad)


# the governor


def test_governor_serving_hours_open_and_close() -> None:
    clock = Clock(paris(2026, 5, 1, 21, 0))
    governor = Governor(Limits(hours=NIGHT, tz="Europe/Paris"), clock=clock)
    heard: list[ServingState] = []
    governor.listen(heard.append)
    assert governor.state == ServingState(
        False, "outside the serving hours (22:00-07:00)", paris(2026, 5, 1, 22, 0)
    )
    assert governor.refusal() == "outside the serving hours (22:00-07:00)"

    clock.now = paris(2026, 5, 1, 22, 0)
    assert governor.refusal() is None  # re-evaluated once the change is due, no refresh needed
    clock.now = paris(2026, 5, 2, 6, 59)
    assert governor.refusal() is None  # still open after midnight
    clock.now = paris(2026, 5, 2, 7, 0)
    assert governor.refusal() == "outside the serving hours (22:00-07:00)"
    assert heard == [ServingState(), governor.state]
    assert governor.state.until == paris(2026, 5, 2, 22, 0)


def test_governor_cap_reached_mid_stream_then_reset_at_midnight() -> None:
    clock = Clock(paris(2026, 5, 1, 23, 0))
    governor = Governor(Limits(cap_day=1000, tz="Europe/Paris"), clock=clock, monotonic=lambda: 0.0)
    heard: list[ServingState] = []
    governor.listen(heard.append)
    gate = governor.gate()
    assert gate is not None
    assert gate.admit(900, False) == (900, 0.0)
    assert not gate.exhausted and governor.state.serving
    assert gate.admit(300, False) == (100, 0.0)  # the cap cuts the chunk
    assert gate.exhausted
    assert heard == [ServingState(False, "daily cap of 1.0 kB reached", paris(2026, 5, 2, 0, 0))]
    assert governor.refusal() == "daily cap of 1.0 kB reached"
    governor.finished(gate, "deal-1", 0, 1000)
    assert (governor.meter.day.bytes, governor.meter.day.streams) == (1000, 1)  # bytes counted once

    clock.now = paris(2026, 5, 2, 0, 0, 1)
    assert governor.refusal() is None
    assert heard[-1] == ServingState()
    fresh = governor.gate()
    assert fresh is not None and fresh.admit(500, True) == (500, 0.0) and not fresh.exhausted


def test_governor_gate_reaching_the_cap_exactly_ends_the_stream() -> None:
    governor = Governor(Limits(cap_day=1000, tz="UTC"), clock=Clock(0.0))
    gate = governor.gate()
    assert gate is not None
    assert gate.admit(1000, True) == (1000, 0.0)
    assert gate.exhausted and not governor.state.serving
    other = governor.gate()
    assert other is not None and other.admit(1, True) == (0, 0.0) and other.exhausted


def test_governor_cap_already_reached_at_start() -> None:
    governor = Governor(Limits(cap_month=10, tz="UTC"), clock=Clock(0.0))
    governor.meter.add(0, 10, 0.0)
    governor.refresh()
    assert governor.refusal() == "monthly cap of 10 B reached"


def test_governor_ungated_streams_are_counted_at_their_end() -> None:
    governor = Governor(Limits(), clock=Clock(0.0))
    assert governor.gate() is None
    governor.finished(None, "", 30, 70)
    assert (governor.meter.day.bytes, governor.meter.day.streams) == (100, 1)


def test_governor_rates_pause_the_reader() -> None:
    ticks = Clock(0.0)
    limits = Limits(rate_stream=100_000, rate_total=120_000)
    governor = Governor(limits, clock=Clock(0.0), monotonic=ticks)
    one, two = governor.gate(), governor.gate()
    assert one is not None and two is not None
    burst = 16 * 1024  # both buckets' burst at these rates
    assert one.admit(burst, False) == (burst, 0.0)
    allowed, wait = one.admit(100_000, False)
    assert allowed == 100_000 and wait == pytest.approx(1.0)  # the stream's own limit binds
    _, wait_two = two.admit(1000, False)  # the total is in debt from the first stream
    assert wait_two == pytest.approx((100_000 + 1000) / 120_000)


def test_governor_hours_and_cap_together_name_the_cap() -> None:
    clock = Clock(paris(2026, 5, 1, 12, 0))
    governor = Governor(Limits(cap_day=5, hours=NIGHT, tz="Europe/Paris"), clock=clock)
    assert governor.state.reason == "outside the serving hours (22:00-07:00)"
    governor.take(5, True)
    assert governor.state.reason == "daily cap of 5 B reached"


async def test_governor_state_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "wallet.key.usage.json"
    clock = Clock(paris(2026, 5, 1, 12, 0))
    limits = Limits(cap_day=1000, tz="Europe/Paris")
    first = Governor(limits, state_file=path, address="0xabc", clock=clock)
    gate = first.gate()
    assert gate is not None
    gate.admit(600, False)
    first.finished(gate, "deal-1", 0, 600)
    stop = asyncio.Event()
    stop.set()
    await first.run(stop)  # saves on the way out

    saved = read_state(path)
    assert saved is not None
    assert saved["day"]["down"] == 600 and saved["limits"]["cap_day"] == 1000
    assert saved["state"] == {"serving": True, "reason": "", "until": None}

    clock.now += 3600
    second = Governor(limits, state_file=path, address="0xabc", clock=clock)
    gate = second.gate()
    assert gate is not None
    assert gate.admit(600, False) == (400, 0.0)  # today's cap did not reset
    assert second.refusal() == "daily cap of 1.0 kB reached"


async def test_governor_saves_when_the_state_changes(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    governor = Governor(Limits(cap_day=10, tz="UTC"), state_file=path, clock=Clock(0.0), save_interval=60)
    stop = asyncio.Event()
    running = asyncio.create_task(governor.run(stop))
    try:
        await eventually(lambda: read_state(path) is not None)  # the first pass saves
        governor.take(10, True)  # the cap: saved at once, not after save_interval
        await eventually(lambda: not (read_state(path) or {})["state"]["serving"])
    finally:
        stop.set()
        await running
    assert read_state(path)["day"]["up"] == 10  # type: ignore[index]


def test_governor_unreadable_state_file_starts_from_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    governor = Governor(Limits(cap_day=10), state_file=path)
    assert governor.meter.day.bytes == 0
    assert "not read" in caplog.text


# what `ipsx provide status` shows


async def saved_governor(path: Path, clock: Clock, limits: Limits) -> Governor:
    governor = Governor(
        limits,
        state_file=path,
        address="0xabc",
        clock=clock,
        policy=ExitPolicy(ports=frozenset({80, 443, 8000, 8001})),
    )
    await governor.save()
    return governor


async def test_describe_a_capped_agent(tmp_path: Path) -> None:
    path = tmp_path / "w.key.usage.json"
    clock = Clock(paris(2026, 5, 1, 23, 0))
    governor = await saved_governor(
        path, clock, Limits(cap_day=2_000_000, rate_stream=1_250_000, hours=NIGHT, tz="Europe/Paris")
    )
    gate = governor.gate()
    assert gate is not None
    gate.admit(2_500_000, False)
    governor.finished(gate, "deal-7", 0, 2_000_000)
    await governor.save()

    clock.now += 5
    lines = describe(read_status(path, clock=clock), payouts=None, payouts_store="p.json")
    assert lines[0] == f"agent 0xabc, state file {path}"
    assert lines[1] == "  saved 2026-05-01 23:00:00 (5 s ago)"
    assert lines[2] == "serving: no, daily cap of 2.0 MB reached until 2026-05-02 00:00 (Europe/Paris)"
    assert lines[3] == (
        "today (2026-05-01):   2.0 MB in 1 stream (up 0 B, down 2.0 MB), cap 2.0 MB: 100% used, 0 B left"
    )
    assert lines[4].startswith("this month (2026-05): 2.0 MB in 1 stream") and lines[4].endswith("no cap")
    assert lines[5:9] == [
        "hours: 22:00-07:00 (Europe/Paris)",
        "bandwidth: 10 Mbit/s per stream",
        "protocols: all; ports: 80, 443, 8000-8001",
        "blocked: nothing",
    ]
    assert lines[9:11] == ["streams per deal today:", f"  {'deal-7':<40} {'2.0 MB':>10}  1 stream"]
    assert (
        lines[-1]
        == "earnings: run with --payouts-api to keep the hub's payout proofs and see what you earned"
    )


async def test_describe_the_next_day_and_a_stopped_agent(tmp_path: Path) -> None:
    path = tmp_path / "w.key.usage.json"
    clock = Clock(paris(2026, 5, 1, 23, 0))
    governor = await saved_governor(path, clock, Limits(cap_day=1000, hours=NIGHT, tz="Europe/Paris"))
    governor.take(1000, True)
    await governor.save()

    clock.now = paris(2026, 5, 2, 12, 0)  # the agent has not saved since last night
    lines = describe(read_status(path, clock=clock), payouts=None, payouts_store="p.json")
    assert "the agent is not running" in lines[2]
    assert (
        lines[3]
        == "serving: no, outside the serving hours (22:00-07:00) until 2026-05-02 22:00 (Europe/Paris)"
    )
    assert lines[4].startswith("today (2026-05-02):   0 B in 0 streams")  # a new day, a new cap
    assert lines[5].startswith("this month (2026-05): 1.0 kB")


async def test_describe_earnings_from_the_payout_proofs(tmp_path: Path) -> None:
    path = tmp_path / "w.key.usage.json"
    clock = Clock(paris(2026, 5, 1, 10, 0))
    governor = await saved_governor(path, clock, Limits(tz="Europe/Paris"))
    status = read_status(path, clock=clock)
    assert describe(status, payouts=2 * 10**18, payouts_store="p.json")[-1] == (
        "earnings: 2 IPSX in the payout proofs kept in p.json; what was earned today shows once the agent "
        "runs with --payouts-api"
    )
    governor.note_payouts(10**18)  # seen by the agent yesterday evening...
    clock.now = paris(2026, 5, 2, 9, 0)
    governor.note_payouts(3 * 10**18)  # ...and this morning
    await governor.save()
    clock.now += 3600
    assert describe(read_status(path, clock=clock), payouts=35 * 10**17, payouts_store="p.json")[-1] == (
        "earned today: 2.5 IPSX, this month: 2.5 IPSX (payout proofs kept in p.json: 3.5 IPSX in all)"
    )


def test_read_status_without_a_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_status(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text(json.dumps({"limits": {"cap_day": "lots"}}))
    with pytest.raises(WireError):
        read_status(tmp_path / "bad.json")
