"""The agent's own count of what it served, per local day and month, and its state file.

``UsageMeter`` is plain state fed bytes and clock values: the caps are enforced against it, and
it is what ``ipsx provide status`` shows. It persists as a small JSON file (written atomically:
a temporary file renamed over the old one), so restarting the agent does not reset today's cap.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from gateway.agent.caps import Limits, LocalTime, format_bytes

STATE_VERSION = 1
MAX_DEALS = 1_000  # deals listed per period; the streams of any further ones are summed as OTHER
NO_DEAL = "-"  # streams that belong to no deal
OTHER = "(other deals)"


@dataclass(slots=True)
class Tally:
    """What was served in one period (``period`` is ``YYYY-MM-DD`` or ``YYYY-MM``)."""

    period: str
    up: int = 0
    down: int = 0
    streams: int = 0
    deals: dict[str, list[int]] = field(default_factory=dict)  # deal → [bytes, streams]

    @property
    def bytes(self) -> int:
        return self.up + self.down

    def add_stream(self, deal: str, count: int) -> None:
        self.streams += 1
        key = deal or NO_DEAL
        if key not in self.deals and len(self.deals) >= MAX_DEALS:
            key = OTHER
        entry = self.deals.setdefault(key, [0, 0])
        entry[0] += count
        entry[1] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "up": self.up,
            "down": self.down,
            "streams": self.streams,
            "deals": self.deals,
        }

    @classmethod
    def from_json(cls, raw: Any, period: str) -> Tally:
        """The tally kept for ``period``, or a new one if ``raw`` is of another period or unreadable."""
        if not isinstance(raw, dict) or raw.get("period") != period:
            return cls(period)
        up, down, streams = (raw.get(name) for name in ("up", "down", "streams"))
        if not (_count(up) and _count(down) and _count(streams)):
            return cls(period)
        deals = raw.get("deals")
        kept = {
            str(deal): [int(entry[0]), int(entry[1])]
            for deal, entry in (deals.items() if isinstance(deals, dict) else ())
            if isinstance(entry, list) and len(entry) == 2 and all(isinstance(n, int) for n in entry)
        }
        return cls(period, up, down, streams, dict(list(kept.items())[:MAX_DEALS]))


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(slots=True)
class Payouts:
    """The total of the payout proofs kept (base units), at the start of today and of this month,
    as last seen by the agent; ``None`` until seen."""

    day: str = ""
    month: str = ""
    day_start: int | None = None
    month_start: int | None = None
    latest: int | None = None
    seen_at: float | None = None


class UsageMeter:
    """Bytes and streams served today and this month, against the caps of ``limits``."""

    def __init__(self, limits: Limits, now: float, *, address: str = "") -> None:
        self.limits = limits
        self.local = LocalTime(limits.tz)
        self.address = address
        self.day = Tally(self.local.day_key(now))
        self.month = Tally(self.local.month_key(now))
        self.payouts = Payouts()
        self._day_end = self.local.day_end(now)
        self._month_end = self.local.month_end(now)

    @property
    def day_end(self) -> float:
        return self._day_end

    @property
    def month_end(self) -> float:
        return self._month_end

    def roll(self, now: float) -> bool:
        """Start a new day (and month) once ``now`` is past the current one; True if it did."""
        if now < self._day_end:
            return False
        self.day = Tally(self.local.day_key(now))
        self._day_end = self.local.day_end(now)
        if now >= self._month_end:
            self.month = Tally(self.local.month_key(now))
            self._month_end = self.local.month_end(now)
        return True

    def remaining(self, now: float) -> int | None:
        """Bytes left before the tightest cap; ``None`` when there is no cap."""
        self.roll(now)
        left = None
        for cap, used in ((self.limits.cap_day, self.day.bytes), (self.limits.cap_month, self.month.bytes)):
            if cap is not None:
                left = max(0, cap - used) if left is None else min(left, max(0, cap - used))
        return left

    def take(self, count: int, up: bool, now: float) -> int:
        """Count up to ``count`` bytes just read from one side of a stream; returns how many
        the caps allow (the rest must not be relayed)."""
        left = self.remaining(now)
        allowed = count if left is None else min(count, left)
        self._count(allowed if up else 0, 0 if up else allowed)
        return allowed

    def add(self, up: int, down: int, now: float) -> None:
        """Count the bytes of a stream that was not metered as it flowed."""
        self.roll(now)
        self._count(up, down)

    def _count(self, up: int, down: int) -> None:
        self.day.up += up
        self.day.down += down
        self.month.up += up
        self.month.down += down

    def stream_done(self, deal: str, count: int, now: float) -> None:
        """One more stream of ``deal`` (``""``: none) that carried ``count`` bytes."""
        self.roll(now)
        self.day.add_stream(deal, count)
        self.month.add_stream(deal, count)

    def cap_reached(self, now: float) -> tuple[str, float] | None:
        """(why, until when) if a cap is reached; the monthly cap is named first, as it lasts longer."""
        self.roll(now)
        limits = self.limits
        if limits.cap_month is not None and self.month.bytes >= limits.cap_month:
            return f"monthly cap of {format_bytes(limits.cap_month)} reached", self._month_end
        if limits.cap_day is not None and self.day.bytes >= limits.cap_day:
            return f"daily cap of {format_bytes(limits.cap_day)} reached", self._day_end
        return None

    def note_payouts(self, total: int, now: float) -> None:
        """The payout proofs kept now total ``total`` base units: remember where today and this
        month started (the last total seen before them, else this first one)."""
        p, day, month = self.payouts, self.local.day_key(now), self.local.month_key(now)
        if p.day != day:
            p.day, p.day_start = day, total if p.latest is None else p.latest
        if p.month != month:
            p.month, p.month_start = month, total if p.latest is None else p.latest
        p.latest, p.seen_at = total, now

    def to_json(self) -> dict[str, Any]:
        p = self.payouts
        return {
            "version": STATE_VERSION,
            "address": self.address,
            "day": self.day.to_json(),
            "month": self.month.to_json(),
            "payouts": {
                "day": p.day,
                "month": p.month,
                "day_start": p.day_start,
                "month_start": p.month_start,
                "latest": p.latest,
                "seen_at": p.seen_at,
            },
        }

    def restore(self, raw: Any, now: float) -> None:
        """Take the counts of a state file (``to_json``) that are still current at ``now``; a
        file of another address, or unreadable parts of it, are ignored."""
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            return
        if self.address and raw.get("address") not in ("", self.address):
            return
        self.roll(now)
        self.day = Tally.from_json(raw.get("day"), self.day.period)
        self.month = Tally.from_json(raw.get("month"), self.month.period)
        payouts = raw.get("payouts")
        if isinstance(payouts, dict):
            numbers = [payouts.get(n) for n in ("day_start", "month_start", "latest")]
            seen_at = payouts.get("seen_at")
            if all(n is None or isinstance(n, int) for n in numbers) and (
                seen_at is None or isinstance(seen_at, int | float)
            ):
                self.payouts = Payouts(
                    str(payouts.get("day", "")),
                    str(payouts.get("month", "")),
                    numbers[0],
                    numbers[1],
                    numbers[2],
                    None if seen_at is None else float(seen_at),
                )


def read_state(path: Path) -> dict[str, Any] | None:
    """The JSON object in the state file at ``path``; None if there is none. Raises ValueError
    when the file is not such an object, OSError when it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not an agent state file")
    return raw


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file at ``path`` with ``state`` in one step: a reader (or a crash)
    sees the old file or the new one, never half of one. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
