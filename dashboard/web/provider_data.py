"""What the provider's pages read. Every query is scoped to the signed-in account: its deals as
provider (``deals.provider`` is the account name), its offers (``market_orders.account``), and the
streams its exits served (``usage_events.provider`` is the exit's wallet address, as the gateway
records it from the pool), so each function takes the account's name or its address, never an id
the browser chose.

Money is the settled deals' own columns: ``charge`` (what the requester paid), ``commission`` (the
operator's part) and the payout, ``charge - commission``, which settlement moved to the provider's
ledger account (``matching.settlement.ledger_legs``). What an open deal has earned so far is
priced by ``dashboard.web.queries.accrued``, the same function the requester's pages use.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson

from billing import ledger
from dashboard.web.queries import CLOSED_STATES, MAX_DEAL_DAYS, accrued

_DEAL_COLUMNS: Final = """
    d.deal_id, d.state, d.exit_id, d.spot, d.price_per_gb::text AS price_per_gb,
    d.price_per_hour::text AS price_per_hour, d.reserve::text AS reserve, d.duration_s,
    d.charge::text AS charge, d.commission::text AS commission, d.billable_bytes, d.created_at,
    d.updated_at, (d.record->>'activated_at')::int8 AS activated_at,
    (d.record->>'ended_at')::int8 AS ended_at
"""


def _today() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _month() -> dt.datetime:
    return _today().replace(day=1)


@dataclass(frozen=True, slots=True)
class Traffic:
    """Streams and bytes the provider's exits served (by when each stream closed, UTC)."""

    streams_today: int
    bytes_today: int
    streams_month: int
    bytes_month: int


async def traffic(pool: asyncpg.Pool, address: str) -> Traffic:
    row = await pool.fetchrow(
        """
        SELECT count(*) FILTER (WHERE closed_at >= $2) AS streams_today,
               COALESCE(sum(bytes_up + bytes_down) FILTER (WHERE closed_at >= $2), 0)::int8 AS bytes_today,
               count(*) AS streams_month, COALESCE(sum(bytes_up + bytes_down), 0)::int8 AS bytes_month
        FROM usage_events WHERE provider = $1 AND closed_at >= $3
        """,
        address,
        _today(),
        _month(),
    )
    return Traffic(row["streams_today"], row["bytes_today"], row["streams_month"], row["bytes_month"])


async def live_series(pool: asyncpg.Pool, address: str, seconds: int) -> list[tuple[int, int, int]]:
    """``(unix second, streams, bytes)`` the provider's exits served, by the second each stream
    closed, over the last ``seconds`` (seconds without any are left out)."""
    rows = await pool.fetch(
        """
        SELECT floor(extract(epoch FROM closed_at))::int8 AS second, count(*) AS streams,
               sum(bytes_up + bytes_down)::int8 AS bytes
        FROM usage_events
        WHERE provider = $1 AND closed_at >= now() - make_interval(secs => $2)
        GROUP BY 1 ORDER BY 1
        """,
        address,
        float(seconds),
    )
    return [(row["second"], row["streams"], row["bytes"]) for row in rows]


@dataclass(frozen=True, slots=True)
class Earnings:
    """The provider's settled earnings (payouts: charge less commission) and what is under way."""

    today: int  # payouts of the deals settled today (UTC)
    month: int
    total: int
    commission_total: int  # what the operator's commission took of the settled charges
    settled_deals: int
    accruing: int  # what the open deals' traffic and time have charged so far (before commission)
    open_deals: int
    credited: int  # every credit to the provider's ledger account: the payouts settlement posted
    balance: int  # the ledger account's balance now (credits less withdrawals)


async def earnings(pool: asyncpg.Pool, name: str) -> Earnings:
    today, month = _today(), _month()
    settled = await pool.fetchrow(
        """
        SELECT COALESCE(sum(charge - commission) FILTER (WHERE updated_at >= $2), 0)::text AS today,
               COALESCE(sum(charge - commission) FILTER (WHERE updated_at >= $3), 0)::text AS month,
               COALESCE(sum(charge - commission), 0)::text AS total,
               COALESCE(sum(commission), 0)::text AS commission, count(*) AS deals
        FROM deals WHERE provider = $1 AND state = 'settled' AND charge IS NOT NULL
        """,
        name,
        today,
        month,
    )
    rows = await pool.fetch(
        f"""
        SELECT {_DEAL_COLUMNS},
               (SELECT COALESCE(sum(u.bytes_up + u.bytes_down), 0)::int8 FROM usage_events u
                WHERE u.deal_id = d.deal_id) AS carried
        FROM deals d
        WHERE d.provider = $1 AND d.state <> ALL($2::text[]) AND d.created_at >= $3
        """,  # noqa: S608
        name,
        list(CLOSED_STATES),
        today - dt.timedelta(days=MAX_DEAL_DAYS),
    )
    now = time.time()
    account = ledger.provider_account(name)
    credited = await pool.fetchval(
        "SELECT COALESCE(sum(amount), 0)::text FROM ledger_transfers WHERE credit_account = $1", account
    )
    return Earnings(
        today=int(settled["today"]),
        month=int(settled["month"]),
        total=int(settled["total"]),
        commission_total=int(settled["commission"]),
        settled_deals=settled["deals"],
        accruing=sum(accrued(row, row["carried"], now) for row in rows if row["state"] != "disputed"),
        open_deals=len(rows),
        credited=int(credited),
        balance=int(await ledger.balance(pool, account)),
    )


@dataclass(frozen=True, slots=True)
class EarningDeal:
    deal_id: str
    state: str
    exit_id: str
    spot: bool
    country: str | None
    type: str | None
    price_per_gb: int
    price_per_hour: int
    streams: int
    bytes: int  # the billable bytes of a settled deal, else what its streams carried so far
    charge: int | None  # settled: the charge; open: what it has cost so far; closed unused: 0
    commission: int | None  # settled deals only
    payout: int | None  # settled deals only: charge - commission
    settled: bool
    created_at: dt.datetime
    settled_at: dt.datetime | None


async def deals(
    pool: asyncpg.Pool, name: str, *, after: tuple[dt.datetime, str] | None, limit: int
) -> list[EarningDeal]:
    """The provider's deals, newest first, after the cursor ``after`` (``(created_at, deal_id)``
    of the previous page's last row), with what each earned."""
    rows = await pool.fetch(
        f"""
        SELECT {_DEAL_COLUMNS},
               o.terms->'attributes'->>'country' AS country, o.terms->'attributes'->>'type' AS type,
               u.streams, u.carried
        FROM deals d
        LEFT JOIN market_orders o ON o.order_id = d.offer_id
        LEFT JOIN LATERAL (
            SELECT count(*) AS streams, COALESCE(sum(bytes_up + bytes_down), 0)::int8 AS carried
            FROM usage_events WHERE deal_id = d.deal_id
        ) u ON true
        WHERE d.provider = $1 AND ($2::timestamptz IS NULL OR (d.created_at, d.deal_id) < ($2, $3))
        ORDER BY d.created_at DESC, d.deal_id DESC LIMIT $4
        """,  # noqa: S608
        name,
        None if after is None else after[0],
        "" if after is None else after[1],
        limit,
    )
    now = time.time()
    out = []
    for row in rows:
        settled = row["state"] == "settled" and row["charge"] is not None
        charge: int | None
        commission = payout = None
        if settled:
            charge, commission = int(row["charge"]), int(row["commission"])
            payout = charge - commission
        elif row["state"] in ("cancelled", "expired"):
            charge = 0
        elif row["state"] == "disputed":
            charge = None  # an operator decides what it bills
        else:
            charge = accrued(row, row["carried"], now)
        out.append(
            EarningDeal(
                deal_id=row["deal_id"],
                state=row["state"],
                exit_id=row["exit_id"],
                spot=row["spot"],
                country=row["country"],
                type=row["type"],
                price_per_gb=int(row["price_per_gb"]),
                price_per_hour=int(row["price_per_hour"]),
                streams=row["streams"],
                bytes=row["billable_bytes"] if settled else row["carried"],
                charge=charge,
                commission=commission,
                payout=payout,
                settled=settled,
                created_at=row["created_at"],
                settled_at=row["updated_at"] if settled else None,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class EarningDay:
    day: dt.date
    deals: int
    bytes: int
    charged: int
    commission: int
    payout: int


async def days(pool: asyncpg.Pool, name: str, before: dt.date | None, limit: int) -> list[EarningDay]:
    """Days (UTC, newest first, before ``before``) on which the provider's deals settled, with
    their billable bytes, charges, the commission taken and the payouts."""
    bound = None if before is None else dt.datetime.combine(before, dt.time(), dt.UTC)
    rows = await pool.fetch(
        """
        SELECT (updated_at AT TIME ZONE 'UTC')::date AS day, count(*) AS deals,
               COALESCE(sum(billable_bytes), 0)::int8 AS bytes, sum(charge)::text AS charged,
               sum(commission)::text AS commission, sum(charge - commission)::text AS payout
        FROM deals
        WHERE provider = $1 AND state = 'settled' AND charge IS NOT NULL
          AND ($2::timestamptz IS NULL OR updated_at < $2)
        GROUP BY 1 ORDER BY 1 DESC LIMIT $3
        """,
        name,
        bound,
        limit,
    )
    return [
        EarningDay(
            row["day"],
            row["deals"],
            row["bytes"],
            int(row["charged"]),
            int(row["commission"]),
            int(row["payout"]),
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class OfferRow:
    seq: int
    order_id: str
    state: str
    filled: int
    terms: dict[str, Any]
    created_at: dt.datetime

    @property
    def protocols(self) -> list[str]:
        return sorted(self.terms.get("protocols") or [])


async def offers(pool: asyncpg.Pool, name: str, *, before: int | None, limit: int) -> list[OfferRow]:
    """The provider's offers, newest first, before the sequence number ``before``."""
    rows = await pool.fetch(
        """
        SELECT seq, order_id, state, filled, terms::text AS terms, created_at FROM market_orders
        WHERE account = $1 AND side = 'offer' AND ($2::bigint IS NULL OR seq < $2)
        ORDER BY seq DESC LIMIT $3
        """,
        name,
        before,
        limit,
    )
    return [
        OfferRow(
            row["seq"],
            row["order_id"],
            row["state"],
            row["filled"],
            orjson.loads(row["terms"]),
            row["created_at"],
        )
        for row in rows
    ]


async def has_offers(pool: asyncpg.Pool, name: str) -> bool:
    found = await pool.fetchval(
        "SELECT 1 FROM market_orders WHERE account = $1 AND side = 'offer' LIMIT 1", name
    )
    return found is not None


@dataclass(frozen=True, slots=True)
class PayoutChannel:
    """A payout channel from the operator to the provider, as the chain watcher recorded it, with
    the latest balance proof the operator signed on it."""

    channel_id: str
    sender: str
    state: str
    deposit: int
    proof_balance: int  # cumulative: what the provider can cash by closing the channel
    signed: bool
    closing_balance: int | None
    settle_after: int | None
    paid: int | None
    created_at: dt.datetime


async def payout_channels(pool: asyncpg.Pool, account_id: int) -> list[PayoutChannel]:
    """The provider's payout channels in every state, open ones first, then newest first."""
    rows = await pool.fetch(
        """
        SELECT channel_id, sender, state, deposit::text AS deposit, proof_balance::text AS proof_balance,
               proof_signature IS NOT NULL AS signed, closing_balance::text AS closing_balance,
               settle_after, paid::text AS paid, created_at
        FROM channels WHERE account_id = $1 AND role = 'provider'
        ORDER BY state = 'open' DESC, created_at DESC LIMIT 100
        """,
        account_id,
    )
    return [
        PayoutChannel(
            channel_id=row["channel_id"],
            sender=row["sender"],
            state=row["state"],
            deposit=int(row["deposit"]),
            proof_balance=int(row["proof_balance"]),
            signed=row["signed"],
            closing_balance=None if row["closing_balance"] is None else int(row["closing_balance"]),
            settle_after=row["settle_after"],
            paid=None if row["paid"] is None else int(row["paid"]),
            created_at=row["created_at"],
        )
        for row in rows
    ]
