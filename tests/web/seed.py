"""Deals and usage written the way the market and the billing worker write them (matching.store's
functions; usage rows in usage_events' own shape), for pages that need history to show."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from dataclasses import replace

import asyncpg
import httpx
import redis.asyncio

from billing import reseller_terms
from billing.ledger import Amount
from matching import store
from matching.deals import State, propose
from matching.engine import Fill
from pool.health import ExitHealth
from pool.models import ExitInfo
from pool.nodes import NodeInfo, NodeRegistry
from pool.registry import ExitRegistry

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
    request_id: str | None = None,
) -> str:
    """A spot deal of ``requester`` on the offer (or, with ``request_id``, a deal of that request
    order); settled with ``charge`` when given.

    Written after the API's market loaded its book, so the market leaves it alone (it only
    advances the deals it opened or loaded)."""
    deal_id = "s" + uuid.uuid4().hex[:20]
    now = int(time.time())
    fill = Fill(
        deal_id=deal_id,
        request_id=request_id or deal_id,
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


# -- providers, exits and the market, for the provider's and the operator's pages ------------


async def metered(
    conn: asyncpg.Connection,
    *,
    requester: str,
    provider: str,
    exit_id: str,
    deal_id: str | None,
    sizes: list[int],
    agent_sizes: list[int] | None = None,
    outcome: str = "client_closed",
) -> None:
    """Streams of ``sizes`` bytes (down) counted by the gateway (``usage_events``, ``provider``
    the exit's wallet address as the gateway records it) and, with ``agent_sizes``, the same
    streams as the provider agent counted them (``agent_reports``, same event ids)."""
    closed = dt.datetime.now(dt.UTC)
    opened = closed - dt.timedelta(seconds=1)
    ids = [uuid.uuid4().hex for _ in sizes]
    await conn.copy_records_to_table(
        "usage_events",
        records=[
            (event_id, deal_id, requester, provider, exit_id, "node", "connect", "example.com:443", 0, size,
             opened, closed, outcome, 1)
            for event_id, size in zip(ids, sizes, strict=True)
        ],
        columns=["event_id", "deal_id", "requester", "provider", "exit_id", "node", "protocol", "target",
                 "bytes_up", "bytes_down", "opened_at", "closed_at", "outcome", "attempts"],
    )  # fmt: skip
    if agent_sizes is not None:
        await conn.copy_records_to_table(
            "agent_reports",
            records=[
                (event_id, provider, exit_id, 0, size, opened, closed, outcome)
                for event_id, size in zip(ids, agent_sizes, strict=True)
            ],
            columns=["event_id", "provider", "exit_id", "bytes_up", "bytes_down", "opened_at", "closed_at",
                     "outcome"],
        )  # fmt: skip


class LiveExits:
    """Exits registered in the pool as a gateway node does (``pool.registry``, the node announced
    in ``pool.nodes``), kept live by a heartbeat every second from a thread until ``close``
    deregisters them."""

    NODE = "web-test-node"

    def __init__(self, redis_url: str, exits: list[ExitInfo]) -> None:
        self.redis_url = redis_url
        self.exits = [replace(info, node=self.NODE) for info in exits]
        self._stop = threading.Event()
        asyncio.run(self._call("register"))
        self._thread = threading.Thread(target=self._beat, name="web-test-heartbeat", daemon=True)
        self._thread.start()

    async def _call(self, what: str) -> None:
        client = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            registry, nodes = ExitRegistry(client), NodeRegistry(client)
            if what == "register":
                await registry.register(self.exits)
                await nodes.announce(NodeInfo(self.NODE, ":18082", region="eu"))
            elif what == "heartbeat":
                await registry.heartbeat(self.NODE, self.exits)
                await nodes.announce(NodeInfo(self.NODE, ":18082", region="eu"))
            else:
                await registry.deregister(self.NODE, self.exits)
                await nodes.withdraw(self.NODE)
        finally:
            await client.aclose()

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            asyncio.run(self._call("heartbeat"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        asyncio.run(self._call("deregister"))


def address_of(database_url: str, name: str) -> str:
    """The account's wallet address as stored (checksummed)."""

    async def go() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            return str(await conn.fetchval("SELECT address FROM accounts WHERE name = $1", name))
        finally:
            await conn.close()

    return asyncio.run(go())


def wait_for_state(database_url: str, deal_id: str, state: str, timeout: float = 45.0) -> asyncpg.Record:
    """Poll until the market moved the deal to ``state``; its row then (AssertionError on timeout)."""

    async def go() -> asyncpg.Record:
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                row = await conn.fetchrow(
                    "SELECT state, charge::text AS charge, commission::text AS commission, billable_bytes"
                    " FROM deals WHERE deal_id = $1",
                    deal_id,
                )
                if row is not None and row["state"] == state:
                    return row
                assert time.monotonic() < deadline, f"deal {deal_id} is {row and row['state']}, not {state}"
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    return asyncio.run(go())


def open_deal(api_url: str, secret: str, filters: dict[str, str], max_price_per_gb: int) -> str:
    """A one-IP, immediate-or-cancel request order through the REST API; the deal it opened."""
    placed = httpx.post(
        f"{api_url}/v1/requests",
        headers={"Authorization": f"Bearer {secret}"},
        json={"filters": filters, "ips": 1, "duration_s": 600, "traffic_bytes": 10**9,
              "max_price_per_gb": str(max_price_per_gb), "rest": False},
        timeout=15,
    )  # fmt: skip
    assert placed.status_code == 201, placed.text
    deals = placed.json()["deals"]
    assert len(deals) == 1, placed.text
    return str(deals[0]["deal_id"])


def report(api_url: str, secret: str, deal_id: str, what: str) -> None:
    """A party's report on its deal (``POST /v1/deals/{id}/reports``)."""
    answer = httpx.post(
        f"{api_url}/v1/deals/{deal_id}/reports",
        headers={"Authorization": f"Bearer {secret}"},
        json={"report": what},
        timeout=15,
    )
    assert answer.status_code == 200, answer.text


async def quarantine(redis_url: str, exit_id: str, reason: str = "timeout", failures: int = 5) -> None:
    """Trip ``exit_id``'s circuit breaker as a gateway node would: ``failures`` exit-blamed dial
    failures in a row, recorded and flushed through ``pool.health.ExitHealth``."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        health = ExitHealth(client, "web-test-gateway")
        for _ in range(failures):
            health.dial_failed(exit_id, reason)
        await health.flush()
    finally:
        await client.aclose()


async def record_dials(redis_url: str, exit_id: str, ok: list[float], failed: list[str]) -> None:
    """Dials through ``exit_id`` as a gateway node records them: ``ok`` latencies in seconds,
    ``failed`` reasons (exit-blamed), flushed to the shared health record."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        health = ExitHealth(client, "web-test-gateway")
        for latency in ok:
            health.dial_ok(exit_id, latency)
        for reason in failed:
            health.dial_failed(exit_id, reason)
        await health.flush()
    finally:
        await client.aclose()


# -- white-label resellers, for the reseller's pages -------------------------------------------


async def reseller_markup(
    conn: asyncpg.Connection, *, deal_id: str, requester: str, charge: int, at: dt.datetime | None = None
) -> None:
    """The markup on the settled deal ``deal_id`` of the sub-user ``requester`` (internal name),
    charged as settlement charges it (``billing.reseller_terms.charge_markup_in``); with ``at``, the
    deal and its markup are dated then (a day of another month, say)."""
    async with conn.transaction():
        await reseller_terms.charge_markup_in(conn, deal_id, requester, Amount(charge))
    if at is not None:
        await conn.execute("UPDATE reseller_markups SET created_at = $2 WHERE deal_id = $1", deal_id, at)
        await conn.execute("UPDATE deals SET updated_at = $2 WHERE deal_id = $1", deal_id, at)
