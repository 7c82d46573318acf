"""A provider's limits on its agent: data caps, bandwidth, serving hours — and the math behind them.

Everything here is a pure function of its arguments and of the clock value passed in: the
agent's governor (``gateway.agent.governor``) reads the clock and does the I/O.

Caps count the bytes of both directions, per local calendar day and month. Serving hours are
windows of local wall-clock time (``22:00-07:00`` crosses midnight); "local" is the ``tz``
time zone when one is set, else the machine's.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

from gateway.wire import WireError

SECONDS = 1.0
DAY = 86_400
_WINDOW_RE = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)
_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]bit|[kmg]bit/s|[kmg]bps)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_RATE_UNITS = {"k": 10**3 // 8, "m": 10**6 // 8, "g": 10**9 // 8}  # bytes per second per unit


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """Serving hours: from ``start`` to ``end``, in minutes after local midnight (``end`` may be
    1440, the next midnight). ``end < start`` crosses midnight."""

    start: int
    end: int

    def contains(self, second: float) -> bool:
        """Whether ``second`` (after local midnight) falls in this window."""
        start, end = self.start * 60, self.end * 60
        if start < end:
            return start <= second < end
        return second >= start or second < end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def parse_window(text: str) -> Window:
    """``"22:00-07:00"`` → Window; raises ValueError."""
    match = _WINDOW_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"serving hours must look like 22:00-07:00 (got {text[:40]!r})")
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60:
        raise ValueError(f"no such time of day in {text[:40]!r}")
    if start == end or (start == 0 and end == 24 * 60):
        raise ValueError(f"{text[:40]!r} is empty or the whole day; leave the hours out to serve all day")
    return Window(start, end)


def parse_size(text: str) -> int:
    """``"1.5"`` (GB), ``"500MB"``, ``"2GiB"``, ``"1TB"`` → bytes; raises ValueError."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a size is a number with an optional unit, e.g. 500MB or 2.5GB (got {text[:40]!r})")
    value = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "gb").lower()]
    if not 1 <= value < 2**62:
        raise ValueError(f"{text[:40]!r} is not a usable size")
    return int(value)


def parse_rate(text: str) -> int:
    """``"10"`` (Mbit/s), ``"500kbit"``, ``"1Gbit"`` → bytes per second; raises ValueError."""
    match = _RATE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"a rate is a number with an optional unit, e.g. 10 or 500kbit (got {text[:40]!r})")
    unit = (match.group(2) or "m")[0].lower()
    value = float(match.group(1)) * _RATE_UNITS[unit]
    if not 1_000 <= value < 2**40:
        raise ValueError(f"{text[:40]!r} is not a usable rate (8 kbit/s at least)")
    return int(value)


def format_bytes(count: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as the caps are given)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def format_rate(rate: int) -> str:
    """Bytes per second → ``"10 Mbit/s"``."""
    bits = rate * 8
    for unit, size in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= size:
            return f"{bits / size:g} {unit}"
    return f"{bits} bit/s"


class LocalTime:
    """Wall-clock time in the provider's zone (``tz``, else the machine's)."""

    __slots__ = ("zone",)

    def __init__(self, tz: str | None) -> None:
        self.zone = zoneinfo.ZoneInfo(tz) if tz else None  # raises ZoneInfoNotFoundError (a KeyError)

    def wall(self, ts: float) -> dt.datetime:
        """The naive local date and time at unix time ``ts``."""
        if self.zone is None:
            return dt.datetime.fromtimestamp(ts)
        return dt.datetime.fromtimestamp(ts, self.zone).replace(tzinfo=None)

    def unix(self, wall: dt.datetime) -> float:
        """The unix time of the naive local ``wall`` time."""
        return wall.timestamp() if self.zone is None else wall.replace(tzinfo=self.zone).timestamp()

    def day_key(self, ts: float) -> str:
        return self.wall(ts).strftime("%Y-%m-%d")

    def month_key(self, ts: float) -> str:
        return self.wall(ts).strftime("%Y-%m")

    def day_end(self, ts: float) -> float:
        """The next local midnight after ``ts``."""
        tomorrow = self.wall(ts).date() + dt.timedelta(days=1)
        return self.unix(dt.datetime.combine(tomorrow, dt.time()))

    def month_end(self, ts: float) -> float:
        """Local midnight on the first day of the next month."""
        day = self.wall(ts).date()
        first = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
        return self.unix(dt.datetime.combine(first, dt.time()))


@dataclass(frozen=True, slots=True)
class Limits:
    """What a provider lets its agent serve, beyond the destinations (``ExitPolicy``).

    ``cap_day`` / ``cap_month``: bytes (up + down) per local day / month, ``None`` for no cap.
    ``rate_stream`` / ``rate_total``: bytes per second per stream / over all streams.
    ``hours``: the local windows the agent serves in; empty for all day.
    ``tz``: the time zone days, months and hours are counted in (``None``: the machine's).
    """

    cap_day: int | None = None
    cap_month: int | None = None
    rate_stream: int | None = None
    rate_total: int | None = None
    hours: tuple[Window, ...] = ()
    tz: str | None = None

    @property
    def gated(self) -> bool:
        """Whether streams must be metered as they flow (a cap or a rate is set)."""
        return any(
            limit is not None for limit in (self.cap_day, self.cap_month, self.rate_stream, self.rate_total)
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "cap_day": self.cap_day,
            "cap_month": self.cap_month,
            "rate_stream": self.rate_stream,
            "rate_total": self.rate_total,
            "hours": [str(window) for window in self.hours],
            "tz": self.tz,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> Limits:
        """The limits an agent advertised (or kept in its state file); missing fields keep their
        defaults. Raises WireError when a field is malformed."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise WireError("the limits must be an object")
        numbers = {}
        for name in ("cap_day", "cap_month", "rate_stream", "rate_total"):
            value = raw.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise WireError(f"bad {name}")
            numbers[name] = value
        hours, tz = raw.get("hours") or [], raw.get("tz")
        if not isinstance(hours, list) or len(hours) > 48 or not all(isinstance(h, str) for h in hours):
            raise WireError("bad hours")
        if tz is not None and (not isinstance(tz, str) or len(tz) > 64):
            raise WireError("bad tz")
        try:
            windows = tuple(parse_window(text) for text in hours)
        except ValueError as exc:
            raise WireError(f"bad hours: {exc}") from None
        return cls(**numbers, hours=windows, tz=tz)


def hours_open(hours: tuple[Window, ...], wall: dt.datetime) -> bool:
    """Whether the local time ``wall`` is in one of ``hours`` (always, when there are none)."""
    if not hours:
        return True
    second = wall.hour * 3600 + wall.minute * 60 + wall.second + wall.microsecond / 1e6
    return any(window.contains(second) for window in hours)


def hours_change(hours: tuple[Window, ...], wall: dt.datetime) -> dt.datetime | None:
    """The next local time after ``wall`` at which ``hours_open`` changes, or None if never."""
    if not hours:
        return None
    now_open = hours_open(hours, wall)
    midnight = dt.datetime.combine(wall.date(), dt.time())
    edges = sorted({minute for window in hours for minute in (window.start, window.end % 1440)})
    for day in range(3):
        for minute in edges:
            edge = midnight + dt.timedelta(days=day, minutes=minute)
            if edge > wall and hours_open(hours, edge) != now_open:
                return edge
    return None


@dataclass(frozen=True, slots=True)
class ServingState:
    """Whether the agent takes new streams now; if not, why and until when (unix time, a hint:
    the agent says when it serves again)."""

    serving: bool = True
    reason: str = ""
    until: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"serving": self.serving, "reason": self.reason, "until": self.until}

    @classmethod
    def from_wire(cls, raw: Any) -> ServingState:
        """Raises WireError when malformed."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or not isinstance(raw.get("serving"), bool):
            raise WireError("bad serving state")
        reason, until = raw.get("reason") or "", raw.get("until")
        if not isinstance(reason, str):
            raise WireError("bad serving state")
        if until is not None and (
            not isinstance(until, int | float) or isinstance(until, bool) or not math.isfinite(until)
        ):
            raise WireError("bad serving state")
        if raw["serving"]:
            return cls()
        return cls(False, reason[:200] or "not serving", None if until is None else float(until))


class TokenBucket:
    """A rate limit of ``rate`` bytes per second with a burst of ``burst`` bytes.

    Bytes are spent after they were read (a chunk's size is known only then): the bucket may go
    into debt, and ``spend`` says how long the reader should pause so the debt is paid back.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: int, now: float, *, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(16 * 1024, rate // 8)
        self._tokens = float(self.burst)
        self._last = now

    def spend(self, count: int, now: float) -> float:
        """Take ``count`` bytes at time ``now``; returns the seconds to wait (0.0: none)."""
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate) - count
        self._last = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
