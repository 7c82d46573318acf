"""What the operator's pages read: the whole network, so only operator sessions reach them.

Live exits come from the pool (``pool.registry``, ``pool.health.reports``), the order book's depth
from the market (``Market.depth``, or the public ``GET /v1/market/depth`` of the node that runs
it), the usage stream's backlog from ``billing.metrics.usage_backlog``, who is cut off for unpaid
usage from the invoicer's Redis hash (``billing.keys.PAYMENT_CUTOFF``), and the rest from the
deals and usage tables.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import asyncpg
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing import ledger
from billing.keys import PAYMENT_CUTOFF, USAGE_GROUP, USAGE_STREAM
from billing.metrics import usage_backlog
from dashboard.appkeys import HTTP, PG, REDIS, SEAT
from matching import store
from matching.errors import InvalidOrder
from pool.models import ExitInfo
from pool.nodes import NodeRegistry
from pool.registry import ExitRegistry
from pool.server_time import time_seconds

WINDOW_MINUTES: Final = 60
INGESTION_LAG_ALERT: Final = 30.0  # seconds the oldest usage entry may wait before it is an alert
# Stream outcomes that are how streams normally end; any other is counted as an error.
NORMAL_OUTCOMES: Final = frozenset(
    {"ok", "client_closed", "exit_closed", "idle", "cap_reached", "outside_hours"}
)


def _today() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def live_exits(request: web.Request) -> list[ExitInfo]:
    return await ExitRegistry(request.app[REDIS]).list_live()


def count_by_country(exits: list[ExitInfo]) -> dict[str, int]:
    """Live exits per country, keyed by upper-case ISO 3166-1 alpha-2 (the world map's codes)."""
    counts = collections.Counter(info.country.upper() for info in exits if info.country)
    return dict(sorted(counts.items()))


async def exits_by_country(request: web.Request) -> dict[str, int]:
    return count_by_country(await live_exits(request))


async def throughput(pool: asyncpg.Pool, minutes: int = WINDOW_MINUTES) -> list[tuple[int, int, int]]:
    """``(unix minute, streams, bytes)`` of every stream that closed in each of the last
    ``minutes`` minutes (minutes without any are left out)."""
    rows = await pool.fetch(
        """
        SELECT (floor(extract(epoch FROM closed_at) / 60) * 60)::int8 AS minute, count(*) AS streams,
               sum(bytes_up + bytes_down)::int8 AS bytes
        FROM usage_events WHERE closed_at >= now() - make_interval(mins => $1)
        GROUP BY 1 ORDER BY 1
        """,
        minutes,
    )
    return [(row["minute"], row["streams"], row["bytes"]) for row in rows]


def minutes_json(series: list[tuple[int, int, int]], now: float | None = None) -> dict[str, list[int]]:
    """The throughput chart's data: one point per minute of the window, zeros where nothing closed."""
    by_minute = {minute: (streams, size) for minute, streams, size in series}
    last = int((time.time() if now is None else now) // 60 * 60)
    minutes = list(range(last - (WINDOW_MINUTES - 1) * 60, last + 60, 60))
    return {
        "t": minutes,
        "streams": [by_minute.get(minute, (0, 0))[0] for minute in minutes],
        "bytes": [by_minute.get(minute, (0, 0))[1] for minute in minutes],
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str
    streams: int
    bytes: int
    error: bool


async def outcomes(pool: asyncpg.Pool, minutes: int = WINDOW_MINUTES) -> list[Outcome]:
    """How the streams of the last ``minutes`` ended, most frequent first."""
    rows = await pool.fetch(
        """
        SELECT outcome, count(*) AS streams, COALESCE(sum(bytes_up + bytes_down), 0)::int8 AS bytes
        FROM usage_events WHERE closed_at >= now() - make_interval(mins => $1)
        GROUP BY 1 ORDER BY 2 DESC, 1
        """,
        minutes,
    )
    return [
        Outcome(row["outcome"], row["streams"], row["bytes"], row["outcome"] not in NORMAL_OUTCOMES)
        for row in rows
    ]


async def recent_exit_errors(redis: Redis, health: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    """The exits' dial and stream errors of the last ``WINDOW_MINUTES`` by reason, most frequent
    first. The gateways date them by the Redis server's clock, so the window ends at its time,
    not this host's."""
    now = time_seconds(await redis.time())
    return exit_errors(health, now - WINDOW_MINUTES * 60)


def exit_errors(health: dict[str, dict[str, Any]], since: float) -> list[tuple[str, int]]:
    """The exits' recent dial and stream errors since ``since`` (unix seconds), by reason."""
    counts: collections.Counter[str] = collections.Counter()
    for report in health.values():
        for error in report.get("recent_errors", []):
            if float(error.get("at", 0)) >= since:
                counts[str(error.get("reason", "?"))] += 1
    return counts.most_common()


@dataclass(frozen=True, slots=True)
class Dispute:
    deal_id: str
    requester: str
    provider: str
    exit_id: str
    price_per_gb: int
    reserve: int
    why: str
    since: dt.datetime
    gateway_bytes: int
    agent_bytes: int


async def disputes(pool: asyncpg.Pool, limit: int) -> list[Dispute]:
    """Deals waiting in ``disputed`` for an operator, oldest first, with both meters' counts."""
    rows = await pool.fetch(
        """
        SELECT d.deal_id, d.requester, d.provider, d.exit_id, d.price_per_gb::text AS price_per_gb,
               d.reserve::text AS reserve, d.updated_at,
               (SELECT t.detail FROM deal_transitions t WHERE t.deal_id = d.deal_id
                AND t.to_state = 'disputed' AND t.from_state <> 'disputed'
                ORDER BY t.id DESC LIMIT 1) AS why
        FROM deals d WHERE d.state = 'disputed' ORDER BY d.updated_at, d.deal_id LIMIT $1
        """,
        limit,
    )
    found = []
    for row in rows:
        gateway, agent = await store.metered(pool, row["deal_id"])
        found.append(
            Dispute(
                deal_id=row["deal_id"],
                requester=row["requester"],
                provider=row["provider"],
                exit_id=row["exit_id"],
                price_per_gb=int(row["price_per_gb"]),
                reserve=int(row["reserve"]),
                why=row["why"] or "",
                since=row["updated_at"],
                gateway_bytes=gateway,
                agent_bytes=agent,
            )
        )
    return found


async def disputes_waiting(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM deals WHERE state = 'disputed'"))


@dataclass(frozen=True, slots=True)
class Top:
    name: str
    streams: int
    bytes: int
    amount: int  # a requester's charges settled today; a provider's payouts settled today


async def top_requesters(pool: asyncpg.Pool, limit: int) -> list[Top]:
    """Today's (UTC) biggest requesters by traffic, with what their deals settled today cost."""
    today = _today()
    rows = await pool.fetch(
        """
        WITH traffic AS (
            SELECT requester AS who, count(*) AS streams, sum(bytes_up + bytes_down)::int8 AS bytes
            FROM usage_events WHERE closed_at >= $1 GROUP BY 1
        ), spend AS (
            SELECT requester AS who, sum(charge) AS amount FROM deals
            WHERE state = 'settled' AND charge IS NOT NULL AND updated_at >= $1 GROUP BY 1
        )
        SELECT COALESCE(t.who, s.who) AS who, COALESCE(t.streams, 0) AS streams,
               COALESCE(t.bytes, 0)::int8 AS bytes, COALESCE(s.amount, 0)::text AS amount
        FROM traffic t FULL JOIN spend s ON s.who = t.who
        ORDER BY 3 DESC, COALESCE(s.amount, 0) DESC, 1 LIMIT $2
        """,
        today,
        limit,
    )
    return [Top(row["who"], row["streams"], row["bytes"], int(row["amount"])) for row in rows]


async def top_providers(pool: asyncpg.Pool, limit: int) -> list[Top]:
    """Today's biggest providers by traffic served (usage names the exit's wallet address; the
    account it belongs to names it here), with the payouts of their deals settled today."""
    today = _today()
    rows = await pool.fetch(
        """
        WITH traffic AS (
            SELECT COALESCE(a.name, u.provider) AS who, count(*) AS streams,
                   sum(u.bytes_up + u.bytes_down)::int8 AS bytes
            FROM usage_events u LEFT JOIN accounts a ON a.address = u.provider
            WHERE u.closed_at >= $1 GROUP BY 1
        ), earned AS (
            SELECT provider AS who, sum(charge - commission) AS amount FROM deals
            WHERE state = 'settled' AND charge IS NOT NULL AND updated_at >= $1 GROUP BY 1
        )
        SELECT COALESCE(t.who, e.who) AS who, COALESCE(t.streams, 0) AS streams,
               COALESCE(t.bytes, 0)::int8 AS bytes, COALESCE(e.amount, 0)::text AS amount
        FROM traffic t FULL JOIN earned e ON e.who = t.who
        ORDER BY 3 DESC, COALESCE(e.amount, 0) DESC, 1 LIMIT $2
        """,
        today,
        limit,
    )
    return [Top(row["who"], row["streams"], row["bytes"], int(row["amount"])) for row in rows]


@dataclass(frozen=True, slots=True)
class Alert:
    level: str  # "error" | "warn"
    # quarantined | ingestion_lag | disputes | payment_cutoff | unreadable | no_gateway
    # | node_without_exits
    kind: str
    text: str
    subject: str = ""  # the exit id or account it is about
    link: str = ""


@dataclass(frozen=True, slots=True)
class GatewayNode:
    """A live gateway node as the operator page shows it."""

    node: str
    region: str
    tunnel: str  # where agents reach it, HOST:PORT (":PORT": the host they first reached)
    exits: int  # exits linked to it with a fresh heartbeat


async def gateway_nodes(redis: Redis) -> list[GatewayNode]:
    """The gateway nodes announced within the registry's TTL (pool.nodes), with their exits."""
    nodes = await NodeRegistry(redis).live()
    per_node = await ExitRegistry(redis).live_per_node()
    return [GatewayNode(n.node, n.region, n.tunnel, per_node.get(n.node, 0)) for n in nodes]


def node_alerts(nodes: list[GatewayNode], exits: int) -> list[Alert]:
    """No gateway node live is an outage; a live node that holds no exit while others do has lost
    its agents (they keep a tunnel to every node of their region)."""
    if not nodes:
        return [Alert("error", "no_gateway", "no gateway node is live: requesters cannot connect")]
    return [
        Alert(
            "warn",
            "node_without_exits",
            f"gateway node {n.node} holds no exit while {exits} are online",
            n.node,
        )
        for n in nodes
        if n.exits == 0 and exits > 0
    ]


async def alerts(
    request: web.Request,
    exits: list[ExitInfo],
    health: dict[str, dict[str, Any]],
    nodes: list[GatewayNode],
) -> list[Alert]:
    """What needs the operator now, computed on the fly: no gateway node live (or one without
    exits), quarantined exits, a usage ingestion lag over ``INGESTION_LAG_ALERT``, disputes
    waiting, and requesters cut off for unpaid usage."""
    found = node_alerts(nodes, len(exits))
    for info in exits:
        report = health.get(info.exit_id, {})
        if report.get("state") == "quarantined":
            until = report.get("quarantined_until") or 0
            why = report.get("last_trip_reason") or "?"
            found.append(
                Alert(
                    "error",
                    "quarantined",
                    f"exit {info.exit_id} ({info.country.upper()}, {info.type}) is quarantined "
                    f"until {dt.datetime.fromtimestamp(until, dt.UTC):%H:%M:%S} UTC ({why}, "
                    f"trip {report.get('trips', 0)})",
                    info.exit_id,
                )
            )
    redis = request.app[REDIS]
    try:
        backlog = await usage_backlog(redis, USAGE_STREAM, USAGE_GROUP)
        cut_off = await redis.hgetall(PAYMENT_CUTOFF)
    except (RedisError, OSError) as error:
        found.append(Alert("error", "unreadable", f"Redis did not answer: {type(error).__name__}"))
    else:
        if backlog.oldest_age > INGESTION_LAG_ALERT:
            found.append(
                Alert(
                    "error",
                    "ingestion_lag",
                    f"usage ingestion lags {backlog.oldest_age:.0f} s ({backlog.undelivered} waiting to "
                    f"be read, {backlog.pending} read and not acknowledged): is a billing worker running?",
                )
            )
        for name, owed in sorted(cut_off.items()):
            who = name.decode() if isinstance(name, bytes) else str(name)
            amount = int(owed.decode() if isinstance(owed, bytes) else owed)
            owes = ledger.format_amount(ledger.Amount(amount))
            found.append(
                Alert("warn", "payment_cutoff", f"{who} is cut off for unpaid usage: owes {owes} IPSX", who)
            )
    waiting = await disputes_waiting(request.app[PG])
    if waiting:
        found.append(
            Alert(
                "warn",
                "disputes",
                f"{waiting} disputed deal{'s wait' if waiting != 1 else ' waits'} for a decision",
                link="/web/operator/disputes",
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class PriceIndex:
    country: str | None
    type: str | None
    deals: int
    median_gb: int
    median_hour: int


async def price_index(pool: asyncpg.Pool) -> list[PriceIndex]:
    """The price index per country and IP type from the last 24 hours' deals, as the public
    ``GET /v1/market/prices`` publishes it."""
    rows = await pool.fetch(
        """
        SELECT o.terms->'attributes'->>'country' AS country, o.terms->'attributes'->>'type' AS type,
               count(*) AS deals,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY d.price_per_gb)::text AS median_gb,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY d.price_per_hour)::text AS median_hour
        FROM deals d JOIN market_orders o ON o.order_id = d.offer_id
        WHERE d.created_at > now() - interval '24 hours'
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    )
    return [
        PriceIndex(row["country"], row["type"], row["deals"], int(row["median_gb"]), int(row["median_hour"]))
        for row in rows
    ]


async def offered_markets(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    """The ``(country, type)`` pairs open offers are in (the order book's markets)."""
    rows = await pool.fetch(
        """
        SELECT DISTINCT terms->'attributes'->>'country' AS country, terms->'attributes'->>'type' AS type
        FROM market_orders WHERE state = 'open' AND side = 'offer' ORDER BY 1, 2
        """
    )
    return [(row["country"], row["type"]) for row in rows if row["country"] and row["type"]]


Level = tuple[int, int, int]  # (price per GB, price per hour, offers)


class DepthUnavailable(Exception):
    """The order book's depth could not be read (no node runs the market, or it did not answer)."""


async def depth(request: web.Request, country: str | None, kind: str | None) -> list[Level]:
    """Price levels of resting offers with room for ``country`` and ``kind`` (``None``: any),
    cheapest per GB first: from the market here, else from the node that runs it. Raises
    ``InvalidOrder`` for a malformed filter and ``DepthUnavailable``."""
    market = request.app[SEAT].market
    if market is not None:
        return [(int(gb), int(hour), count) for gb, hour, count in market.depth(country, kind)]
    leader = await request.app[SEAT].leader_url()
    if leader is None:
        raise DepthUnavailable("no API node runs the market right now")
    query = {name: value for name, value in (("country", country), ("type", kind)) if value}
    try:
        async with request.app[HTTP].get(leader + "/v1/market/depth", params=query) as answer:
            if answer.status == 400:
                raise InvalidOrder("country", "a malformed filter")
            payload = await answer.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise DepthUnavailable("the market's API node did not answer") from None
    levels = payload.get("levels", [])
    return [
        (
            int(level["price_per_gb"]["base_units"]),
            int(level["price_per_hour"]["base_units"]),
            level["offers"],
        )
        for level in levels
    ]
