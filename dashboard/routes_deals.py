"""The market's deal routes: the caller's deals as requester or provider (a page of them, or one
with its state transitions), a party's reports on its deal, and the operator's resolution of a
disputed one.

Reports and resolutions act on the market, so on a node that does not run it they are forwarded
to the one that does (``market_calls``). Their OpenAPI entries are in ``openapi_deals``; a deal's
on-chain anchor is read in ``routes_anchors``.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from dashboard.appkeys import PG, SEAT, SETTINGS
from dashboard.market_calls import forward_to_market, refusal_problem
from dashboard.pages import encode_cursor, page_params, time_cursor
from dashboard.path_ids import DEAL_ID, path_id
from dashboard.problems import Problem, json_response, read_json
from dashboard.routes import amount_json, authorized
from matching import store
from matching.errors import MatchingError
from matching.market import MarketRefused

routes = web.RouteTableDef()

_NO_DEAL = "you have no deal with this id"


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
    after_time, after_id = time_cursor(cursor)
    rows = await request.app[PG].fetch(
        f"SELECT {_DEAL_COLUMNS} FROM deals"  # noqa: S608
        " WHERE (requester = $1 OR provider = $1)"
        " AND ($2::timestamptz IS NULL OR (created_at, deal_id) < ($2, $3))"
        " ORDER BY created_at DESC, deal_id DESC LIMIT $4",
        caller.account.name,
        after_time,
        after_id,
        limit,
    )
    items = [_deal_json(row) for row in rows]
    last = rows[-1] if len(rows) == limit else None
    next_cursor = None if last is None else encode_cursor([last["created_at"].isoformat(), last["deal_id"]])
    return json_response({"items": items, "next_cursor": next_cursor})


@routes.get("/v1/deals/{deal_id}")
async def get_deal(request: web.Request) -> web.Response:
    caller = await authorized(request)
    deal_id = path_id(request, "deal_id", DEAL_ID, _NO_DEAL)
    pool = request.app[PG]
    row = await pool.fetchrow(
        f"SELECT {_DEAL_COLUMNS} FROM deals WHERE deal_id = $2 AND (requester = $1 OR provider = $1)",  # noqa: S608
        caller.account.name,
        deal_id,
    )
    if row is None:
        raise Problem(404, "not_found", _NO_DEAL)
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
    deal_id = path_id(request, "deal_id", DEAL_ID, _NO_DEAL)
    market = request.app[SEAT].market
    if market is None:
        return await forward_to_market(request)
    body = await read_json(request)
    what = body.get("report")
    if set(body) != {"report"} or not isinstance(what, str):
        raise Problem(422, "invalid_field", 'send {"report": "..."} and nothing else', field="report")
    try:
        deal = await market.report(caller.account.name, deal_id, what[:32])
    except MarketRefused as error:
        raise refusal_problem(error) from None
    return json_response({"deal_id": deal.deal_id, "state": str(deal.state)})


_BILLS = ("gateway", "agent", "lower", "none")


@routes.post("/v1/deals/{deal_id}/resolution")
async def resolve_dispute(request: web.Request) -> web.Response:
    """Operator only: decide a disputed deal — bill the gateway's count, the agent's, the lower
    of the two, nothing, or ``billable_bytes`` — and the market settles it on its next tick."""
    await authorized(request, "operator")
    deal_id = path_id(request, "deal_id", DEAL_ID, "no deal has this id")
    market = request.app[SEAT].market
    if market is None:
        return await forward_to_market(request)
    body = await read_json(request)
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
        raise refusal_problem(error) from None
    return json_response({"deal_id": deal.deal_id, "state": str(deal.state), "billable_bytes": billable})
