"""Exit health on a gateway node: recording dials and streams, and each exit's circuit breaker.

The gateway records every dial and stream (``dial_ok``, ``dial_failed``, ``stream_done``): plain
dict updates, no I/O. A background task (``start``/``close``) then, every ``sync_interval``,
flushes the node's records to Redis in one pipeline and the breaker moves it decided (one script
call each, rare), and reads back in one pipeline the shared record (``pool.health_record``) of
the exits selection asked about. Selection (``state``, ``weight``, ``begin_probe``) only reads
memory.

Quarantines are shared, so they are stamped and judged by the Redis server's clock, not the
node's: the scripts read ``TIME``, and the breaker, which decides in memory, reads the node's
estimate of the server's clock (``pool.server_time.ServerClock``), refreshed by each sync's read
and each trip's answer. The counters' time slots and the errors' dates go by that estimate too.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pool import keys
from pool.health_record import (
    CLOSE_LUA,
    NEGLIGIBLE,
    RECALL_LUA,
    TRIP_LUA,
    HealthSettings,
    SharedRecord,
    decode_record,
    report,
    reports,
    state_label,
    summarise,
    weight_of,
)
from pool.server_time import ServerClock

__all__ = ["Breaker", "ExitHealth", "HealthSettings", "report", "reports"]

log = logging.getLogger("ipsx.pool.health")

MAX_REASON = 64  # characters of an error reason kept
_FORGET_AFTER = 600  # syncs without a question about an exit before its view is dropped


class Breaker(enum.StrEnum):
    """An exit's circuit breaker as this node sees it."""

    CLOSED = "closed"  # traffic flows
    OPEN = "open"  # quarantined until its cool-down ends
    HALF_OPEN = "half_open"  # cool-down over: the next connection selection makes for it probes it
    PROBING = "probing"  # this node's probe is in flight; no other connection goes there


class _Event(enum.Enum):
    TRIP = "trip"
    PROBE = "probe"
    PROBE_OK = "probe_ok"
    PROBE_FAILED = "probe_failed"
    PROBE_LOST = "probe_lost"


# The breaker's lifecycle; OPEN → HALF_OPEN is the clock's. A pair not listed changes nothing (the
# late failure of a dial that began before a trip, a second probe, a success outside a probe).
_TRANSITIONS: dict[tuple[Breaker, _Event], Breaker] = {
    (Breaker.CLOSED, _Event.TRIP): Breaker.OPEN,
    (Breaker.HALF_OPEN, _Event.PROBE): Breaker.PROBING,
    (Breaker.OPEN, _Event.PROBE): Breaker.PROBING,  # a last resort, when every candidate is quarantined
    (Breaker.PROBING, _Event.PROBE_OK): Breaker.CLOSED,
    (Breaker.PROBING, _Event.PROBE_FAILED): Breaker.OPEN,
    (Breaker.PROBING, _Event.PROBE_LOST): Breaker.HALF_OPEN,  # OPEN again for a last-resort probe
}


@dataclass(slots=True)
class _Pending:
    """What this node recorded about one exit since its last flush."""

    counts: dict[str, float] = field(default_factory=dict)
    trailing: int = 0  # exit-blamed dial failures since the batch's last success
    succeeded: bool = False  # a dial got through: the shared streak restarts from ``trailing``
    errors: list[tuple[float, str]] = field(default_factory=list)  # (local clock, reason)

    def add(self, name: str, amount: float) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + amount


@dataclass(slots=True)
class _Known:
    """This node's view of one exit: the shared record as last read, and its breaker here."""

    shared: SharedRecord = field(default_factory=SharedRecord)
    probing_since: float | None = None
    local_streak: int = 0  # this node's own consecutive exit-blamed dial failures
    weight: float = 1.0
    idle: int = 0  # syncs since selection last asked about it


class ExitHealth:
    """One gateway node's recorder and view of exit health, shared with the other nodes.

    The breaker of an exit trips (CLOSED → OPEN) after ``trip_streak`` consecutive exit-blamed
    dial failures, counted over all nodes (this node trips at once on its own streak), or when
    the dial success rate since the breaker last moved falls under ``trip_rate`` over at least
    ``min_attempts`` decayed dials. It stays OPEN for ``cooldown``, times ``cooldown_growth`` for
    each repeated trip within ``trip_memory``, at most ``max_cooldown``; then it is HALF_OPEN and
    the next connection selection makes for the exit is its probe, one per node at a time
    (PROBING). The probe's success closes the breaker; its failure opens it again, longer. Trips
    and closes are in Redis within ``sync_interval`` and the other nodes follow at their next sync
    (each may then send a probe of its own); when two nodes disagree, the last write wins. Every
    time here is the Redis server's (see the module's docstring); ``clock`` is this host's
    monotonic clock, which only has to measure the seconds between two syncs.

    Which failures are the exit's is the caller's call (``exit_fault``): the gateway's retryable
    dial errors (timeout, the exit failed, unreachable) are; a refusal by the destination, a name
    that does not resolve or the exit's policy are not.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        node: str,
        *,
        settings: HealthSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._node = node
        self.settings = settings or HealthSettings()
        self._server = ServerClock(clock)
        self._known: dict[str, _Known] = {}
        self._touched: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        self._moves: dict[str, tuple[str, str]] = {}  # exit → ("trip", why) | ("close" | "recall", "")
        self._stale: dict[str, list[str]] = {}
        self._trip = redis.register_script(TRIP_LUA)
        self._close = redis.register_script(CLOSE_LUA)
        self._recall = redis.register_script(RECALL_LUA)
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # recording: the gateway's hot path, memory only

    def dial_ok(self, exit_id: str, latency: float) -> None:
        """A dial through ``exit_id`` got through after ``latency`` seconds."""
        now = self._server.now()
        pending = self._pending_for(exit_id)
        pending.add("ok", 1)
        pending.add("eok", 1)
        pending.add("lat", max(latency, 0.0))
        pending.succeeded, pending.trailing = True, 0
        known = self._known_for(exit_id)
        known.local_streak = 0
        self._apply(exit_id, known, _Event.PROBE_OK, now)

    def dial_failed(self, exit_id: str, reason: str, *, exit_fault: bool = True) -> None:
        """A dial through ``exit_id`` failed; ``reason`` is a short code ("timeout", "exit", …).

        Every failure joins the exit's recent errors; only an ``exit_fault`` counts against it
        (success rate, streak, breaker). Any other failure still shows the exit answers, so it
        ends a probe as a success.
        """
        now = self._server.now()
        pending = self._pending_for(exit_id)
        self._note_error(pending, reason)
        known = self._known_for(exit_id)
        if not exit_fault:
            self._apply(exit_id, known, _Event.PROBE_OK, now)
            return
        pending.add("fail", 1)
        pending.add("efail", 1)
        pending.trailing += 1
        known.local_streak += 1
        if not self._apply(exit_id, known, _Event.PROBE_FAILED, now, "probe"):
            why = self._should_trip(known, pending)
            if why is not None:
                self._apply(exit_id, known, _Event.TRIP, now, why)

    def dial_abandoned(self, exit_id: str) -> None:
        """A dial through ``exit_id`` ended with no outcome (the client left): a probe is freed."""
        known = self._known.get(exit_id)
        if known is not None:
            self._apply(exit_id, known, _Event.PROBE_LOST, self._server.now())

    def stream_done(
        self, exit_id: str, nbytes: int, seconds: float, ok: bool, reason: str = "stream_lost"
    ) -> None:
        """A stream through ``exit_id`` ended after carrying ``nbytes`` both ways in ``seconds``;
        ``ok`` is False when the exit lost it (``reason`` then joins the recent errors)."""
        pending = self._pending_for(exit_id)
        pending.add("bytes", max(nbytes, 0))
        pending.add("secs", max(seconds, 0.0))
        pending.add("sok" if ok else "slost", 1)
        if not ok:
            self._note_error(pending, reason)

    # selection: memory only

    def reconnected(self, exit_ids: Iterable[str]) -> None:
        """The exits' agent logged in again: their quarantines end now, so each one's next
        selection is its probe (a fresh tunnel is better news than a cool-down running out)."""
        now = self._server.now()
        for exit_id in exit_ids:
            known = self._known.get(exit_id)
            if known is not None and self._state(known, now) is Breaker.OPEN:
                known.shared.until = now
                self._moves[exit_id] = ("recall", "")

    def now(self) -> float:
        """The Redis server's time as this node estimates it, unix seconds: the ``now`` that
        ``state`` and ``begin_probe`` take."""
        return self._server.now()

    def state(self, exit_id: str, now: float | None = None) -> Breaker:
        """The exit's breaker here (CLOSED for an exit never seen); keeps its view refreshed."""
        self._touched.add(exit_id)
        known = self._known.get(exit_id)
        if known is None:
            return Breaker.CLOSED
        return self._state(known, self._server.now() if now is None else now)

    def weight(self, exit_id: str) -> float:
        """The exit's selection weight in (0, 1] as of the last sync (see :func:`weight_of`)."""
        self._touched.add(exit_id)
        known = self._known.get(exit_id)
        return 1.0 if known is None else known.weight

    def quarantined_until(self, exit_id: str) -> float:
        """Unix seconds (server's clock) the exit's quarantine ends (past: half-open); 0 if its
        breaker is closed."""
        known = self._known.get(exit_id)
        return 0.0 if known is None else known.shared.until

    def begin_probe(self, exit_id: str, now: float | None = None) -> bool:
        """Make the next connection to ``exit_id`` its probe; False if it may not be probed now
        (closed, already probing). Its ``dial_ok``/``dial_failed``/``dial_abandoned`` ends it."""
        known = self._known_for(exit_id)
        return self._apply(exit_id, known, _Event.PROBE, self._server.now() if now is None else now)

    def snapshot(self, exit_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """This node's view of each exit (as :func:`reports`, plus ``weight``, minus ``recent_errors``)."""
        now = self._server.now()
        found = {}
        for exit_id in exit_ids:
            known = self._known.get(exit_id) or _Known()
            state = self._state(known, now)
            if state is Breaker.CLOSED:
                label = state_label(known.shared, now, self.settings)
            else:
                label = "quarantined" if state is Breaker.OPEN else "probing"
            found[exit_id] = summarise(known.shared, label, now) | {"weight": round(known.weight, 4)}
        return found

    # the breaker

    def _state(self, known: _Known, now: float) -> Breaker:
        if known.shared.until <= 0:
            return Breaker.CLOSED
        if known.probing_since is not None and now - known.probing_since < self.settings.probe_timeout:
            return Breaker.PROBING
        return Breaker.OPEN if now < known.shared.until else Breaker.HALF_OPEN

    def _apply(self, exit_id: str, known: _Known, event: _Event, now: float, why: str = "") -> bool:
        """Move the breaker on ``event`` if the table allows; True if it moved."""
        target = _TRANSITIONS.get((self._state(known, now), event))
        if target is None:
            return False
        shared = known.shared
        if target is Breaker.PROBING:
            known.probing_since = now
        elif target is Breaker.HALF_OPEN:
            known.probing_since = None
        elif target is Breaker.OPEN:
            if shared.until <= now:  # a last-resort probe's failure keeps the cool-down it had
                repeat = shared.trips if now - shared.tripped <= self.settings.trip_memory else 0
                shared.trips, shared.tripped = repeat + 1, now
                shared.until = now + self.settings.cooldown_for(shared.trips)
            shared.why, known.probing_since = why, None
            self._forget_evidence(exit_id, known)
            self._moves[exit_id] = ("trip", why)
        else:
            shared.until, known.probing_since = 0.0, None
            self._forget_evidence(exit_id, known)
            self._moves[exit_id] = ("close", "")
        return True

    def _forget_evidence(self, exit_id: str, known: _Known) -> None:
        """A moved breaker judges the exit afresh (the scripts do the same in Redis)."""
        known.shared.streak = known.local_streak = 0
        known.shared.counts["eok"] = known.shared.counts["efail"] = 0.0
        pending = self._pending.get(exit_id)
        if pending is not None:
            pending.counts.pop("eok", None)
            pending.counts.pop("efail", None)
            pending.trailing = 0

    def _should_trip(self, known: _Known, pending: _Pending | None) -> str | None:
        """Why the exit's closed breaker should trip, from the shared record and unflushed records."""
        settings, counts = self.settings, known.shared.counts
        extra = pending.counts if pending is not None else {}
        trailing = pending.trailing if pending is not None else 0
        streak = trailing if pending is not None and pending.succeeded else known.shared.streak + trailing
        if max(streak, known.local_streak) >= settings.trip_streak:
            return "streak"
        good = counts["eok"] + extra.get("eok", 0.0)
        tried = good + counts["efail"] + extra.get("efail", 0.0)
        if tried >= settings.min_attempts and good < settings.trip_rate * tried:
            return "rate"
        return None

    def _known_for(self, exit_id: str) -> _Known:
        known = self._known.get(exit_id)
        if known is None:
            known = self._known[exit_id] = _Known()
        self._touched.add(exit_id)
        return known

    def _pending_for(self, exit_id: str) -> _Pending:
        pending = self._pending.get(exit_id)
        if pending is None:
            pending = self._pending[exit_id] = _Pending()
        return pending

    def _note_error(self, pending: _Pending, reason: str) -> None:
        # dated by the local clock: the flush turns it into the server's by the estimate it then has
        pending.errors.append((self._server.local(), reason[:MAX_REASON]))
        if len(pending.errors) > 2 * self.settings.recent_errors:  # an error storm stays bounded
            del pending.errors[: -self.settings.recent_errors]

    # syncing with Redis

    async def start(self) -> None:
        """Start the background sync (once)."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="ipsx-exit-health")

    async def close(self) -> None:
        """Stop the background sync and flush what is left. Never raises for Redis: the last
        second of health records is not worth failing a shutdown over (it is logged)."""
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        try:
            await self.flush()
        except (RedisError, OSError) as exc:
            log.warning("exit health: last flush failed (%s: %s)", type(exc).__name__, exc)

    async def sync(self) -> None:
        """Flush this node's records, read the shared state back, and write the trips it called for."""
        await self.flush()
        await self.refresh()
        if self._moves:
            await self.flush()

    async def flush(self) -> None:
        """Write the records since the last flush, then the breaker moves, to Redis.

        Raises RedisError or OSError when Redis refuses. The batch's counters are then dropped
        (health is an estimate, and a half-applied pipeline cannot be told from a lost one); the
        breaker moves stay queued for the next flush.
        """
        async with self._lock:
            if not self._server.calibrated:  # the counters' time slots are the server's
                await self._server.calibrate(self._redis)
            batch, self._pending = self._pending, {}
            stale, self._stale = self._stale, {}
            if batch or stale:
                await self._write(batch, stale)
            moves, self._moves = self._moves, {}
            done: set[str] = set()
            try:
                for exit_id, (move, why) in moves.items():
                    await self._move(exit_id, move, why)
                    done.add(exit_id)
            except BaseException:
                left = {exit_id: moves[exit_id] for exit_id in moves if exit_id not in done}
                self._moves = left | self._moves  # a newer move decided meanwhile wins
                raise

    async def refresh(self) -> None:
        """Read the shared record of the exits asked about since the last refresh, with the server's
        time (which keeps this node's estimate of it); re-weigh; trip the exits the shared record
        condemns. An exit nobody asked about for ``_FORGET_AFTER`` syncs is forgotten here (its
        record stays in Redis).

        Raises RedisError or OSError when Redis refuses (the view stays as it was).
        """
        touched, self._touched = self._touched, set()
        for exit_id, known in list(self._known.items()):
            known.idle = 0 if exit_id in touched else known.idle + 1
            if known.idle > _FORGET_AFTER and exit_id not in self._pending and exit_id not in self._moves:
                del self._known[exit_id]
        ids = sorted(touched)
        async with self._redis.pipeline(transaction=False) as pipe:
            for exit_id in ids:
                pipe.hgetall(keys.exit_health(exit_id))
            rows = await pipe.execute()
        # Read after the records, so no time a script stamped in them is ahead of it; not in their
        # pipeline, where a Redis Cluster client refuses TIME.
        now = await self._server.calibrate(self._redis)
        for exit_id, row in zip(ids, rows, strict=True):
            known = self._known.setdefault(exit_id, _Known())
            shared = decode_record(row, now, self.settings)
            if shared.stale:
                self._stale[exit_id] = shared.stale
            if exit_id in self._moves:  # a move of ours not yet written outranks Redis: keep its side
                evidence = {name: known.shared.counts[name] for name in ("eok", "efail")}
                shared = replace(known.shared, counts=shared.counts | evidence)
            elif shared.until <= 0:
                known.probing_since = None  # another node's probe closed it
            known.shared = shared
        self._reweigh()
        for exit_id in ids:
            known = self._known[exit_id]
            if self._state(known, now) is Breaker.CLOSED:
                why = self._should_trip(known, self._pending.get(exit_id))
                if why is not None:
                    self._apply(exit_id, known, _Event.TRIP, now, why)

    def _reweigh(self) -> None:
        views = [known.shared.counts for known in self._known.values()]
        latencies = [c["lat"] / c["ok"] for c in views if c["ok"] >= NEGLIGIBLE and c["lat"] > 0]
        reference = statistics.median(latencies) if latencies else None
        for known in self._known.values():
            known.weight = weight_of(
                known.shared.counts, reference, self.settings.weight_floor, self.settings.latency_slack
            )

    async def _write(self, batch: dict[str, _Pending], stale: dict[str, list[str]]) -> None:
        settings, now = self.settings, self._server.now()
        epoch = int(now // settings.epoch_span)
        factor = 2.0 ** ((now - epoch * settings.epoch_span) / settings.half_life)
        retention = int(settings.retention * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for exit_id, pending in batch.items():
                key = keys.exit_health(exit_id)
                for name, amount in pending.counts.items():
                    pipe.hincrbyfloat(key, f"{name}@{epoch}", amount * factor)
                if pending.succeeded:
                    pipe.hset(key, "streak", pending.trailing)
                elif pending.trailing:
                    pipe.hincrby(key, "streak", pending.trailing)
                pipe.pexpire(key, retention)
                if pending.errors:
                    errors = keys.exit_errors(exit_id)
                    entries = [
                        orjson.dumps(
                            {"at": round(self._server.to_server(at), 3), "reason": reason, "node": self._node}
                        )
                        for at, reason in pending.errors[-settings.recent_errors :]
                    ]
                    pipe.lpush(errors, *entries)  # oldest first: the newest ends up at the head
                    pipe.ltrim(errors, 0, settings.recent_errors - 1)
                    pipe.pexpire(errors, retention)
            for exit_id, names in stale.items():
                pipe.hdel(keys.exit_health(exit_id), *names)
            await pipe.execute()

    async def _move(self, exit_id: str, move: str, why: str) -> None:
        settings, key = self.settings, keys.exit_health(exit_id)
        retention = int(settings.retention * 1000)
        if move == "close":
            await self._close(keys=[key], args=[retention])
            return
        if move == "recall":
            await self._recall(keys=[key])
            return
        ms = [int(value * 1000) for value in (settings.cooldown, settings.max_cooldown, settings.trip_memory)]
        sent = self._server.local()
        until, trips, tripped, now = await self._trip(
            keys=[key], args=[ms[0], settings.cooldown_growth, ms[1], ms[2], retention, why]
        )
        self._server.observe(int(now) / 1000, sent, self._server.local())
        known = self._known.get(exit_id)
        # Another node may have tripped it first: its cool-down is the one all nodes keep.
        if known is not None and known.shared.until > 0 and exit_id not in self._moves:
            known.shared.until, known.shared.trips = int(until) / 1000, int(trips)
            known.shared.tripped = int(tripped) / 1000

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self.settings.sync_interval):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            if self._closing:
                return
            try:
                await self.sync()
            except (RedisError, OSError) as exc:
                failures += 1
                if failures == 1 or failures % 60 == 0:  # Redis away: say so, not every second
                    log.warning(
                        "exit health sync failed %d time(s): %s: %s", failures, type(exc).__name__, exc
                    )
            else:
                if failures:
                    log.info("exit health sync recovered after %d failure(s)", failures)
                failures = 0
