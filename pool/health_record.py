"""The shared health record of an exit in Redis: its format, its decay, and what the API reads.

One hash per exit (``pool.keys.exit_health``) holds decayed counters, the failure streak and the
circuit breaker; a list (``pool.keys.exit_errors``) the recent errors. ``pool.health.ExitHealth``
writes them; any process reads them with :func:`reports`.

Counters decay exponentially: an observation counts 1 now, 1/2 after ``half_life``, 1/4 after
twice that, so every rate is a recent one, aggregated over all nodes. They are kept with forward
decay: a record at time t adds ``x * 2^((t - T) / half_life)`` to the field ``NAME@E`` of its
epoch E, whose landmark T is renewed every 16 half-lives so the factor stays under 2^16; reading
at ``now`` multiplies by ``2^((T - now) / half_life)``. Adding is commutative, so nodes only ever
HINCRBYFLOAT, never read, decay and write back.

Every time in the record is the Redis server's (``pool.server_time``): the breaker scripts stamp
and compare quarantines with ``TIME``; a node dates its counters and errors by its estimate of the
server's clock; :func:`reports` judges by the server's ``TIME``, read after the records. Hosts'
clocks may then disagree by minutes without a quarantine lasting longer or shorter for anyone, or
a node's counts weighing more or less than the others'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from pool import keys
from pool.server_time import NOW_MS_LUA, time_seconds

SECONDS = 1.0
EPOCH_HALF_LIVES = 16
# ok/fail: dials (fail: the exit's fault only); lat: dial seconds of the ok ones; bytes/secs: what
# streams carried and how long they ran; sok/slost: streams that ended well / that the exit lost;
# eok/efail: the breaker's evidence, the dials since it last moved.
COUNTERS = ("ok", "fail", "lat", "bytes", "secs", "sok", "slost", "eok", "efail")
NEGLIGIBLE = 0.01  # decayed counts under this are "no recent data"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """How health is measured and when the breaker trips; raises ValueError when inconsistent."""

    half_life: float = 60 * SECONDS  # an observation weighs half as much this much later
    sync_interval: float = 1 * SECONDS  # records flushed to Redis, shared state read back
    trip_streak: int = 5  # consecutive exit-blamed dial failures (all nodes) that trip the breaker
    trip_rate: float = 0.5  # a dial success rate under this trips it too…
    min_attempts: float = 10.0  # …once this many (decayed) dials were tried since it last moved
    cooldown: float = 30 * SECONDS  # quarantine after a first trip
    cooldown_growth: float = 2.0  # each repeated trip multiplies the cool-down by this…
    max_cooldown: float = 15 * 60 * SECONDS  # …up to this
    trip_memory: float = 60 * 60 * SECONDS  # a trip this soon after the previous one is a repeat
    probe_timeout: float = 30 * SECONDS  # a probe with no outcome this long is given up
    degraded_rate: float = 0.9  # reported "degraded" under this dial (or stream) success rate
    weight_floor: float = 0.05  # the least selection weight of an exit that is not quarantined
    latency_slack: float = 0.05 * SECONDS  # dial latencies closer than about this weigh the same
    recent_errors: int = 20  # errors kept per exit
    retention: float = 24 * 3600 * SECONDS  # an exit's health keys outlive its last record this long

    def __post_init__(self) -> None:
        if self.half_life <= 0 or self.sync_interval <= 0 or self.probe_timeout <= 0:
            raise ValueError("half_life, sync_interval and probe_timeout must be positive")
        if self.trip_streak < 1 or self.recent_errors < 1 or self.min_attempts < 1:
            raise ValueError("trip_streak, recent_errors and min_attempts must be at least 1")
        if not 0 <= self.trip_rate <= 1 or not 0 <= self.degraded_rate <= 1:
            raise ValueError("trip_rate and degraded_rate are fractions between 0 and 1")
        if not 0 < self.cooldown <= self.max_cooldown or self.cooldown_growth < 1:
            raise ValueError("expected 0 < cooldown <= max_cooldown and cooldown_growth >= 1")
        if not self.max_cooldown < self.trip_memory <= self.retention:
            raise ValueError("expected max_cooldown < trip_memory <= retention")
        if not 0 < self.weight_floor <= 1:
            raise ValueError("weight_floor must be in (0, 1]")

    @property
    def epoch_span(self) -> float:
        return EPOCH_HALF_LIVES * self.half_life

    def cooldown_for(self, trips: int) -> float:
        """The quarantine after the ``trips``-th trip in a row (1 for the first)."""
        return min(self.cooldown * self.cooldown_growth ** (trips - 1), self.max_cooldown)


# KEYS[1] the exit's health hash. ARGV: first cool-down, growth, longest cool-down, trip memory,
# retention (times in ms), why. Returns {until, trips, tripped, now} (ms, by the server's clock).
# A breaker still open is left alone, so nodes that see the same failures trip it once.
TRIP_LUA = (
    NOW_MS_LUA
    + """
local h = redis.call('HMGET', KEYS[1], 'until', 'trips', 'tripped')
local until_ms, trips, tripped = tonumber(h[1] or 0), tonumber(h[2] or 0), tonumber(h[3] or 0)
if until_ms > now then return {until_ms, trips, tripped, now} end
if now - tripped > tonumber(ARGV[4]) then trips = 0 end
trips = trips + 1
local cool = math.min(tonumber(ARGV[1]) * tonumber(ARGV[2]) ^ (trips - 1), tonumber(ARGV[3]))
until_ms = now + math.floor(cool)
redis.call('HSET', KEYS[1], 'until', string.format('%d', until_ms), 'trips', trips,
  'tripped', string.format('%d', now), 'why', ARGV[6], 'streak', 0)
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.match(name, '^e%a+@') then redis.call('HDEL', KEYS[1], name) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {until_ms, trips, now, now}
"""
)

# KEYS[1] the exit's health hash; ARGV[1] retention (ms). A probe got through: traffic flows and
# is judged afresh (the streak and evidence of before the quarantine are dropped).
CLOSE_LUA = """
redis.call('HSET', KEYS[1], 'until', 0, 'streak', 0)
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.match(name, '^e%a+@') then redis.call('HDEL', KEYS[1], name) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] the exit's health hash. The exit's agent came back: a cool-down still running ends now
# (the server's now), so the next selection probes the exit instead of waiting it out.
RECALL_LUA = (
    NOW_MS_LUA
    + """
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or 0)
if until_ms > now then redis.call('HSET', KEYS[1], 'until', string.format('%d', now)) end
return until_ms
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class SharedRecord:
    """An exit's health hash, decoded, its counters decayed to the time it was read."""

    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))
    streak: int = 0
    until: float = 0.0  # unix seconds (server's clock) the quarantine ends; 0: the breaker is closed
    trips: int = 0
    tripped: float = 0.0
    why: str = ""
    stale: list[str] = field(default_factory=list)  # fields of epochs two or more behind


def decode_record(raw: Mapping[Any, Any], now: float, settings: HealthSettings) -> SharedRecord:
    """The record in ``raw`` (an HGETALL answer), counters decayed to ``now`` (unix seconds by the
    server's clock); bad fields skipped."""
    shared = SharedRecord()
    span, current = settings.epoch_span, int(now // settings.epoch_span)
    for key, value in raw.items():
        name, text = _text(key), _text(value)
        counter, sep, epoch_text = name.partition("@")
        try:
            if sep:
                epoch = int(epoch_text)
                exponent = min((epoch * span - now) / settings.half_life, 64.0)  # a skewed clock
                if counter in shared.counts:
                    shared.counts[counter] += float(text) * 2.0**exponent
                if epoch <= current - 2:
                    shared.stale.append(name)
            elif name == "streak":
                shared.streak = int(text)
            elif name == "until":
                shared.until = int(text) / 1000
            elif name == "trips":
                shared.trips = int(text)
            elif name == "tripped":
                shared.tripped = int(text) / 1000
            elif name == "why":
                shared.why = text
        except ValueError:  # not ours to fix; the field counts as absent
            continue
    return shared


def weight_of(
    counts: Mapping[str, float], reference: float | None, floor: float, slack: float = 0.0
) -> float:
    """An exit's selection weight in [``floor``, 1]; 1 for an exit with no record.

    ``((ok + 1) / (ok + fail + 1))**2 * (sok + 1) / (sok + slost + 1)
    * min(1, (reference + slack) / (latency + slack))``
    with decayed counts: one virtual success keeps a single failure from zeroing a new exit; the
    dial rate is squared because every failed dial costs the requester a retry. ``latency`` is the
    exit's mean dial latency and ``reference`` the median of the exits this node knows, so an exit
    twice as slow as the typical one gets about half the weight, and none gets more for being
    faster; ``slack`` keeps differences of a few milliseconds (scheduling noise, not a slow
    exit) from weighing anything.
    """
    ok, fail = counts["ok"], counts["fail"]
    value = ((ok + 1) / (ok + fail + 1)) ** 2
    value *= (counts["sok"] + 1) / (counts["sok"] + counts["slost"] + 1)
    if reference is not None and ok >= NEGLIGIBLE and counts["lat"] > 0:
        value *= min(1.0, (reference + slack) / (counts["lat"] / ok + slack))
    return max(floor, min(1.0, value))


def summarise(shared: SharedRecord, state: str, now: float) -> dict[str, Any]:
    """The API's view of an exit at ``now`` (server's clock): decayed rates, the breaker's
    standing, without recent errors."""
    counts = shared.counts
    attempts, streams = counts["ok"] + counts["fail"], counts["sok"] + counts["slost"]
    ok, secs = counts["ok"], counts["secs"]
    return {
        "state": state,
        "success_rate": round(ok / attempts, 4) if attempts >= NEGLIGIBLE else None,
        "attempts": round(attempts, 2),
        "dial_latency_ms": round(counts["lat"] / ok * 1000, 1) if ok >= NEGLIGIBLE else None,
        "throughput_bps": round(counts["bytes"] * 8 / secs) if secs >= NEGLIGIBLE else None,  # bits/s
        "stream_success_rate": round(counts["sok"] / streams, 4) if streams >= NEGLIGIBLE else None,
        "quarantined_until": shared.until if shared.until > now else None,
        "trips": shared.trips,
        "last_trip_reason": shared.why or None,
    }


def state_label(shared: SharedRecord, now: float, settings: HealthSettings) -> str:
    """What the API calls the exit's standing at ``now`` (server's clock): "healthy", "degraded",
    "quarantined" or "probing"."""
    if shared.until > now:
        return "quarantined"
    if shared.until > 0:
        return "probing"  # cool-down over, the breaker waits for (or runs) its probe
    summary = summarise(shared, "", now)
    rates = (summary["success_rate"], summary["stream_success_rate"])
    return "degraded" if any(r is not None and r < settings.degraded_rate for r in rates) else "healthy"


async def reports(
    redis: aioredis.Redis,
    exit_ids: Iterable[str],
    settings: HealthSettings | None = None,
    *,
    now: float | None = None,
) -> dict[str, dict[str, Any]]:
    """The shared health of each exit as the API shows it, read from Redis in one pipeline and a
    ``TIME``.

    Each report has ``state`` ("healthy" | "degraded" | "quarantined" | "probing"),
    ``success_rate`` (of dials, 0 to 1, None without recent dials), ``attempts`` (decayed dials),
    ``dial_latency_ms``, ``throughput_bps`` (bits per second of stream time),
    ``stream_success_rate``, ``quarantined_until`` (unix seconds, None unless quarantined),
    ``trips``, ``last_trip_reason`` and ``recent_errors`` (newest first: ``at`` unix seconds,
    ``reason``, ``node``). An exit with no record is healthy with no data. Times are the Redis
    server's: the reports are judged at its ``TIME``, read right after the records, unless ``now``
    (unix seconds, meant as the server's) says when.
    """
    settings = settings or HealthSettings()
    ids = list(exit_ids)
    if not ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for exit_id in ids:
            pipe.hgetall(keys.exit_health(exit_id))
            pipe.lrange(keys.exit_errors(exit_id), 0, settings.recent_errors - 1)
        rows = await pipe.execute()
    if now is None:  # after the records: no time a script stamped in them is ahead of it
        now = time_seconds(await redis.time())
    found = {}
    for index, exit_id in enumerate(ids):
        shared = decode_record(rows[2 * index], now, settings)
        summary = summarise(shared, state_label(shared, now, settings), now)
        summary["recent_errors"] = [orjson.loads(entry) for entry in rows[2 * index + 1]]
        found[exit_id] = summary
    return found


async def report(
    redis: aioredis.Redis, exit_id: str, settings: HealthSettings | None = None, *, now: float | None = None
) -> dict[str, Any]:
    """One exit's shared health (see :func:`reports`)."""
    return (await reports(redis, [exit_id], settings, now=now))[exit_id]
