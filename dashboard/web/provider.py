"""The provider's pages: its exits online with their health, the traffic they served, earnings per
day and per deal (price, bytes, charge, commission, payout), its offers (place, cancel) and its
payout channels. Every query is scoped to the signed-in account: exits by its wallet address (as
``GET /v1/exits`` filters them), deals and offers by its name.

Offers go through the market as ``POST /v1/offers`` and ``DELETE /v1/orders/{id}`` do
(``Market.place_offer``, ``Market.cancel``), or to the API node that runs it.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

from aiohttp import web

from billing import ledger, payouts
from dashboard.appkeys import PG, REDIS, SEAT
from dashboard.problems import Problem
from dashboard.web import manage
from dashboard.web import provider_data as data
from dashboard.web.guard import (
    date_cursor,
    deal_cursor,
    decimal_units,
    int_cursor,
    next_link,
    posted,
    signed_in,
    text,
    whole_number,
)
from dashboard.web.render import page, redirect, render
from dashboard.web.requester import SERIES_SECONDS, series_json
from dashboard.web.session import WebSession
from matching.errors import MatchingError
from matching.market import MarketRefused, MarketSettings
from matching.orders import MAX_DURATION_S, MAX_SHARED_CAPACITY, MIN_DURATION_S, PROTOCOLS, SHARING
from pool.health import reports
from pool.models import ExitInfo
from pool.registry import ExitRegistry

routes = web.RouteTableDef()

PAGE_ROWS: Final = 50
DAY_ROWS: Final = 31
_ORDER_ID: Final = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
_SCHEDULE: Final = re.compile(r"[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}", re.ASCII)
MAX_DURATIONS: Final = (
    (3600, "1 hour"),
    (86400, "1 day"),
    (7 * 86400, "1 week"),
    (MAX_DURATION_S, "30 days"),
)


async def my_exits(request: web.Request, session: WebSession) -> list[ExitInfo]:
    """The caller's live exits: those its agents declared under its wallet address."""
    live = await ExitRegistry(request.app[REDIS]).list_live()
    return [info for info in live if info.provider == session.account.address]


def commission_bps(request: web.Request) -> int:
    """The market's commission rate (the running market's, else the default it starts with)."""
    market = request.app[SEAT].market
    return (market.settings if market is not None else MarketSettings()).commission_bps


@routes.get("/web/provider", name="web-provider")
@page
async def overview(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    pool, name, address = request.app[PG], session.account.name, session.account.address
    exits = await my_exits(request, session)
    health = await reports(request.app[REDIS], [info.exit_id for info in exits])
    earned = await data.earnings(pool, name)
    days = await data.days(pool, name, date_cursor(request), DAY_ROWS)
    now = int(time.time())
    return render(
        request,
        "provider.html",
        {
            "exits": exits,
            "health": health,
            "traffic": await data.traffic(pool, address),
            "earned": earned,
            "days": days,
            "has_offers": await data.has_offers(pool, name),
            "commission_bps": commission_bps(request),
            "series": series_json(await data.live_series(pool, address, SERIES_SECONDS), now),
            "next": next_link(request.path, [days[-1].day.isoformat()] if len(days) == DAY_ROWS else None),
            "paged": "after" in request.query,
        },
        session=session,
    )


@routes.get("/web/provider/deals", name="web-provider-deals")
@page
async def deals(request: web.Request) -> web.StreamResponse:
    """Earnings per deal: price, bytes, charge, commission and payout of each of its deals."""
    session = await signed_in(request)
    name = session.account.name
    rows = await data.deals(request.app[PG], name, after=deal_cursor(request), limit=PAGE_ROWS)
    last = rows[-1] if len(rows) == PAGE_ROWS else None
    settled = [row for row in rows if row.settled]
    return render(
        request,
        "provider_deals.html",
        {
            "deals": rows,
            "totals": {
                "charge": sum(row.charge or 0 for row in settled),
                "commission": sum(row.commission or 0 for row in settled),
                "payout": sum(row.payout or 0 for row in settled),
                "settled": len(settled),
            },
            "commission_bps": commission_bps(request),
            "next": next_link(
                request.path, None if last is None else [last.created_at.isoformat(), last.deal_id]
            ),
            "paged": "after" in request.query,
        },
        session=session,
    )


def _notice(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "")
    return value if _ORDER_ID.fullmatch(value) else None


@routes.get("/web/provider/offers", name="web-provider-offers")
@page
async def offers_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    before = int_cursor(request)
    rows = await data.offers(request.app[PG], session.account.name, before=before, limit=PAGE_ROWS)
    return render(
        request,
        "provider_offers.html",
        {
            "offers": rows,
            "exits": await my_exits(request, session),
            "protocols": sorted(PROTOCOLS),
            "sharing": sorted(SHARING),
            "max_capacity": MAX_SHARED_CAPACITY,
            "durations": MAX_DURATIONS,
            "placed": _notice(request, "placed"),
            "cancelled": _notice(request, "cancelled"),
            "can_trade": session.can("trade"),
            "next": next_link(request.path, [rows[-1].seq] if len(rows) == PAGE_ROWS else None),
            "paged": before is not None,
        },
        session=session,
    )


def _ipsx(form: Any, name: str) -> int:
    return decimal_units(text(form, name) or "0", name, ledger.DECIMALS)


def offer_terms(form: Any) -> dict[str, Any]:
    """An offer's API terms (``POST /v1/offers``) from the offer form; Problem 422 for a value out
    of range. The market checks the rest (the exit is the caller's and live, the schedule)."""
    protocols = sorted({value for value in form.getall("protocols", []) if value in PROTOCOLS})
    if not protocols:
        raise Problem(422, "invalid_field", "allow at least one protocol")
    sharing = text(form, "sharing") or "both"
    if sharing not in SHARING:
        raise Problem(422, "invalid_field", f"'sharing' must be one of {', '.join(sorted(SHARING))}")
    schedule = text(form, "schedule")
    if schedule and not _SCHEDULE.fullmatch(schedule):
        raise Problem(422, "invalid_field", "'schedule' must be HH:MM-HH:MM in UTC, e.g. 22:00-07:00")
    terms: dict[str, Any] = {
        "exit_id": text(form, "exit_id", required=True),
        "price_per_gb": str(_ipsx(form, "price_per_gb")),
        "price_per_hour": str(_ipsx(form, "price_per_hour")),
        "sharing": sharing,
        "shared_capacity": whole_number(
            text(form, "shared_capacity") or "1", "shared_capacity", 1, MAX_SHARED_CAPACITY
        ),
        "max_duration_s": whole_number(
            text(form, "max_duration_s") or str(MAX_DURATION_S),
            "max_duration_s",
            MIN_DURATION_S,
            MAX_DURATION_S,
        ),
        "protocols": protocols,
    }
    if schedule:
        terms["schedule"] = schedule
    return terms


def _refused(error: Exception) -> Problem:
    if isinstance(error, MarketRefused):
        return Problem(error.status, error.code, error.detail)
    if isinstance(error, MatchingError):
        return Problem(422, "invalid_order", f"the offer was refused: {error}")
    return Problem(422, "invalid_order", "the offer's terms are malformed")


@routes.post("/web/provider/offers", name="web-provider-offers-place")
@page
async def place_offer(request: web.Request) -> web.StreamResponse:
    session, form = await posted(request, "trade")
    terms = offer_terms(form)
    market = request.app[SEAT].market
    if market is None:
        placed = await manage.forward_to_market(request, session, "POST", "/v1/offers", terms)
        return redirect(f"/web/provider/offers?placed={placed['order_id']}")
    try:
        offer, _ = await market.place_offer(session.account.name, session.account.address, terms)
    except (MarketRefused, MatchingError, TypeError, ValueError) as error:
        raise _refused(error) from None
    return redirect(f"/web/provider/offers?placed={offer.offer_id}")


@routes.post("/web/provider/offers/{order_id}/cancel", name="web-provider-offers-cancel")
@page
async def cancel_offer(request: web.Request) -> web.StreamResponse:
    session, _ = await posted(request, "trade")
    order_id = await manage.cancel_own_order(request, session)
    return redirect(f"/web/provider/offers?cancelled={order_id}")


@routes.get("/web/provider/payouts", name="web-provider-payouts")
@page
async def payouts_page(request: web.Request) -> web.StreamResponse:
    """The operator's payout channels to the provider, with the latest balance proof it signed on
    each (what the provider can cash on-chain), against the earnings it has not been promised."""
    session = await signed_in(request)
    pool, name = request.app[PG], session.account.name
    found = await data.payout_channels(pool, session.account.id)
    promised = int(await payouts.promised(pool, name))
    balance = int(await ledger.balance(pool, ledger.provider_account(name)))
    return render(
        request,
        "provider_payouts.html",
        {
            "channels": found,
            "promised": promised,
            "balance": balance,
            "unpromised": max(0, balance - promised),
        },
        session=session,
    )
