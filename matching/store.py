"""The market's tables in PostgreSQL: orders, deals and deal transitions (SQL lives here only).

Orders are stored with their terms as JSON (amounts as decimal strings, so no precision is lost)
and rebuilt into :mod:`matching.orders` objects when the market loads; deals keep their
:class:`matching.deals.Deal` record as JSON beside the columns that are queried.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import asyncpg
import orjson

from billing.ledger import Amount
from matching.deals import Deal, State, TransitionRecord
from matching.engine import Fill
from matching.orders import ExitAttributes, Offer, Request, RequestFilters

_AMOUNTS = ("price_per_gb", "price_per_hour", "max_price_per_gb", "max_price_per_hour", "reserve")


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    """A dataclass dict made JSON-safe: amounts as strings, frozensets as sorted lists."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _AMOUNTS:
            out[key] = str(item)
        elif isinstance(item, frozenset):
            out[key] = sorted(item)
        elif isinstance(item, dict):
            out[key] = _plain(item)
        else:
            out[key] = item
    return out


def offer_terms(offer: Offer) -> dict[str, Any]:
    return _plain(asdict(offer))


def request_terms(request: Request) -> dict[str, Any]:
    return _plain(asdict(request))


def offer_from(terms: dict[str, Any]) -> Offer:
    values = dict(terms)
    values["attributes"] = ExitAttributes(**values["attributes"])
    values["protocols"] = frozenset(values["protocols"])
    for key in ("price_per_gb", "price_per_hour"):
        values[key] = Amount(int(values[key]))
    return Offer(**values)


def request_from(terms: dict[str, Any]) -> Request:
    values = dict(terms)
    values["filters"] = RequestFilters(**values["filters"])
    for key in ("max_price_per_gb", "max_price_per_hour"):
        values[key] = Amount(int(values[key]))
    return Request(**values)


def deal_record(deal: Deal) -> dict[str, Any]:
    return _plain(asdict(deal))


def deal_from(record: dict[str, Any]) -> Deal:
    values = dict(record)
    values["state"] = State(values["state"])
    for key in ("price_per_gb", "price_per_hour", "reserve"):
        values[key] = Amount(int(values[key]))
    return Deal(**values)


async def insert_order(
    conn: asyncpg.Connection,
    side: str,
    account: str,
    order_id: str,
    terms: dict[str, Any],
    key_id: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO market_orders (order_id, side, account, terms, key_id)"
        " VALUES ($1, $2, $3, $4::jsonb, $5)",
        order_id,
        side,
        account,
        orjson.dumps(terms).decode(),
        key_id,
    )


async def update_order(
    conn: asyncpg.Connection,
    order_id: str,
    *,
    state: str | None = None,
    filled_delta: int = 0,
    terms: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """
        UPDATE market_orders
        SET state = COALESCE($2, state), filled = filled + $3,
            terms = COALESCE($4::jsonb, terms), updated_at = now()
        WHERE order_id = $1
        """,
        order_id,
        state,
        filled_delta,
        None if terms is None else orjson.dumps(terms).decode(),
    )


async def requeue(conn: asyncpg.Connection, order_id: str) -> None:
    """Move the order to the back of time priority, as the engine just did: a fresh place, after
    every order stored so far, that :func:`open_orders` replays it at."""
    await conn.execute(
        "UPDATE market_orders SET queued = nextval('market_orders_queued') WHERE order_id = $1", order_id
    )


async def order_exists(conn: asyncpg.Connection | asyncpg.Pool, order_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM market_orders WHERE order_id = $1", order_id))


async def open_orders(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Open orders in time priority, as the engine last queued them (see :func:`requeue`):
    ``side``, ``account``, ``terms`` (JSON), ``filled``, ``key_id``."""
    rows = await pool.fetch(
        "SELECT order_id, side, account, terms::text AS terms, filled, key_id FROM market_orders"
        " WHERE state = 'open' ORDER BY queued"
    )
    return list(rows)


async def used_exits(pool: asyncpg.Pool) -> dict[str, set[str]]:
    """The exits every deal of each open request order was opened on, ended deals' too, by order id."""
    rows = await pool.fetch(
        "SELECT d.request_id, array_agg(DISTINCT d.exit_id) AS exits FROM deals d"
        " JOIN market_orders o ON o.order_id = d.request_id WHERE o.state = 'open' GROUP BY d.request_id"
    )
    return {row["request_id"]: set(row["exits"]) for row in rows}


async def last_deal_number(pool: asyncpg.Pool) -> int:
    """The highest deal number (the digits after a deal id's last ``_``) any deal ever took; 0 for none."""
    value = await pool.fetchval(
        "SELECT COALESCE(MAX(substring(deal_id FROM '_([0-9]+)$')::numeric), 0)::text FROM deals"
    )
    return int(value)


async def insert_deal(
    conn: asyncpg.Connection, fill: Fill, deal: Deal, *, spot: bool, key_id: str | None = None
) -> None:
    await conn.execute(
        """
        INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb,
                           price_per_hour, reserve, duration_s, traffic_bytes, dedicated, spot, state,
                           record, key_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb,
                COALESCE($16, (SELECT key_id FROM market_orders WHERE order_id = $2)))
        """,
        fill.deal_id,
        fill.request_id,
        fill.offer_id,
        fill.requester,
        fill.provider,
        fill.exit_id,
        int(fill.price_per_gb),
        int(fill.price_per_hour),
        int(fill.reserve),
        fill.duration_s,
        fill.traffic_bytes,
        fill.dedicated,
        spot,
        deal.state.value,
        orjson.dumps(deal_record(deal)).decode(),
        key_id,
    )


async def key_budget(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> int | None:
    """What the key may still open deals for, or None when neither it nor its parent has a limit.

    A limit covers the deals of the key and of its sub-keys (keys are at most two levels deep):
    the budget is the least of the key's limit and its parent's, each less what the deals it
    covers cost or hold.
    """
    row = await conn.fetchrow(
        """
        WITH spent AS (
            SELECT tree.key_id, COALESCE(SUM(COALESCE(d.charge, d.reserve)), 0) AS spent
            FROM api_keys tree
            JOIN api_keys member ON member.key_id = tree.key_id OR member.parent_key_id = tree.key_id
            JOIN deals d ON d.key_id = member.key_id AND d.state NOT IN ('cancelled', 'expired')
            WHERE tree.key_id IN (SELECT key_id FROM api_keys WHERE key_id = $1
                                  UNION ALL SELECT parent_key_id FROM api_keys WHERE key_id = $1)
            GROUP BY tree.key_id
        )
        SELECT (k.spend_limit - COALESCE(ks.spent, 0))::text AS own,
               (p.spend_limit - COALESCE(ps.spent, 0))::text AS parent
        FROM api_keys k
        LEFT JOIN spent ks ON ks.key_id = k.key_id
        LEFT JOIN api_keys p ON p.key_id = k.parent_key_id
        LEFT JOIN spent ps ON ps.key_id = p.key_id
        WHERE k.key_id = $1
        """,
        key_id,
    )
    if row is None:
        return None
    left = [int(value) for value in (row["own"], row["parent"]) if value is not None]
    return max(0, min(left)) if left else None


async def save_deal(conn: asyncpg.Connection, deal: Deal, record: TransitionRecord) -> None:
    """Store the deal's new state and the transition that led to it."""
    await conn.execute(
        "UPDATE deals SET state = $2, record = $3::jsonb, updated_at = now() WHERE deal_id = $1",
        deal.deal_id,
        deal.state.value,
        orjson.dumps(deal_record(deal)).decode(),
    )
    await conn.execute(
        """
        INSERT INTO deal_transitions (deal_id, from_state, to_state, event, actor, at, detail, noop)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        record.deal_id,
        record.from_state.value,
        record.to_state.value,
        record.event.value,
        record.actor.value,
        record.at,
        record.detail,
        record.noop,
    )


async def settled(
    conn: asyncpg.Connection, deal_id: str, charge: int, commission: int, billable: int
) -> None:
    await conn.execute(
        "UPDATE deals SET charge = $2, commission = $3, billable_bytes = $4 WHERE deal_id = $1",
        deal_id,
        charge,
        commission,
        billable,
    )


async def live_deals(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Deals not closed yet, oldest first, with their engine-side columns and record."""
    rows = await pool.fetch(
        """
        SELECT deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb::text,
               price_per_hour::text, reserve::text, duration_s, traffic_bytes, dedicated, spot,
               record::text AS record, extract(epoch FROM created_at)::float8 AS created
        FROM deals WHERE state NOT IN ('settled', 'cancelled', 'expired') ORDER BY created_at, deal_id
        """
    )
    return list(rows)


async def metered(conn: asyncpg.Connection | asyncpg.Pool, deal_id: str) -> tuple[int, int]:
    """``(gateway bytes, agent bytes)`` metered for the deal so far, up and down summed."""
    row = await conn.fetchrow(
        """
        SELECT COALESCE(SUM(gateway_bytes_up + gateway_bytes_down), 0)::int8 AS gateway,
               COALESCE(SUM(COALESCE(agent_bytes_up + agent_bytes_down, 0)), 0)::int8 AS agent
        FROM metered_streams WHERE deal_id = $1
        """,
        deal_id,
    )
    return int(row["gateway"]), int(row["agent"])


async def spot_max_price(conn: asyncpg.Connection | asyncpg.Pool, account: str) -> int | None:
    """The account's preferred spot price cap per GB, or None for the market's default."""
    value = await conn.fetchval(
        "SELECT spot_max_price_per_gb::text FROM account_preferences WHERE account = $1", account
    )
    return None if value is None else int(value)


async def set_spot_max_price(pool: asyncpg.Pool, account: str, price: int | None) -> None:
    await pool.execute(
        """
        INSERT INTO account_preferences (account, spot_max_price_per_gb) VALUES ($1, $2::numeric)
        ON CONFLICT (account) DO UPDATE SET spot_max_price_per_gb = EXCLUDED.spot_max_price_per_gb,
                                            updated_at = now()
        """,
        account,
        price,
    )


async def carried(pool: asyncpg.Pool, deal_ids: list[str]) -> dict[str, int]:
    """Bytes (up and down) the gateways metered so far on each of ``deal_ids``' finished streams."""
    if not deal_ids:
        return {}
    rows = await pool.fetch(
        "SELECT deal_id, SUM(bytes_up + bytes_down)::int8 AS carried FROM usage_events"
        " WHERE deal_id = ANY($1::text[]) GROUP BY deal_id",
        deal_ids,
    )
    return {row["deal_id"]: int(row["carried"]) for row in rows}
