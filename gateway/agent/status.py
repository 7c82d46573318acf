"""What ``ipsx provide status`` shows: the agent's state file, read back as a governor.

The file holds the counts and the limits; rebuilding a governor from it at the current time
gives today's and this month's usage and the serving state as they are now (a day that has
ended since the agent last saved shows as a new, empty day), whether or not the agent runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing.ledger import Amount, format_amount
from gateway.agent.caps import Limits, format_bytes, format_rate
from gateway.agent.governor import SAVE_EVERY, Governor
from gateway.agent.meter import NO_DEAL, Tally, read_state
from gateway.agent.policy import ExitPolicy

STALE = 3 * SAVE_EVERY  # seconds without a save after which the agent is probably not running
DEALS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class AgentStatus:
    governor: Governor
    saved_at: float | None


def read_status(path: Path, *, clock: Callable[[], float] = time.time) -> AgentStatus:
    """The agent status kept in ``path``. Raises FileNotFoundError when there is none, ValueError
    when it is not a state file, KeyError when its time zone is unknown here."""
    raw = read_state(path)
    if raw is None:
        raise FileNotFoundError(path)
    raw_policy = raw.get("policy")
    governor = Governor(
        Limits.from_wire(raw.get("limits")),
        state_file=path,
        address=str(raw.get("address", "")),
        clock=clock,
        policy=None if raw_policy is None else ExitPolicy.from_wire(raw_policy),
    )
    saved_at = raw.get("saved_at")
    return AgentStatus(governor, float(saved_at) if isinstance(saved_at, int | float) else None)


def describe(status: AgentStatus, *, payouts: int | None, payouts_store: str) -> list[str]:
    """The status as lines of text. ``payouts``: the total of the payout proofs kept now (base
    units), None when none are kept."""
    governor = status.governor
    meter, limits, now = governor.meter, governor.limits, governor.clock()
    zone = limits.tz or "local time"
    lines = [f"agent {meter.address or '(unknown wallet)'}, state file {governor.state_file}"]
    if status.saved_at is not None:
        ago = max(0.0, now - status.saved_at)
        saved = meter.local.wall(status.saved_at).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"  saved {saved} ({_ago(ago)} ago)")
        if ago > STALE:
            lines.append(
                "  the agent is not running, or cannot write its state file: these are the counts of then"
            )
    state = governor.state
    if state.serving:
        lines.append("serving: yes")
    else:
        until = (
            "" if state.until is None else f" until {meter.local.wall(state.until):%Y-%m-%d %H:%M} ({zone})"
        )
        lines.append(f"serving: no, {state.reason}{until}")
    lines.append(f"{f'today ({meter.day.period}):':<21} {_tally(meter.day, limits.cap_day)}")
    lines.append(f"{f'this month ({meter.month.period}):':<21} {_tally(meter.month, limits.cap_month)}")
    hours = ", ".join(str(window) for window in limits.hours)
    lines.append(f"hours: {hours} ({zone})" if hours else "hours: all day")
    rates = [
        f"{format_rate(rate)} {what}"
        for rate, what in ((limits.rate_stream, "per stream"), (limits.rate_total, "in total"))
        if rate is not None
    ]
    lines.append(f"bandwidth: {', '.join(rates) if rates else 'no limit'}")
    if governor.policy is not None:
        lines.extend(_policy(governor.policy.to_wire()))
    if meter.day.deals:
        lines.append("streams per deal today:")
        ranked = sorted(meter.day.deals.items(), key=lambda item: -item[1][0])
        for deal, (count, streams) in ranked[:DEALS_SHOWN]:
            name = "(no deal)" if deal == NO_DEAL else deal
            lines.append(f"  {name:<40} {format_bytes(count):>10}  {_streams(streams)}")
        if len(ranked) > DEALS_SHOWN:
            lines.append(f"  … and {len(ranked) - DEALS_SHOWN} more")
    lines.append(_earnings(governor, payouts, payouts_store))
    return lines


def _tally(tally: Tally, cap: int | None) -> str:
    text = (
        f"{format_bytes(tally.bytes)} in {_streams(tally.streams)} "
        f"(up {format_bytes(tally.up)}, down {format_bytes(tally.down)})"
    )
    if cap is None:
        return text + ", no cap"
    used = min(100, tally.bytes * 100 // cap)
    return text + f", cap {format_bytes(cap)}: {used}% used, {format_bytes(max(0, cap - tally.bytes))} left"


def _policy(wire: dict[str, Any]) -> list[str]:
    protocols = wire.get("protocols")
    ports = wire.get("ports")
    blocked = [*wire.get("block_domains", []), *wire.get("block_networks", [])]
    return [
        f"protocols: {', '.join(protocols) if protocols else 'all'}; "
        f"ports: {_ports(ports) if ports else 'all but mail' if not wire.get('allow_smtp') else 'all'}",
        f"blocked: {', '.join(blocked[:20]) + (' …' if len(blocked) > 20 else '') if blocked else 'nothing'}",
    ]


def _ports(ports: list[int]) -> str:
    """``[80, 443, 8000, 8001, 8002]`` → ``"80, 443, 8000-8002"``."""
    ranges: list[list[int]] = []
    for port in sorted(ports):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1][1] = port
        else:
            ranges.append([port, port])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:20]) + (
        " …" if len(ranges) > 20 else ""
    )


def _earnings(governor: Governor, payouts: int | None, store: str) -> str:
    meter = governor.meter
    if payouts is None and meter.payouts.latest is None:
        return "earnings: run with --payouts-api to keep the hub's payout proofs and see what you earned"
    if meter.payouts.latest is None and payouts is not None:
        return (
            f"earnings: {format_amount(Amount(payouts))} IPSX in the payout proofs kept in {store}; "
            "what was earned today shows once the agent runs with --payouts-api"
        )
    if payouts is not None:
        meter.note_payouts(payouts, governor.clock())  # today's start is the last total seen before
    p = meter.payouts
    total = p.latest or 0
    day = total - (p.day_start if p.day_start is not None else total)
    month = total - (p.month_start if p.month_start is not None else total)
    return (
        f"earned today: {format_amount(Amount(day))} IPSX, this month: {format_amount(Amount(month))} IPSX "
        f"(payout proofs kept in {store}: {format_amount(Amount(total))} IPSX in all)"
    )


def _streams(count: int) -> str:
    return f"{count:,} stream{'' if count == 1 else 's'}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
