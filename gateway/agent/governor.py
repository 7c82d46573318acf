"""The agent's governor: its limits applied to the streams, and its serving state.

One governor per agent process, shared by its sessions to every gateway node. It owns the usage
meter (``gateway.agent.meter``), the bandwidth shared by all streams, and the serving state —
taking streams or not, and why (outside the serving hours, a cap reached) — which each session
advertises to its gateway node when it changes. Streams of a governor with caps or rates get a
``StreamGate`` through which every chunk they relay is counted, cut at the cap, and paced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.agent.caps import Limits, ServingState, TokenBucket, hours_change, hours_open
from gateway.agent.meter import UsageMeter, read_state, write_state
from gateway.agent.policy import ExitPolicy

log = logging.getLogger("ipsx.agent")

Listener = Callable[[ServingState], None]
SAVE_EVERY = 10.0  # seconds between saves of an idle agent's state file (it shows the agent runs)


class StreamGate:
    """One stream's way through the governor: ``admit`` each chunk as it is read."""

    __slots__ = ("_bucket", "_governor", "cut", "exhausted")

    def __init__(self, governor: Governor, bucket: TokenBucket | None) -> None:
        self._governor = governor
        self._bucket = bucket
        self.exhausted = False  # a cap was reached: the stream must end
        self.cut: Callable[[], None] = lambda: None  # ends the stream (set by the relay)

    def admit(self, count: int, up: bool) -> tuple[int, float]:
        """(bytes of the chunk that may be relayed, seconds to pause reading after it)."""
        governor = self._governor
        allowed = governor.take(count, up)
        if allowed < count or governor.capped:
            self.exhausted = True
        now = governor.monotonic()
        delay = 0.0 if self._bucket is None else self._bucket.spend(allowed, now)
        if governor.total is not None:
            delay = max(delay, governor.total.spend(allowed, now))
        return allowed, delay


class Governor:
    """Limits, meter and serving state of one agent.

    ``clock`` is the wall clock (days, months, hours), ``monotonic`` the one rates are paced by;
    both are injectable for tests. With ``state_file`` the meter starts from it and is saved to
    it by ``run`` (every ``save_interval`` seconds while something changed, and at the end),
    with ``policy`` (the agent's exit policy, for ``ipsx provide status`` to show).
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        state_file: Path | None = None,
        address: str = "",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        save_interval: float = 2.0,
        policy: ExitPolicy | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.policy = policy
        self.clock = clock
        self.monotonic = monotonic
        self.state_file = state_file
        self.save_interval = save_interval
        now = clock()
        self.meter = UsageMeter(self.limits, now, address=address)
        if state_file is not None:
            try:
                self.meter.restore(read_state(state_file), now)
            except (OSError, ValueError) as exc:
                log.warning("state file %s not read (%s); counting from zero", state_file, exc)
        rate = self.limits.rate_total
        self.total = None if rate is None else TokenBucket(rate, monotonic())
        self._listeners: list[Listener] = []
        self._dirty = state_file is not None  # the first save shows the limits to `ipsx provide status`
        self._saved = -math.inf  # monotonic time of the last save
        self._wake: asyncio.Event | None = None
        self.capped = False
        self.state, self._next_change = self._evaluate(now)

    # what the sessions ask
    def refusal(self) -> str | None:
        """Why no new stream is taken now, or None when one is."""
        if self.clock() >= self._next_change:
            self.refresh()
        return None if self.state.serving else self.state.reason

    def gate(self) -> StreamGate | None:
        """A new stream's gate; None when nothing needs metering as it flows (no cap, no rate)."""
        if not self.limits.gated:
            return None
        rate = self.limits.rate_stream
        return StreamGate(self, None if rate is None else TokenBucket(rate, self.monotonic()))

    def take(self, count: int, up: bool) -> int:
        """Count bytes read from a gated stream; how many of them the caps allow."""
        now = self.clock()
        if now >= self._next_change:  # past midnight: a cap reached yesterday no longer holds
            self.refresh()
        allowed = self.meter.take(count, up, now)
        self._dirty = True
        if not self.capped and (allowed < count or self.meter.remaining(now) == 0):
            self.refresh()
        return allowed

    def finished(self, gate: StreamGate | None, deal: str, up: int, down: int) -> None:
        """A stream ended having relayed ``up`` and ``down`` bytes (counted once: the bytes of a
        gated stream were counted as they flowed)."""
        now = self.clock()
        if gate is None:
            self.meter.add(up, down, now)
        self.meter.stream_done(deal, up + down, now)
        self._dirty = True

    def note_payouts(self, total: int) -> None:
        """The payout proofs kept now total ``total`` base units (for "earned today")."""
        self.meter.note_payouts(total, self.clock())
        self._dirty = True

    # the serving state
    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _evaluate(self, now: float) -> tuple[ServingState, float]:
        """The serving state at ``now``, and when it is due to be worked out again."""
        meter, hours = self.meter, self.limits.hours
        capped = meter.cap_reached(now)
        wall = meter.local.wall(now)
        change = hours_change(hours, wall)
        next_hours = math.inf if change is None else meter.local.unix(change)
        self.capped = capped is not None
        if capped is not None:
            state = ServingState(False, capped[0], capped[1])
        elif not hours_open(hours, wall):
            windows = ", ".join(str(window) for window in hours)
            state = ServingState(False, f"outside the serving hours ({windows})", next_hours)
        else:
            state = ServingState()
        caps = self.limits.cap_day is not None or self.limits.cap_month is not None
        return state, min(next_hours, meter.day_end if caps else math.inf)

    def refresh(self) -> ServingState:
        """Work out the serving state now; tell the listeners if it changed."""
        state, self._next_change = self._evaluate(self.clock())
        if state != self.state:
            self.state = state
            self._dirty = True
            if state.serving:
                log.info("serving again")
            else:
                log.info("not serving: %s", state.reason)
            for listener in list(self._listeners):
                listener(state)
            if self._wake is not None:
                self._wake.set()  # save the new state now
        return state

    def snapshot(self) -> dict[str, Any]:
        """What the state file holds: the meter, the limits and the serving state."""
        return {
            **self.meter.to_json(),
            "limits": self.limits.to_wire(),
            "policy": None if self.policy is None else self.policy.to_wire(),
            "state": self.state.to_wire(),
            "saved_at": self.clock(),
        }

    async def save(self) -> None:
        """Write the state file now (off the event loop); failures are logged."""
        if self.state_file is None:
            return
        self._dirty = False
        self._saved = self.monotonic()
        try:
            await asyncio.to_thread(write_state, self.state_file, self.snapshot())
        except OSError as exc:
            self._dirty = True
            log.warning("state file %s not written: %s", self.state_file, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: refresh the serving state when the hours or the day turn, and save the
        state file while it changes; save it a last time on the way out."""
        self._wake = asyncio.Event()
        if not self.state.serving:
            log.info("not serving: %s", self.state.reason)
        try:
            while not stop.is_set():
                self.refresh()
                if self._dirty or self.monotonic() - self._saved >= SAVE_EVERY:
                    await self.save()
                delay = min(self.save_interval, max(0.05, self._next_change - self.clock()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await _first(stop, self._wake)
        finally:
            self._wake = None
            if self.state_file is not None:
                await asyncio.shield(self.save())


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
