"""What the reseller's pages read: the sub-users' month against their limits and the markup the
reseller earned, always for the signed-in reseller's own account id.

The figures come from ``billing.reseller_terms`` (``standing``, ``usage_report``, ``markup_earned``,
the functions ``/v1/reseller/*`` answers with) and, per day, from ``dashboard.web.queries``'
requester usage per day for a sub-user's internal account. The markup per day is the one
aggregation ``billing.reseller_terms`` has no function for: :func:`markup_days` reads its
``reseller_markups`` rows, filtered by the reseller's account id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg

from billing import ledger, reseller_terms
from billing.reseller_terms import SubuserUsage
from billing.resellers import Reseller, Subuser
from dashboard.web import queries

GB: Final = 10**9  # quotas are entered in decimal gigabytes, as per-GB prices count them
GB_DECIMALS: Final = 9
PORT_PLACEHOLDER: Final = "PORT"
REFUSALS: Final = {
    None: "active",
    "suspended": "suspended",
    "quota_exceeded": "quota used up",
    "spend_limit_reached": "spend limit reached",
}


def gigabytes(value: int | None) -> str:
    """Bytes as exact decimal gigabytes (``1.5``), '' for none: a quota as its form field shows it."""
    if value is None:
        return ""
    whole, fraction = divmod(value, GB)
    return f"{whole}" if not fraction else f"{whole}.{str(fraction).rjust(GB_DECIMALS, '0').rstrip('0')}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the reseller's customers connect: its listener as the operator recorded it
    (``ipsx reseller update NAME --host … --port …``). Without a recorded host, the gateway
    address this dashboard hands out stands in; without a port, ``PORT`` does."""

    host: str
    port: int | None
    configured: bool  # the operator recorded both host and port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port if self.port is not None else PORT_PLACEHOLDER}"

    def http_url(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@{self.address}"

    def socks_url(self, user: str, password: str) -> str:
        return f"socks5h://{user}:{password}@{self.address}"


def endpoint(reseller: Reseller, proxy_address: str) -> Endpoint:
    host = reseller.endpoint_host or proxy_address.rpartition(":")[0] or proxy_address
    return Endpoint(
        host=host,
        port=reseller.endpoint_port,
        configured=reseller.endpoint_host is not None and reseller.endpoint_port is not None,
    )


@dataclass(frozen=True, slots=True)
class SubuserRow:
    """A sub-user with its calendar month (UTC) so far."""

    sub: Subuser
    streams: int
    used_bytes: int  # what its quota counts
    spent: int  # what its spend limit counts: settled charges, markups and open deals' traffic
    refusal: str | None  # why its new streams are refused now, if they are
    charged: int  # settled charges this month
    markup: int  # the markup it paid this month

    @property
    def standing(self) -> str:
        return REFUSALS.get(self.refusal, self.refusal or "active")


@dataclass(frozen=True, slots=True)
class Month:
    """The reseller's calendar month so far over all its sub-users."""

    label: str  # YYYY-MM
    streams: int
    bytes: int
    charged: int
    markup: int


def this_month(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start = reseller_terms.month_start(now)
    return start, reseller_terms.next_month(start)


async def month_usage(
    pool: asyncpg.Pool, reseller_id: int, now: dt.datetime, names: Sequence[str] | None = None
) -> dict[str, SubuserUsage]:
    """The calendar month so far of the reseller's sub-users (those in ``names``, or all), by name."""
    start, end = this_month(now)
    report = await reseller_terms.usage_report(pool, reseller_id, start, end, names=names)
    return {row.name: row for row in report}


def month_totals(now: dt.datetime, usage: Iterable[SubuserUsage]) -> Month:
    """The month's totals over ``usage`` (all the sub-users' rows, for the reseller's totals)."""
    rows = list(usage)
    return Month(
        label=f"{reseller_terms.month_start(now):%Y-%m}",
        streams=sum(row.streams for row in rows),
        bytes=sum(row.bytes_up + row.bytes_down for row in rows),
        charged=sum(row.charged for row in rows),
        markup=sum(row.markup_charged for row in rows),
    )


async def subuser_rows(
    pool: asyncpg.Pool, subs: Sequence[Subuser], report: dict[str, SubuserUsage], now: dt.datetime
) -> list[SubuserRow]:
    """Each of ``subs`` (the reseller's own, as ``list_subusers`` gave them) with its standing
    and its row of the month's report."""
    rows = []
    for sub in subs:
        standing = await reseller_terms.standing(pool, sub.account_name, now=now)
        usage = report.get(sub.name)
        rows.append(
            SubuserRow(
                sub=sub,
                streams=usage.streams if usage else 0,
                used_bytes=standing.used_bytes if standing else 0,
                spent=standing.spent if standing else 0,
                refusal=standing.refusal if standing else None,
                charged=usage.charged if usage else 0,
                markup=usage.markup_charged if usage else 0,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class MarkupDay:
    day: dt.date
    deals: int  # settled deals of sub-users that owed a markup that day
    charges: int  # their charges, on which the markup is taken
    due: int
    charged: int  # what the sub-users' balances covered: the reseller's earnings


async def markup_days(
    pool: asyncpg.Pool,
    reseller_id: int,
    *,
    subuser_id: int | None = None,
    before: dt.date | None = None,
    limit: int = 31,
) -> list[MarkupDay]:
    """Days (UTC, newest first, before ``before``) on which the reseller's sub-users (or the one
    whose account id is ``subuser_id``) paid it a markup."""
    bound = None if before is None else dt.datetime.combine(before, dt.time(), dt.UTC)
    rows = await pool.fetch(
        """
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS deals,
               sum(charge)::text AS charges, sum(due)::text AS due, sum(charged)::text AS charged
        FROM reseller_markups
        WHERE reseller_id = $1 AND ($2::bigint IS NULL OR subuser_id = $2)
          AND ($3::timestamptz IS NULL OR created_at < $3)
        GROUP BY 1 ORDER BY 1 DESC LIMIT $4
        """,
        reseller_id,
        subuser_id,
        bound,
        limit,
    )
    return [
        MarkupDay(row["day"], row["deals"], int(row["charges"]), int(row["due"]), int(row["charged"]))
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class SubuserDay:
    """One day (UTC) of a sub-user: its traffic, its settled charges and the markup it paid."""

    day: dt.date
    streams: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    charged: int = 0
    markup: int = 0


async def subuser_days(
    pool: asyncpg.Pool, reseller_id: int, sub: Subuser, before: dt.date | None, limit: int
) -> list[SubuserDay]:
    """The sub-user's days with traffic, charges or markup, newest first, before ``before``."""
    usage = await queries.usage_days(pool, sub.account_name, before, limit)
    markups = await markup_days(pool, reseller_id, subuser_id=sub.account_id, before=before, limit=limit)
    days: dict[dt.date, dict[str, int]] = {}
    for day in usage:
        days.setdefault(day.day, {}).update(
            streams=day.streams, bytes_up=day.bytes_up, bytes_down=day.bytes_down, charged=day.charged
        )
    for found in markups:
        days.setdefault(found.day, {})["markup"] = found.charged
    return [SubuserDay(day, **days[day]) for day in sorted(days, reverse=True)[:limit]]


@dataclass(frozen=True, slots=True)
class Funds:
    available: int  # the reseller's own balance: what it can move to its sub-users
    earnings: int  # its earnings balance: the markups (with any payouts as a provider), less withdrawals


async def funds(pool: asyncpg.Pool, reseller: Reseller) -> Funds:
    return Funds(
        available=int(await ledger.balance(pool, ledger.requester_account(reseller.name))),
        earnings=int(await ledger.balance(pool, ledger.provider_account(reseller.name))),
    )
