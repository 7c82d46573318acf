"""The market's order routes: placing offers, requests and packages (once per Idempotency-Key),
amending, cancelling and listing the caller's orders, and a request order's PAC file — its URL
for the caller, and the public capability URL browsers fetch it from.

Placing, amending and cancelling act on the market, so on a node that does not run it they are
forwarded to the one that does (``market_calls``). Their OpenAPI entries are in ``openapi_orders``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from dashboard import pac
from dashboard.appkeys import PG, SEAT, SETTINGS
from dashboard.market_calls import forward_to_market, refusal_problem
from dashboard.pages import encode_cursor, id_cursor, page_params
from dashboard.path_ids import ORDER_ID, path_id
from dashboard.problems import Problem, json_response, read_json
from dashboard.routes import amount_json, authorized, idempotency_reference
from matching import store
from matching.deals import State
from matching.engine import Fill, MatchResult
from matching.errors import MatchingError
from matching.market import MarketRefused
from matching.terms import package_for, request_for

routes = web.RouteTableDef()

_NO_ORDER = "no order of yours has this id"
_ROUTING_DEALS = (State.PROPOSED, State.ACTIVE)  # deals whose exits serve, or are about to


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
            raise refusal_problem(error) from None
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


async def _place(request: web.Request, side: str) -> web.Response:
    """Place an offer or a request order of the caller (``side``), once per Idempotency-Key."""
    caller = await authorized(request, "trade")
    market = request.app[SEAT].market
    if market is None:
        return await forward_to_market(request)
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
        raise refusal_problem(error) from None
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
    order_id = path_id(request, "order_id", ORDER_ID, _NO_ORDER)
    market = request.app[SEAT].market
    if market is None:
        return await forward_to_market(request)
    try:
        await market.cancel(caller.account.name, order_id)
    except MarketRefused as error:
        raise refusal_problem(error) from None
    return web.Response(status=204)


@routes.patch("/v1/orders/{order_id}")
async def amend(request: web.Request) -> web.Response:
    """Change an open order: an offer's prices, a request's IPs or max prices (base units)."""
    caller = await authorized(request, "trade")
    order_id = path_id(request, "order_id", ORDER_ID, _NO_ORDER)
    market = request.app[SEAT].market
    if market is None:
        return await forward_to_market(request)
    body = await read_json(request)
    limited = caller.key is not None and caller.key.spend_limit is not None
    try:
        result = await market.amend(
            caller.account.name, order_id, body, limited_key=caller.key_id if limited else None
        )
    except (MarketRefused, MatchingError, TypeError, ValueError) as error:
        raise refusal_problem(error) from None
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
    before = id_cursor(cursor)
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


@routes.get("/v1/orders/{order_id}/pac")
async def order_pac(request: web.Request) -> web.Response:
    """The PAC file URL of one of the caller's request orders, and the proxy user name to use."""
    caller = await authorized(request)
    order_id = path_id(request, "order_id", ORDER_ID, _NO_ORDER)
    side = await request.app[PG].fetchval(
        "SELECT side FROM market_orders WHERE order_id = $1 AND account = $2",
        order_id,
        caller.account.name,
    )
    if side is None:
        raise Problem(404, "not_found", _NO_ORDER)
    if side != "request":
        raise Problem(409, "conflict", "an offer has no PAC file: it is for requests and packages")
    settings = request.app[SETTINGS]
    return json_response(
        {
            "order_id": order_id,
            "pac_url": pac.url(settings, request, caller.account.name, order_id),
            "proxy": settings.proxy_address,
            "proxy_username": pac.username(caller.account.name, order_id),
        }
    )


@routes.get("/pac/{account}/{order_id}/{token}.pac")
async def pac_file(request: web.Request) -> web.Response:
    """Public, for browsers: the order's PAC file, to whoever holds its capability URL, while it
    can route anything: the file's user name pins connections to the order's deals, so it is
    served for a request order that is open (deals may still come) or has a live deal, and 404
    once the order is closed and its deals have ended."""
    account, order_id = request.match_info["account"], request.match_info["order_id"]
    settings = request.app[SETTINGS]
    if not pac.check(settings.jwt_secret, account, order_id, request.match_info["token"]):
        raise Problem(404, "not_found", "no PAC file here")
    found = await request.app[PG].fetchval(
        """
        SELECT 1 FROM market_orders o
        WHERE o.order_id = $1 AND o.account = $2 AND o.side = 'request'
          AND (o.state = 'open' OR EXISTS (
                SELECT 1 FROM deals d
                WHERE d.request_id = o.order_id AND d.requester = o.account AND d.state = ANY($3::text[])))
        """,
        order_id,
        account,
        [state.value for state in _ROUTING_DEALS],
    )
    if found is None:
        raise Problem(404, "not_found", "no PAC file here")
    return web.Response(
        text=pac.render(settings.proxy_address, account, order_id),
        content_type=pac.CONTENT_TYPE,
        headers={"Cache-Control": "private, max-age=300"},
    )
