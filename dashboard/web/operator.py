"""The operator's pages, for sessions whose API key has the ``operator`` scope (a wallet session
never has it, as ``dashboard.auth.Principal.require`` rules): the network at a glance (alerts,
live exits on a world map, throughput, errors, the day's top requesters and providers), the order
book's depth with the price index, and the disputes waiting for a decision, which a form resolves
through the same market call as ``POST /v1/deals/{id}/resolution``.
"""

from __future__ import annotations

import re
import time
from typing import Final

from aiohttp import web

from billing import accounts
from dashboard.appkeys import PG, REDIS, SEAT
from dashboard.problems import Problem
from dashboard.web import operator_data as data
from dashboard.web.guard import posted, signed_in, text
from dashboard.web.render import page, redirect, render
from dashboard.web.session import WebSession
from matching import store
from matching.errors import InvalidOrder, MatchingError
from matching.market import MarketRefused
from matching.orders import EXIT_TYPES
from matching.settlement import MAX_BYTES
from pool.health import reports

routes = web.RouteTableDef()

TOP_ROWS: Final = 10
DISPUTE_ROWS: Final = 100
MARKET_ROWS: Final = 60  # (country, type) markets whose depth one page reads at most
_DEAL_ID: Final = re.compile(r"[A-Za-z0-9_]{1,128}", re.ASCII)
_COUNTRY: Final = re.compile(r"[a-z]{2}", re.ASCII)
BILLS: Final = (
    ("lower", "the lower of the two counts"),
    ("gateway", "the gateway's count"),
    ("agent", "the provider agent's count"),
    ("none", "nothing"),
)


async def operator_session(request: web.Request) -> WebSession:
    """The session, which must be an operator's; Problem 403 otherwise."""
    session = await signed_in(request)
    session.principal.require(accounts.OPERATOR)
    return session


@routes.get("/web/operator", name="web-operator")
@page
async def overview(request: web.Request) -> web.StreamResponse:
    session = await operator_session(request)
    pool = request.app[PG]
    exits = await data.live_exits(request)
    health = await reports(request.app[REDIS], [info.exit_id for info in exits])
    countries = data.count_by_country(exits)
    nodes = await data.gateway_nodes(request.app[REDIS])
    now = time.time()
    return render(
        request,
        "operator.html",
        {
            "alerts": await data.alerts(request, exits, health, nodes),
            "nodes": nodes,
            "exits": len(exits),
            "countries": countries,
            "by_type": sorted({info.type for info in exits}),
            "throughput": data.minutes_json(await data.throughput(pool), now),
            "outcomes": await data.outcomes(pool),
            "exit_errors": await data.recent_exit_errors(request.app[REDIS], health),
            "top_requesters": await data.top_requesters(pool, TOP_ROWS),
            "top_providers": await data.top_providers(pool, TOP_ROWS),
        },
        session=session,
    )


def _filter(request: web.Request, name: str, allowed: re.Pattern[str] | frozenset[str]) -> str | None:
    value = request.query.get(name, "").strip().lower()
    if not value:
        return None
    ok = value in allowed if isinstance(allowed, frozenset) else allowed.fullmatch(value) is not None
    if not ok:
        raise Problem(400, "bad_filter", f"{name!r} is not a country code or an IP type we know")
    return value


@routes.get("/web/operator/market", name="web-operator-market")
@page
async def market_page(request: web.Request) -> web.StreamResponse:
    """Depth per market (country and type) with the best prices, the chosen market's price
    levels, and the price index of the last 24 hours."""
    session = await operator_session(request)
    country = _filter(request, "country", _COUNTRY)
    kind = _filter(request, "type", frozenset(EXIT_TYPES))
    markets = await data.offered_markets(request.app[PG])
    summary, levels, unavailable = [], [], None
    try:
        for market_country, market_kind in markets[:MARKET_ROWS]:
            found = await data.depth(request, market_country, market_kind)
            if found:
                offers = sum(count for _, _, count in found)
                summary.append((market_country, market_kind, found[0], offers, len(found)))
        levels = await data.depth(request, country, kind)
    except data.DepthUnavailable as error:
        unavailable = str(error)
    except InvalidOrder as error:
        raise Problem(400, "bad_filter", str(error)) from None
    return render(
        request,
        "operator_market.html",
        {
            "summary": summary,
            "levels": levels,
            "country": country or "",
            "kind": kind or "",
            "types": sorted(EXIT_TYPES),
            "unavailable": unavailable,
            "index": await data.price_index(request.app[PG]),
        },
        session=session,
    )


@routes.get("/web/operator/disputes", name="web-operator-disputes")
@page
async def disputes_page(request: web.Request) -> web.StreamResponse:
    session = await operator_session(request)
    resolved = request.query.get("resolved", "")
    return render(
        request,
        "operator_disputes.html",
        {
            "disputes": await data.disputes(request.app[PG], DISPUTE_ROWS),
            "bills": BILLS,
            "resolved": resolved if _DEAL_ID.fullmatch(resolved) else None,
            "market_here": request.app[SEAT].market is not None,
        },
        session=session,
    )


@routes.post("/web/operator/disputes/{deal_id}/resolve", name="web-operator-resolve")
@page
async def resolve(request: web.Request) -> web.StreamResponse:
    """Decide a disputed deal: bill one meter's count, the lower of the two, nothing, or an
    explicit byte count; the market settles it on its next tick."""
    session, form = await posted(request, accounts.OPERATOR)
    session.principal.require(accounts.OPERATOR)
    deal_id = request.match_info["deal_id"]
    if not _DEAL_ID.fullmatch(deal_id):
        raise Problem(404, "not_found", "no deal has this id")
    market = request.app[SEAT].market
    if market is None:
        raise Problem(
            503,
            "market_elsewhere",
            "another API node runs the market: resolve from its dashboard, or with "
            f"POST /v1/deals/{deal_id}/resolution and an operator key",
        )
    bill = text(form, "bill") or "lower"
    gateway, agent = await store.metered(request.app[PG], deal_id)
    counts = {"gateway": gateway, "agent": agent, "lower": min(gateway, agent), "none": 0}
    if bill == "bytes":
        given = text(form, "billable_bytes", required=True)
        if not (given.isascii() and given.isdigit() and len(given) <= 19 and int(given) <= MAX_BYTES):
            raise Problem(422, "invalid_field", "'billable_bytes' must be a whole number of bytes")
        billable = int(given)
    elif bill in counts:
        billable = counts[bill]
    else:
        raise Problem(422, "invalid_field", "'bill' must be gateway, agent, lower, none or bytes")
    try:
        await market.resolve(deal_id, billable)
    except MarketRefused as error:
        raise Problem(error.status, error.code, error.detail) from None
    except MatchingError as error:
        raise Problem(422, "refused", f"the decision was refused: {error}") from None
    return redirect(f"/web/operator/disputes?resolved={deal_id}")
