"""The market's REST API: offers, requests, cancelling, deals, and public market data."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from billing.accounts import OPERATOR
from dashboard import pac
from dashboard.appkeys import HTTP, PG, REDIS, SEAT, SETTINGS
from dashboard.pages import encode_cursor, page_params
from dashboard.problems import Problem, json_response, read_json
from dashboard.routes import amount_json, authorized, idempotency_reference
from matching import store
from matching.engine import Fill, MatchResult
from matching.errors import InvalidOrder, MatchingError
from matching.market import MarketRefused
from matching.terms import package_for, request_for
from pool.health import reports as health_reports
from pool.registry import ExitRegistry

routes = web.RouteTableDef()


FORWARDED = "X-IPSX-Forwarded"  # a market call one API node passed to the market's node
_FORWARDED_HEADERS = ("Authorization", "Idempotency-Key", "Content-Type")


async def _forward(request: web.Request) -> web.Response:
    """Pass a market call to the API node that runs the market, and its answer back as it is."""
    leader = None if FORWARDED in request.headers else await request.app[SEAT].leader_url()
    if leader is None:
        raise Problem(503, "market_unavailable", "no API node runs the market right now; try again shortly")
    headers = {name: value for name in _FORWARDED_HEADERS if (value := request.headers.get(name))}
    headers[FORWARDED] = "1"
    body = await request.read()
    try:
        async with request.app[HTTP].request(
            request.method, leader + request.path_qs, data=body, headers=headers, allow_redirects=False
        ) as answer:
            payload = await answer.read()
            content_type = answer.headers.get("Content-Type", "application/json")
            status = answer.status
    except (aiohttp.ClientError, TimeoutError):
        raise Problem(503, "market_unavailable", "the market's API node did not answer; try again") from None
    return web.Response(status=status, body=payload, headers={"Content-Type": content_type})


def _fill_json(fill: Fill) -> dict[str, Any]:
    return {
        "deal_id": fill.deal_id,
        "request_id": fill.request_id,
        "offer_id": fill.offer_id,
        "exit_id": fill.exit_id,
        "price_per_gb": amount_json(fill.price_per_gb),
        "price_per_hour": amount_json(fill.price_per_hour),
        "reserve": amount_json(fill.reserve),
        "duration_s": fill.duration_s,
        "traffic_bytes": fill.traffic_bytes,
        "dedicated": fill.dedicated,
    }


async def _replay(
    request: web.Request, order_id: str | None, account: str, side: str, body: dict[str, Any]
) -> web.Response | None:
    """The order an Idempotency-Key already placed, if the retry asks for the same one.

    A retry must carry the same terms: a request or package whose terms do not parse is answered
    422, and one whose terms differ from the order placed under the key 409.
    """
    if order_id is None:
        return None
    row = await request.app[PG].fetchrow(
        "SELECT side, account, state, filled, terms::text AS terms FROM market_orders WHERE order_id = $1",
        order_id,
    )
    if row is None:
        return None
    if row["account"] != account:
        raise Problem(409, "conflict", "this idempotency key was used for another order")
    if side != "offer":
        build = request_for if side == "request" else package_for
        try:
            again = build(account, {**body, "request_id": order_id}, order_id)
        except (MatchingError, TypeError, ValueError) as error:
            raise _refusal(error) from None
        stored = orjson.loads(row["terms"])
        # A spend-limited key's orders are made immediate-or-cancel when placed: not a difference.
        if {**store.request_terms(again), "rest": stored.get("rest")} != stored:
            raise Problem(409, "conflict", "this idempotency key was used for an order with other terms")
    deals = await request.app[PG].fetch(
        "SELECT deal_id FROM deals WHERE request_id = $1 OR offer_id = $1 ORDER BY deal_id", order_id
    )
    return json_response(
        {
            "order_id": order_id,
            "side": row["side"],
            "state": row["state"],
            "filled": row["filled"],
            "deal_ids": [deal["deal_id"] for deal in deals],
            "replayed": True,
        }
    )


def _placed(order_id: str, side: str, result: MatchResult) -> web.Response:
    return json_response(
        {
            "order_id": order_id,
            "side": side,
            "resting": result.rested,
            "deals": [_fill_json(fill) for fill in result.fills],
            "stopped_for_funds": result.stopped_for_funds,
        },
        201,
    )


def _refusal(error: Exception) -> Problem:
    if isinstance(error, MarketRefused):
        return Problem(error.status, error.code, error.detail)
    if isinstance(error, InvalidOrder):
        return Problem(422, "invalid_order", str(error), field=error.field)
    if isinstance(error, MatchingError):
        return Problem(422, "refused", str(error))
    # A TypeError or ValueError from terms of the wrong shape: say so, not what Python said.
    return Problem(422, "invalid_order", "the order's terms are malformed")


async def _place(request: web.Request, side: str) -> web.Response:
    """Place an offer or a request order of the caller (``side``), once per Idempotency-Key."""
    caller = await authorized(request, "trade")
    market = request.app[SEAT].market
    if market is None:
        return await _forward(request)
    body = await read_json(request)
    order_id = idempotency_reference(request, caller.account.name)  # the order it places once
    replay = await _replay(request, order_id, caller.account.name, side, body)
    if replay is not None:
        return replay
    if order_id is not None:
        body["offer_id" if side == "offer" else "request_id"] = order_id
    try:
        if side == "offer":
            offer, result = await market.place_offer(caller.account.name, caller.account.address, body)
            placed_id = offer.offer_id
        elif side == "request":
            placed, result = await market.place_request(caller.account.name, body, key_id=caller.key_id)
            placed_id = placed.request_id
        else:
            placed, result = await market.place_package(caller.account.name, body, key_id=caller.key_id)
            placed_id = placed.request_id
    except (MarketRefused, MatchingError, TypeError, ValueError) as error:
        raise _refusal(error) from None
    return _placed(placed_id, "offer" if side == "offer" else "request", result)


@routes.post("/v1/offers")
async def place_offer(request: web.Request) -> web.Response:
    return await _place(request, "offer")


@routes.post("/v1/requests")
async def place_request(request: web.Request) -> web.Response:
    return await _place(request, "request")


@routes.post("/v1/packages")
async def place_package(request: web.Request) -> web.Response:
    """A package (IPs, duration, total traffic, dedicated or shared) as the request it maps onto."""
    return await _place(request, "package")


@routes.delete("/v1/orders/{order_id}")
async def cancel(request: web.Request) -> web.Response:
    caller = await authorized(request, "trade")
    market = request.app[SEAT].market
    if market is None:
        return await _forward(request)
    try:
        await market.cancel(caller.account.name, request.match_info["order_id"][:64])
    except MarketRefused as error:
        raise _refusal(error) from None
    return web.Response(status=204)


@routes.patch("/v1/orders/{order_id}")
async def amend(request: web.Request) -> web.Response:
    """Change an open order: an offer's prices, a request's IPs or max prices (base units)."""
    caller = await authorized(request, "trade")
    market = request.app[SEAT].market
    if market is None:
        return await _forward(request)
    body = await read_json(request)
    order_id = request.match_info["order_id"][:64]
    try:
        result = await market.amend(caller.account.name, order_id, body)
    except (MarketRefused, MatchingError, TypeError, ValueError) as error:
        raise _refusal(error) from None
    return json_response(
        {
            "order_id": order_id,
            "deals": [_fill_json(fill) for fill in result.fills],
            "stopped_for_funds": result.stopped_for_funds,
        }
    )


@routes.get("/v1/orders")
async def list_orders(request: web.Request) -> web.Response:
    caller = await authorized(request)
    limit, cursor = page_params(request, request.app[SETTINGS].page_limit)
    before = _int_cursor(cursor)
    rows = await request.app[PG].fetch(
        """
        SELECT seq, order_id, side, state, filled, terms::text AS terms, created_at FROM market_orders
        WHERE account = $1 AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3
        """,
        caller.account.name,
        before,
        limit,
    )
    items = [
        {
            "order_id": row["order_id"],
            "side": row["side"],
            "state": row["state"],
            "filled": row["filled"],
            "terms": orjson.loads(row["terms"]),
            "created_at": row["created_at"].isoformat(),
        }
        for row in rows
    ]
    next_cursor = encode_cursor([rows[-1]["seq"]]) if len(rows) == limit else None
    return json_response({"items": items, "next_cursor": next_cursor})


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


@routes.get("/v1/orders/{order_id}/pac")
async def order_pac(request: web.Request) -> web.Response:
    """The PAC file URL of one of the caller's request orders, and the proxy user name to use."""
    caller = await authorized(request)
    order_id = request.match_info["order_id"]
    side = await request.app[PG].fetchval(
        "SELECT side FROM market_orders WHERE order_id = $1 AND account = $2",
        order_id[:64],
        caller.account.name,
    )
    if side is None:
        raise Problem(404, "not_found", "no order of yours has this id")
    if side != "request":
        raise Problem(409, "conflict", "an offer has no PAC file: it is for requests and packages")
    settings = request.app[SETTINGS]
    capability = pac.path(settings.jwt_secret, caller.account.name, order_id)
    return json_response(
        {
            "order_id": order_id,
            "pac_url": str(request.url.with_path(capability)),
            "proxy": settings.proxy_address,
            "proxy_username": pac.username(caller.account.name, order_id),
        }
    )


@routes.get("/pac/{account}/{order_id}/{token}.pac")
async def pac_file(request: web.Request) -> web.Response:
    """Public, for browsers: the order's PAC file, to whoever holds its capability URL."""
    account, order_id = request.match_info["account"], request.match_info["order_id"]
    settings = request.app[SETTINGS]
    if not pac.check(settings.jwt_secret, account, order_id, request.match_info["token"]):
        raise Problem(404, "not_found", "no PAC file here")
    found = await request.app[PG].fetchval(
        "SELECT 1 FROM market_orders WHERE order_id = $1 AND account = $2", order_id, account
    )
    if found is None:
        raise Problem(404, "not_found", "no PAC file here")
    return web.Response(
        text=pac.render(settings.proxy_address, account, order_id),
        content_type=pac.CONTENT_TYPE,
        headers={"Cache-Control": "private, max-age=300"},
    )


def _int_cursor(cursor: list[Any] | None) -> int | None:
    if cursor is None:
        return None
    if len(cursor) != 1 or not isinstance(cursor[0], int) or isinstance(cursor[0], bool):
        raise Problem(400, "bad_cursor", "the cursor is not one this API handed out")
    return cursor[0]


def _deal_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "deal_id": row["deal_id"],
        "role": row["role"],
        "state": row["state"],
        "exit_id": row["exit_id"],
        "requester": row["requester"],
        "provider": row["provider"],
        "spot": row["spot"],
        "price_per_gb": amount_json(int(row["price_per_gb"])),
        "price_per_hour": amount_json(int(row["price_per_hour"])),
        "reserve": amount_json(int(row["reserve"])),
        "charge": None if row["charge"] is None else amount_json(int(row["charge"])),
        "commission": None if row["commission"] is None else amount_json(int(row["commission"])),
        "billable_bytes": row["billable_bytes"],
        "created_at": row["created_at"].isoformat(),
    }


_DEAL_COLUMNS = """
    deal_id, state, exit_id, requester, provider, spot, price_per_gb::text, price_per_hour::text,
    reserve::text, charge::text, commission::text, billable_bytes, created_at,
    CASE WHEN requester = $1 THEN 'requester' ELSE 'provider' END AS role
"""


@routes.get("/v1/deals")
async def list_deals(request: web.Request) -> web.Response:
    """The caller's deals, as requester or as provider, newest first."""
    caller = await authorized(request)
    limit, cursor = page_params(request, request.app[SETTINGS].page_limit)
    if cursor is not None and (len(cursor) != 2 or not all(isinstance(part, str) for part in cursor)):
        raise Problem(400, "bad_cursor", "the cursor is not one this API handed out")
    rows = await request.app[PG].fetch(
        f"SELECT {_DEAL_COLUMNS} FROM deals"  # noqa: S608
        " WHERE (requester = $1 OR provider = $1)"
        " AND ($2::text IS NULL OR (created_at, deal_id) < ($2::timestamptz, $3))"
        " ORDER BY created_at DESC, deal_id DESC LIMIT $4",
        caller.account.name,
        None if cursor is None else cursor[0],
        "" if cursor is None else cursor[1],
        limit,
    )
    items = [_deal_json(row) for row in rows]
    last = rows[-1] if len(rows) == limit else None
    next_cursor = None if last is None else encode_cursor([last["created_at"].isoformat(), last["deal_id"]])
    return json_response({"items": items, "next_cursor": next_cursor})


@routes.get("/v1/deals/{deal_id}")
async def get_deal(request: web.Request) -> web.Response:
    caller = await authorized(request)
    pool = request.app[PG]
    row = await pool.fetchrow(
        f"SELECT {_DEAL_COLUMNS} FROM deals WHERE deal_id = $2 AND (requester = $1 OR provider = $1)",  # noqa: S608
        caller.account.name,
        request.match_info["deal_id"][:128],
    )
    if row is None:
        raise Problem(404, "not_found", "you have no deal with this id")
    transitions = await pool.fetch(
        "SELECT from_state, to_state, event, actor, at, detail, noop FROM deal_transitions"
        " WHERE deal_id = $1 ORDER BY id",
        row["deal_id"],
    )
    return json_response({**_deal_json(row), "transitions": [dict(t) for t in transitions]})


@routes.post("/v1/deals/{deal_id}/reports")
async def report_on_deal(request: web.Request) -> web.Response:
    """A party's report on its deal: the provider's ready / serving / stopped, the requester's
    accepted / ok / complaint (a complaint disputes the deal), or cancel before it is active."""
    caller = await authorized(request, "trade")
    market = request.app[SEAT].market
    if market is None:
        return await _forward(request)
    body = await read_json(request)
    what = body.get("report")
    if set(body) != {"report"} or not isinstance(what, str):
        raise Problem(422, "invalid_field", 'send {"report": "..."} and nothing else', field="report")
    try:
        deal = await market.report(caller.account.name, request.match_info["deal_id"][:128], what[:32])
    except MarketRefused as error:
        raise _refusal(error) from None
    return json_response({"deal_id": deal.deal_id, "state": str(deal.state)})


_BILLS = ("gateway", "agent", "lower", "none")


@routes.post("/v1/deals/{deal_id}/resolution")
async def resolve_dispute(request: web.Request) -> web.Response:
    """Operator only: decide a disputed deal — bill the gateway's count, the agent's, the lower
    of the two, nothing, or ``billable_bytes`` — and the market settles it on its next tick."""
    await authorized(request, "operator")
    market = request.app[SEAT].market
    if market is None:
        return await _forward(request)
    body = await read_json(request)
    deal_id = request.match_info["deal_id"][:128]
    if set(body) == {"bill"} and body["bill"] in _BILLS:
        gateway, agent = await store.metered(request.app[PG], deal_id)
        billable = {"gateway": gateway, "agent": agent, "lower": min(gateway, agent), "none": 0}[body["bill"]]
    elif set(body) == {"billable_bytes"} and type(body["billable_bytes"]) is int:
        billable = body["billable_bytes"]
    else:
        raise Problem(
            422,
            "invalid_field",
            'send {"bill": "gateway" | "agent" | "lower" | "none"} or {"billable_bytes": N}',
            field="bill",
        )
    try:
        deal = await market.resolve(deal_id, billable)
    except (MarketRefused, MatchingError) as error:
        raise _refusal(error) from None
    return json_response({"deal_id": deal.deal_id, "state": str(deal.state), "billable_bytes": billable})


@routes.get("/v1/market/depth")
async def depth(request: web.Request) -> web.Response:
    """Public: resting offers with room, by price level, for a country and IP type."""
    unknown = set(request.query) - {"country", "type"}
    if unknown:
        raise Problem(400, "unknown_parameter", f"unknown query parameter {sorted(unknown)[0][:40]!r}")
    market = request.app[SEAT].market
    if market is None:  # the book is in the memory of the market's node
        return await _forward(request)
    try:
        levels = market.depth(request.query.get("country"), request.query.get("type"))
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
    name = request.match_info["name"][:32]
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
        raise Problem(404, "not_found", "no deals are recorded for this account")
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
