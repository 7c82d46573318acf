"""What the requester's pages read: every query takes the signed-in account's name and reads only
rows of that account (its usage events, its deals as requester, its orders).

Balances come from ``billing.ledger`` and ``billing.holds``, keys from ``billing.accounts``,
channels and invoices from ``billing.channels`` and ``billing.payments``; this module holds the
read-only aggregations the REST API has no endpoint for (usage per day, spend per deal with the
traffic it carried, the live series). What an unsettled deal has cost so far is priced by
``matching.settlement.settle``, the function that will settle it.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson

from billing import holds, ledger
from billing.ledger import Amount
from matching.settlement import settle

LIVE_STATES: Final = ("proposed", "active")  # deals that serve traffic (or are about to)
CLOSED_STATES: Final = ("settled", "cancelled", "expired")
MAX_DEAL_DAYS: Final = 31  # a deal lasts at most a month: older deals settled long ago


@dataclass(frozen=True, slots=True)
class Balances:
    available: int
    reserved: int


@dataclass(frozen=True, slots=True)
class Spend:
    """Today's spend (UTC): charges of the deals settled today, and what the open deals have
    cost so far at their prices (charged when they settle)."""

    settled_today: int
    accruing: int
    open_deals: int

    @property
    def total(self) -> int:
        return self.settled_today + self.accruing


@dataclass(frozen=True, slots=True)
class _Terms:
    """A deal's terms as ``matching.settlement.settle`` reads them."""

    deal_id: str
    requester: str
    provider: str
    price_per_gb: Amount
    price_per_hour: Amount
    reserve: Amount
    duration_s: int
    activated_at: int | None
    ended_at: int | None


def accrued(row: asyncpg.Record | dict[str, Any], carried: int, now: float) -> int:
    """What an unsettled deal has cost so far: its carried bytes and its active seconds up to
    ``now`` (or its end) at its prices, capped at its reserve, as settlement would price them."""
    activated, ended = row["activated_at"], row["ended_at"]
    seconds = 0
    if activated is not None:
        until = int(ended if ended is not None else now)
        seconds = max(0, min(until - int(activated), int(row["duration_s"])))
    terms = _Terms(
        deal_id=row["deal_id"],
        requester="-",
        provider="-",
        price_per_gb=Amount(int(row["price_per_gb"])),
        price_per_hour=Amount(int(row["price_per_hour"])),
        reserve=Amount(int(row["reserve"])),
        duration_s=int(row["duration_s"]),
        activated_at=activated,
        ended_at=ended,
    )
    return int(settle(terms, carried, seconds, 0).charge)


async def balances(pool: asyncpg.Pool, account: str) -> Balances:
    requester = ledger.requester_account(account)
    return Balances(await ledger.balance(pool, requester), await holds.reserved(pool, requester))


def _today() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


_DEAL_TERMS = """
    d.deal_id, d.state, d.exit_id, d.spot, d.price_per_gb::text AS price_per_gb,
    d.price_per_hour::text AS price_per_hour, d.reserve::text AS reserve, d.duration_s,
    d.charge::text AS charge, d.commission::text AS commission, d.billable_bytes, d.created_at,
    (d.record->>'activated_at')::int8 AS activated_at, (d.record->>'ended_at')::int8 AS ended_at
"""


async def spend(pool: asyncpg.Pool, account: str) -> Spend:
    today = _today()
    settled = await pool.fetchval(
        """
        SELECT COALESCE(sum(charge), 0)::text FROM deals
        WHERE requester = $1 AND state = 'settled' AND updated_at >= $2 AND created_at >= $3
        """,
        account,
        today,
        today - dt.timedelta(days=MAX_DEAL_DAYS),
    )
    rows = await pool.fetch(
        f"""
        SELECT {_DEAL_TERMS},
               (SELECT COALESCE(sum(u.bytes_up + u.bytes_down), 0)::int8 FROM usage_events u
                WHERE u.deal_id = d.deal_id) AS carried
        FROM deals d
        WHERE d.requester = $1 AND d.state <> ALL($2::text[]) AND d.created_at >= $3
        """,  # noqa: S608
        account,
        list(CLOSED_STATES),
        today - dt.timedelta(days=MAX_DEAL_DAYS),
    )
    now = time.time()
    accruing = sum(accrued(row, row["carried"], now) for row in rows)
    return Spend(int(settled), accruing, len(rows))


async def live_series(pool: asyncpg.Pool, account: str, seconds: int) -> list[tuple[int, int, int]]:
    """``(unix second, streams, bytes)`` of the account's streams that closed in each of the last
    ``seconds`` seconds (seconds without any are left out)."""
    rows = await pool.fetch(
        """
        SELECT floor(extract(epoch FROM closed_at))::int8 AS second, count(*) AS streams,
               sum(bytes_up + bytes_down)::int8 AS bytes
        FROM usage_events
        WHERE requester = $1 AND closed_at >= now() - make_interval(secs => $2)
        GROUP BY 1 ORDER BY 1
        """,
        account,
        float(seconds),
    )
    return [(row["second"], row["streams"], row["bytes"]) for row in rows]


async def usage_today(pool: asyncpg.Pool, account: str) -> tuple[int, int]:
    """``(streams, bytes)`` of the account today (UTC)."""
    row = await pool.fetchrow(
        "SELECT count(*) AS streams, COALESCE(sum(bytes_up + bytes_down), 0)::int8 AS bytes"
        " FROM usage_events WHERE requester = $1 AND closed_at >= $2",
        account,
        _today(),
    )
    return int(row["streams"]), int(row["bytes"])


@dataclass(frozen=True, slots=True)
class Day:
    day: dt.date
    streams: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    deals_used: int = 0
    settled_deals: int = 0
    charged: int = 0
    commission: int = 0


async def usage_days(pool: asyncpg.Pool, account: str, before: dt.date | None, limit: int) -> list[Day]:
    """Days (UTC, newest first, before ``before``) with the account's traffic or charges: streams,
    bytes, deals used, and the charges (with the commission in them) of the deals settled that day."""
    bound = None if before is None else dt.datetime.combine(before, dt.time(), dt.UTC)
    usage = await pool.fetch(
        """
        SELECT (closed_at AT TIME ZONE 'UTC')::date AS day, count(*) AS streams,
               sum(bytes_up)::int8 AS up, sum(bytes_down)::int8 AS down,
               count(DISTINCT deal_id) AS deals
        FROM usage_events WHERE requester = $1 AND ($2::timestamptz IS NULL OR closed_at < $2)
        GROUP BY 1 ORDER BY 1 DESC LIMIT $3
        """,
        account,
        bound,
        limit,
    )
    charges = await pool.fetch(
        """
        SELECT (updated_at AT TIME ZONE 'UTC')::date AS day, count(*) AS deals,
               sum(charge)::text AS charged, sum(commission)::text AS commission
        FROM deals WHERE requester = $1 AND state = 'settled' AND ($2::timestamptz IS NULL OR updated_at < $2)
        GROUP BY 1 ORDER BY 1 DESC LIMIT $3
        """,
        account,
        bound,
        limit,
    )
    days: dict[dt.date, dict[str, Any]] = {}
    for row in usage:
        days.setdefault(row["day"], {}).update(
            streams=row["streams"], bytes_up=row["up"], bytes_down=row["down"], deals_used=row["deals"]
        )
    for row in charges:
        days.setdefault(row["day"], {}).update(
            settled_deals=row["deals"], charged=int(row["charged"]), commission=int(row["commission"])
        )
    return [Day(day, **days[day]) for day in sorted(days, reverse=True)[:limit]]


@dataclass(frozen=True, slots=True)
class DealRow:
    deal_id: str
    state: str
    exit_id: str
    spot: bool
    country: str | None
    city: str | None
    type: str | None
    price_per_gb: int
    price_per_hour: int
    reserve: int
    streams: int
    carried: int
    cost: int  # the charge when settled, else what it cost so far
    settled: bool
    commission: int | None
    created_at: dt.datetime


async def deals(
    pool: asyncpg.Pool,
    account: str,
    *,
    live_only: bool,
    after: tuple[dt.datetime, str] | None,
    limit: int,
) -> list[DealRow]:
    """The account's deals as requester, newest first, after the cursor ``after``
    (``(created_at, deal_id)`` of the last row of the previous page), with the exit's attributes
    from the offer and the traffic each carried."""
    rows = await pool.fetch(
        f"""
        SELECT {_DEAL_TERMS},
               o.terms->'attributes'->>'country' AS country, o.terms->'attributes'->>'city' AS city,
               o.terms->'attributes'->>'type' AS type, u.streams, u.carried
        FROM deals d
        LEFT JOIN market_orders o ON o.order_id = d.offer_id
        LEFT JOIN LATERAL (
            SELECT count(*) AS streams, COALESCE(sum(bytes_up + bytes_down), 0)::int8 AS carried
            FROM usage_events WHERE deal_id = d.deal_id
        ) u ON true
        WHERE d.requester = $1 AND (NOT $2 OR d.state = ANY($3::text[]))
          AND ($4::timestamptz IS NULL OR (d.created_at, d.deal_id) < ($4, $5))
        ORDER BY d.created_at DESC, d.deal_id DESC LIMIT $6
        """,  # noqa: S608
        account,
        live_only,
        list(LIVE_STATES),
        None if after is None else after[0],
        "" if after is None else after[1],
        limit,
    )
    now = time.time()
    out = []
    for row in rows:
        settled = row["state"] == "settled" and row["charge"] is not None
        if settled:
            cost = int(row["charge"])
        elif row["state"] in ("cancelled", "expired"):
            cost = 0
        else:
            cost = accrued(row, row["carried"], now)
        out.append(
            DealRow(
                deal_id=row["deal_id"],
                state=row["state"],
                exit_id=row["exit_id"],
                spot=row["spot"],
                country=row["country"],
                city=row["city"],
                type=row["type"],
                price_per_gb=int(row["price_per_gb"]),
                price_per_hour=int(row["price_per_hour"]),
                reserve=int(row["reserve"]),
                streams=row["streams"],
                carried=row["carried"],
                cost=cost,
                settled=settled,
                commission=None if row["commission"] is None else int(row["commission"]),
                created_at=row["created_at"],
            )
        )
    return out


async def live_countries(pool: asyncpg.Pool, account: str) -> list[tuple[str, str, int]]:
    """``(country, type, deals)`` of the account's live deals: where its IPs are."""
    rows = await pool.fetch(
        """
        SELECT COALESCE(o.terms->'attributes'->>'country', '?') AS country,
               COALESCE(o.terms->'attributes'->>'type', '?') AS type, count(*) AS deals
        FROM deals d LEFT JOIN market_orders o ON o.order_id = d.offer_id
        WHERE d.requester = $1 AND d.state = ANY($2::text[])
        GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2
        """,
        account,
        list(LIVE_STATES),
    )
    return [(row["country"], row["type"], row["deals"]) for row in rows]


@dataclass(frozen=True, slots=True)
class OrderRow:
    seq: int
    order_id: str
    side: str
    state: str
    filled: int
    terms: dict[str, Any]
    created_at: dt.datetime


async def orders(pool: asyncpg.Pool, account: str, *, before: int | None, limit: int) -> list[OrderRow]:
    """The account's orders, newest first, before the sequence number ``before``."""
    rows = await pool.fetch(
        """
        SELECT seq, order_id, side, state, filled, terms::text AS terms, created_at FROM market_orders
        WHERE account = $1 AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3
        """,
        account,
        before,
        limit,
    )
    return [
        OrderRow(
            seq=row["seq"],
            order_id=row["order_id"],
            side=row["side"],
            state=row["state"],
            filled=row["filled"],
            terms=orjson.loads(row["terms"]),
            created_at=row["created_at"],
        )
        for row in rows
    ]


async def open_request_orders(pool: asyncpg.Pool, account: str, limit: int) -> list[str]:
    """The ids of the account's open request orders, newest first: what a PAC file can pin to."""
    rows = await pool.fetch(
        "SELECT order_id FROM market_orders WHERE account = $1 AND side = 'request' AND state = 'open'"
        " ORDER BY seq DESC LIMIT $2",
        account,
        limit,
    )
    return [row["order_id"] for row in rows]


async def owns_request_order(pool: asyncpg.Pool, account: str, order_id: str) -> bool:
    found = await pool.fetchval(
        "SELECT 1 FROM market_orders WHERE order_id = $1 AND account = $2 AND side = 'request'",
        order_id,
        account,
    )
    return found is not None
