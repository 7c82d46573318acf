"""Deals and usage written the way the market and the billing worker write them (matching.store's
functions; usage rows in usage_events' own shape), for pages that need history to show."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import asyncpg

from billing.ledger import Amount
from matching import store
from matching.deals import State, propose
from matching.engine import Fill

IPSX = 10**18


async def offer(conn: asyncpg.Connection, provider: str, exit_id: str, country: str, kind: str) -> str:
    """A provider's offer of ``exit_id`` (an order row, as the market stores it); its id."""
    offer_id = "o" + uuid.uuid4().hex[:16]
    terms = {
        "offer_id": offer_id,
        "provider": provider,
        "exit_id": exit_id,
        "attributes": {"country": country, "type": kind, "region": "", "city": "", "asn": 0},
        "price_per_gb": str(IPSX),
        "price_per_hour": "0",
    }
    await store.insert_order(conn, "offer", provider, offer_id, terms)
    return offer_id


async def deal(
    conn: asyncpg.Connection,
    *,
    requester: str,
    provider: str,
    offer_id: str,
    exit_id: str,
    state: State = State.ACTIVE,
    charge: int | None = None,
    created_at: dt.datetime | None = None,
) -> str:
    """A spot deal of ``requester`` on the offer; settled with ``charge`` when given.

    Written after the API's market loaded its book, so the market leaves it alone (it only
    advances the deals it opened or loaded)."""
    deal_id = "s" + uuid.uuid4().hex[:20]
    now = int(time.time())
    fill = Fill(
        deal_id=deal_id,
        request_id=deal_id,
        offer_id=offer_id,
        requester=requester,
        provider=provider,
        exit_id=exit_id,
        price_per_gb=Amount(IPSX),
        price_per_hour=Amount(0),
        duration_s=600,
        traffic_bytes=10**9,
        dedicated=False,
        reserve=Amount(IPSX),
        opened_at=now,
    )
    record = propose(
        deal_id=deal_id,
        requester=requester,
        provider=provider,
        exit_id=exit_id,
        price_per_gb=fill.price_per_gb,
        price_per_hour=fill.price_per_hour,
        reserve=fill.reserve,
        duration_s=fill.duration_s,
        traffic_bytes=fill.traffic_bytes,
        created_at=now,
        accepted=True,
    )
    await store.insert_deal(conn, fill, record, spot=True)
    await conn.execute(
        "UPDATE deals SET state = $2, created_at = COALESCE($4, created_at),"
        " record = jsonb_set(jsonb_set(record, '{activated_at}', to_jsonb($3::int8)),"
        " '{state}', to_jsonb($2::text))"
        " WHERE deal_id = $1",
        deal_id,
        state.value,
        now,
        created_at,
    )
    if charge is not None:
        await store.settled(conn, deal_id, charge, charge // 10, charge)
    return deal_id


async def usage(
    conn: asyncpg.Connection,
    *,
    requester: str,
    provider: str,
    exit_id: str,
    deal_id: str | None,
    streams: int,
    size: int,
    closed_at: dt.datetime | None = None,
) -> None:
    """``streams`` metered streams of ``size`` bytes each (down), closed at ``closed_at`` (now)."""
    closed = closed_at or dt.datetime.now(dt.UTC)
    rows = [
        (
            uuid.uuid4().hex,
            deal_id,
            requester,
            provider,
            exit_id,
            "node",
            "connect",
            "example.com:443",
            0,
            size,
            closed - dt.timedelta(seconds=1),
            closed,
            "ok",
            1,
        )
        for _ in range(streams)
    ]
    await conn.copy_records_to_table(
        "usage_events",
        records=rows,
        columns=[
            "event_id",
            "deal_id",
            "requester",
            "provider",
            "exit_id",
            "node",
            "protocol",
            "target",
            "bytes_up",
            "bytes_down",
            "opened_at",
            "closed_at",
            "outcome",
            "attempts",
        ],
    )
