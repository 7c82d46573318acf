"""The requester's read-only pages: overview, usage per day, deals with their exits and spend,
the proxy URL builder, and payment channels. Every query is scoped to the signed-in account."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from billing import channels, payments
from dashboard import pac
from dashboard.appkeys import PG, REDIS, SETTINGS
from dashboard.problems import Problem
from dashboard.web import queries
from dashboard.web.builder import KEYS, SECRET_PLACEHOLDER, BuilderError, build
from dashboard.web.guard import date_cursor, deal_cursor, int_cursor, next_link, signed_in
from dashboard.web.render import page, render
from pool.health import reports
from pool.registry import ExitRegistry

routes = web.RouteTableDef()

PAGE_ROWS = 50  # rows of a table page
DAY_ROWS = 31
HEALTH_ROWS = 200  # live deals whose exits' health one page reads at most
SERIES_SECONDS = 60  # the live chart's window


def series_json(series: list[tuple[int, int, int]], now: int) -> dict[str, list[int]]:
    """The live chart's data: one point per second of the window, zeros where nothing closed."""
    by_second = {second: (streams, size) for second, streams, size in series}
    seconds = list(range(now - SERIES_SECONDS + 1, now + 1))
    return {
        "t": seconds,
        "requests": [by_second.get(second, (0, 0))[0] for second in seconds],
        "bytes": [by_second.get(second, (0, 0))[1] for second in seconds],
    }


@routes.get("/web/overview", name="web-overview")
@page
async def overview(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    pool, name = request.app[PG], session.account.name
    now = int(time.time())
    streams, carried = await queries.usage_today(pool, name)
    return render(
        request,
        "overview.html",
        {
            "balances": await queries.balances(pool, name),
            "spend": await queries.spend(pool, name),
            "streams_today": streams,
            "bytes_today": carried,
            "countries": await queries.live_countries(pool, name),
            "series": series_json(await queries.live_series(pool, name, SERIES_SECONDS), now),
            "proxy_address": request.app[SETTINGS].proxy_address,
        },
        session=session,
    )


@routes.get("/web/usage", name="web-usage")
@page
async def usage(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    days = await queries.usage_days(request.app[PG], session.account.name, date_cursor(request), DAY_ROWS)
    more = next_link(request.path, [days[-1].day.isoformat()] if len(days) == DAY_ROWS else None)
    return render(
        request,
        "usage.html",
        {"days": days, "next": more, "paged": "after" in request.query},
        session=session,
    )


@routes.get("/web/deals", name="web-deals")
@page
async def deals(request: web.Request) -> web.StreamResponse:
    """The requester's deals with the traffic each carried and what it cost; ``?live=1``: only
    the deals that serve now, with their exits' health."""
    session = await signed_in(request)
    live_only = request.query.get("live") == "1"
    rows = await queries.deals(
        request.app[PG],
        session.account.name,
        live_only=live_only,
        after=deal_cursor(request),
        limit=PAGE_ROWS,
    )
    health: dict[str, dict[str, Any]] = {}
    if live_only and rows:
        exit_ids = sorted({row.exit_id for row in rows})[:HEALTH_ROWS]
        health = await reports(request.app[REDIS], exit_ids)
    last = rows[-1] if len(rows) == PAGE_ROWS else None
    more = next_link(
        request.path,
        None if last is None else [last.created_at.isoformat(), last.deal_id],
        live="1" if live_only else "",
    )
    return render(
        request,
        "deals.html",
        {"deals": rows, "live": live_only, "health": health, "next": more, "paged": "after" in request.query},
        session=session,
    )


@routes.get("/web/proxy", name="web-proxy")
@page
async def proxy_builder(request: web.Request) -> web.StreamResponse:
    """The proxy URL builder: targeting choices (GET form) to the exact proxy URL and PAC URL."""
    session = await signed_in(request)
    settings = request.app[SETTINGS]
    name = session.account.name
    live = await ExitRegistry(request.app[REDIS]).list_live()
    options = {
        "country": sorted({info.country for info in live if info.country}),
        "city": sorted({info.city for info in live if info.city}),
        "type": sorted({info.type for info in live if info.type}),
    }
    orders = await queries.open_request_orders(request.app[PG], name, PAGE_ROWS)
    choices = {key: value for key in KEYS if isinstance(value := request.query.get(key, ""), str)}
    for key, offered in options.items():  # a choice no live exit has now stays chosen
        if choices.get(key) and choices[key] not in offered:
            offered.append(choices[key])
    built, error, pac_url = None, None, None
    try:
        built = build(
            name, choices, http_address=settings.proxy_address, socks_address=settings.socks_address
        )
    except BuilderError as refused:
        error = refused
    order = choices.get("order", "")
    if order:
        if not await queries.owns_request_order(request.app[PG], name, order):
            raise Problem(404, "not_found", "no request order of yours has this id")
        pac_url = pac.url(settings, request, name, order)
    return render(
        request,
        "proxy.html",
        {
            "options": options,
            "orders": orders,
            "choices": choices,
            "built": built,
            "error": error,
            "pac_url": pac_url,
            "placeholder": SECRET_PLACEHOLDER,
        },
        status=422 if error else 200,
        session=session,
    )


@routes.get("/web/payments", name="web-payments")
@page
async def payment_state(request: web.Request) -> web.StreamResponse:
    """The account's payment channels (as the chain watcher confirmed them) and its invoices."""
    session = await signed_in(request)
    pool = request.app[PG]
    found = [
        channel
        for role in channels.ROLES
        for channel in await channels.for_account(pool, session.account.id, role)
    ]
    before = int_cursor(request)
    invoices = await payments.listing(pool, account=session.account.name, before=before, limit=PAGE_ROWS)
    more = next_link(request.path, [invoices[-1].invoice_id] if len(invoices) == PAGE_ROWS else None)
    paying = any(channel.role == "requester" for channel in found)
    unpaid = (await payments.unpaid(pool)).get(session.account.name, 0) if paying else 0
    return render(
        request,
        "payments.html",
        {
            "channels": found,
            "invoices": invoices,
            "unpaid": unpaid,
            "next": more,
            "paged": before is not None,
            "payments_on": request.app[SETTINGS].channels_address is not None,
        },
        session=session,
    )
