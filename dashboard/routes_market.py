"""The market's data routes: the public order book depth and price index, accounts' profiles
(their record as provider and requester), the caller's spot preferences, and a provider's live
exits with their health, to offer them.

The depth is read from the book in the memory of the market's node, so elsewhere it is forwarded
there (``market_calls``); the rest is read from PostgreSQL and Redis on any node. Orders are in
``routes_orders``, deals and disputes in ``routes_deals``; the OpenAPI entries of these routes are
in ``openapi_market``.
"""

from __future__ import annotations

from aiohttp import web

from billing.accounts import OPERATOR
from dashboard.appkeys import PG, REDIS, SEAT
from dashboard.market_calls import forward_to_market
from dashboard.path_ids import ACCOUNT_NAME, path_id
from dashboard.problems import Problem, json_response, read_json
from dashboard.routes import amount_json, authorized
from matching import store
from matching.errors import InvalidOrder
from pool.countries import unknown_country
from pool.health import reports as health_reports
from pool.registry import ExitRegistry

routes = web.RouteTableDef()

_NO_PROFILE = "no deals are recorded for this account"


@routes.get("/v1/exits")
async def my_exits(request: web.Request) -> web.Response:
    """The caller's live exits as a provider (its agents declared them), to offer them, with each
    one's health as the gateway nodes see it (success rate, dial latency, throughput, errors)."""
    caller = await authorized(request)
    live = await ExitRegistry(request.app[REDIS]).list_live()
    mine = [info for info in live if info.provider == caller.account.address]
    health = await health_reports(request.app[REDIS], [info.exit_id for info in mine])
    items = [
        {
            "exit_id": info.exit_id,
            "bind": info.bind,
            "country": info.country,
            "region": info.region,
            "city": info.city,
            "asn": info.asn,
            "type": info.type,
            "health": health[info.exit_id],
        }
        for info in mine
    ]
    return json_response({"items": items})


@routes.get("/v1/market/depth")
async def depth(request: web.Request) -> web.Response:
    """Public: resting offers with room, by price level, for a country and IP type."""
    unknown = set(request.query) - {"country", "type"}
    if unknown:
        raise Problem(400, "unknown_parameter", f"unknown query parameter {sorted(unknown)[0][:40]!r}")
    market = request.app[SEAT].market
    if market is None:  # the book is in the memory of the market's node
        return await forward_to_market(request)
    country = request.query.get("country")
    if country is not None and (no_country := unknown_country(country)) is not None:
        raise Problem(400, "bad_filter", f"invalid country: {no_country}", field="country")
    try:
        levels = market.depth(country, request.query.get("type"))
    except InvalidOrder as error:
        raise Problem(400, "bad_filter", str(error), field=error.field) from None
    return json_response(
        {
            "levels": [
                {"price_per_gb": amount_json(gb), "price_per_hour": amount_json(hour), "offers": count}
                for gb, hour, count in levels
            ]
        }
    )


@routes.get("/v1/market/prices")
async def prices(request: web.Request) -> web.Response:
    """Public: a price index per country and IP type, from the deals of the last 24 hours."""
    if request.query:
        raise Problem(400, "unknown_parameter", "this operation takes no query parameters")
    rows = await request.app[PG].fetch(
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
    return json_response(
        {
            "window_hours": 24,
            "index": [
                {
                    "country": row["country"],
                    "type": row["type"],
                    "deals": row["deals"],
                    "median_price_per_gb": amount_json(int(row["median_gb"])),
                    "median_price_per_hour": amount_json(int(row["median_hour"])),
                }
                for row in rows
            ],
        }
    )


@routes.get("/v1/me/preferences")
async def get_preferences(request: web.Request) -> web.Response:
    caller = await authorized(request)
    price = await store.spot_max_price(request.app[PG], caller.account.name)
    return json_response({"spot_max_price_per_gb": None if price is None else amount_json(price)})


@routes.put("/v1/me/preferences")
async def put_preferences(request: web.Request) -> web.Response:
    """The account's defaults for traffic without an order (``null`` restores the market's)."""
    caller = await authorized(request, "trade")
    body = await read_json(request)
    if set(body) - {"spot_max_price_per_gb"}:
        raise Problem(422, "invalid_field", "unknown preference", field=sorted(set(body))[0][:40])
    value = body.get("spot_max_price_per_gb")
    if value is not None and (
        not isinstance(value, str)
        or not (value.isascii() and value.isdigit())
        or len(value) > 78
        or int(value) == 0
    ):
        raise Problem(
            422, "invalid_field", "a positive number of base units, as digits", field="spot_max_price_per_gb"
        )
    await store.set_spot_max_price(
        request.app[PG], caller.account.name, None if value is None else int(value)
    )
    return json_response({"spot_max_price_per_gb": None if value is None else amount_json(int(value))})


@routes.get("/v1/profiles/{name}")
async def profile(request: web.Request) -> web.Response:
    """An account's record as provider and as requester, derived from its deals' outcomes.

    The provider rating is 5 * (settled deals that were never disputed) / (deals closed: settled
    or cancelled), to one decimal; ``null`` before any deal closed. The record is public to signed-
    in callers, the money is not: ``earned`` and ``spent`` are the account's own (and the
    operator's) to see, ``null`` for anyone else.
    """
    caller = await authorized(request)
    name = path_id(request, "name", ACCOUNT_NAME, _NO_PROFILE)
    own = caller.account.name == name or (caller.key is not None and OPERATOR in caller.key.scopes)
    row = await request.app[PG].fetchrow(
        """
        WITH d AS (
            SELECT d.*, EXISTS (SELECT 1 FROM deal_transitions t
                                WHERE t.deal_id = d.deal_id AND t.to_state = 'disputed') AS disputed
            FROM deals d WHERE d.provider = $1 OR d.requester = $1
        )
        SELECT
            count(*) FILTER (WHERE provider = $1) AS p_deals,
            count(*) FILTER (WHERE provider = $1 AND state = 'settled') AS p_settled,
            count(*) FILTER (WHERE provider = $1 AND state = 'settled' AND NOT disputed) AS p_clean,
            count(*) FILTER (WHERE provider = $1 AND state = 'cancelled') AS p_cancelled,
            count(*) FILTER (WHERE provider = $1 AND disputed) AS p_disputed,
            COALESCE(sum(billable_bytes) FILTER (WHERE provider = $1), 0)::int8 AS p_bytes,
            COALESCE(sum(charge - commission) FILTER (WHERE provider = $1), 0)::text AS p_earned,
            count(*) FILTER (WHERE requester = $1) AS r_deals,
            count(*) FILTER (WHERE requester = $1 AND state = 'settled') AS r_settled,
            count(*) FILTER (WHERE requester = $1 AND disputed) AS r_disputed,
            COALESCE(sum(charge) FILTER (WHERE requester = $1), 0)::text AS r_spent
        FROM d
        """,
        name,
    )
    if row is None or (row["p_deals"] == 0 and row["r_deals"] == 0):
        raise Problem(404, "not_found", _NO_PROFILE)
    closed = row["p_settled"] + row["p_cancelled"]
    return json_response(
        {
            "name": name,
            "provider": {
                "deals": row["p_deals"],
                "settled": row["p_settled"],
                "cancelled": row["p_cancelled"],
                "disputed": row["p_disputed"],
                "bytes_carried": row["p_bytes"],
                "earned": amount_json(int(row["p_earned"])) if own else None,
                "rating": round(5 * row["p_clean"] / closed, 1) if closed else None,
            },
            "requester": {
                "deals": row["r_deals"],
                "settled": row["r_settled"],
                "disputed": row["r_disputed"],
                "spent": amount_json(int(row["r_spent"])) if own else None,
            },
        }
    )
