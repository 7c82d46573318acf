"""The white-label reseller's pages (``/web/reseller…``), for accounts that are resellers: its
sub-users with their month against their limits (updated live), one sub-user's balance, keys and
usage per day, the markup it earned per day, and its brand, markup and endpoint. The forms that
change them are in ``dashboard.web.reseller_forms``.

Every page answers 403 to an account that is no reseller, and reads only the signed-in reseller's
sub-users: a sub-user is looked up by name among them (``billing.resellers.get_subuser``), so
another reseller's sub-user is a 404 here. Reading needs the session's ``read`` scope, as
``GET /v1/reseller/*`` does.

The main navigation shows the Reseller entry to resellers only: :func:`install` adds a middleware
that looks the signed-in account up once per page and a template global that reads the answer.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import secrets
from typing import Any, Final
from urllib.parse import quote

import asyncpg
from aiohttp import web

from billing import reseller_terms, resellers
from billing.resellers import Reseller, Subuser
from dashboard.appkeys import PG, SETTINGS
from dashboard.problems import Problem
from dashboard.web import queries
from dashboard.web import reseller_data as data
from dashboard.web import session as sessions
from dashboard.web.guard import cursor_of, date_cursor, next_link, require, signed_in, streaming
from dashboard.web.render import ENV, ipsx, page, render
from dashboard.web.session import WebSession
from dashboard.web.streams import _stream
from matching.settlement import MAX_MARKUP_BPS

log = logging.getLogger("ipsx.web")

routes = web.RouteTableDef()

PAGE_ROWS: Final = 50
DAY_ROWS: Final = 31
LIVE_MIN_INTERVAL: Final = 2.0  # seconds: each event reads every sub-user of the page
NAME: Final = re.compile(r"[a-z0-9_]{1,32}", re.ASCII)
KEY_ID: Final = re.compile(r"[0-9a-f]{12}", re.ASCII)
STATES: Final = re.compile(r"suspended|resumed", re.ASCII)
TRANSFER_NOTICES: Final = {
    "to-subuser": "Funds moved to the sub-user's balance.",
    "to-reseller": "Funds moved back to your balance.",
    "replayed": "This transfer was made already; nothing moved twice.",
}


async def reseller_session(request: web.Request, scope: str = "read") -> tuple[WebSession, Reseller]:
    """The session, whose account must be a reseller (Problem 403 ``not_a_reseller``) and whose
    key must have ``scope``."""
    session = await signed_in(request, None)  # the reseller check answers first
    return session, await reseller_of(request, session, scope)


async def reseller_of(request: web.Request, session: WebSession, scope: str) -> Reseller:
    reseller = await resellers.reseller_of(request.app[PG], session.account.id)
    if reseller is None:
        raise Problem(403, "not_a_reseller", "this account is not a white-label reseller")
    require(session, scope)
    return reseller


async def own_subuser(request: web.Request, reseller: Reseller) -> Subuser:
    """The reseller's sub-user named in the path; Problem 404 for any other name."""
    name = request.match_info["name"]
    if NAME.fullmatch(name):
        try:
            return await resellers.get_subuser(request.app[PG], reseller.account_id, name)
        except resellers.UnknownSubuser:
            pass
    raise Problem(404, "not_found", "you have no sub-user by this name")


def _name_cursor(request: web.Request) -> str | None:
    key = cursor_of(request)
    if key is None:
        return None
    if len(key) != 1 or not isinstance(key[0], str) or not NAME.fullmatch(key[0]):
        raise Problem(400, "bad_cursor", "this page link is not one the dashboard made")
    return key[0]


def _notice(request: web.Request, name: str, pattern: re.Pattern[str]) -> str | None:
    value = request.query.get(name, "")
    return value if pattern.fullmatch(value) else None


async def _page_rows(
    request: web.Request, reseller: Reseller, after: str | None
) -> tuple[list[Subuser], data.Month, list[data.SubuserRow]]:
    pool = request.app[PG]
    now = dt.datetime.now(dt.UTC)
    subs = await resellers.list_subusers(pool, reseller.account_id, after=after, limit=PAGE_ROWS)
    usage = await data.month_usage(pool, reseller.account_id, now)  # all of them: the totals too
    return subs, data.month_totals(now, usage.values()), await data.subuser_rows(pool, subs, usage, now)


@routes.get("/web/reseller", name="web-reseller")
@page
async def subusers_page(request: web.Request) -> web.StreamResponse:
    """The sub-users with their month so far, the form that makes one, and the month's totals."""
    session, reseller = await reseller_session(request)
    pool = request.app[PG]
    after = _name_cursor(request)
    subs, month, rows = await _page_rows(request, reseller, after)
    live_url = "/web/reseller/live" + ("" if after is None else "?after=" + quote(request.query["after"]))
    return render(
        request,
        "reseller.html",
        {
            "reseller": reseller,
            "endpoint": data.endpoint(reseller, request.app[SETTINGS].proxy_address),
            "funds": await data.funds(pool, reseller),
            "earned": int(await reseller_terms.markup_earned(pool, reseller.account_id)),
            "month": month,
            "rows": rows,
            "live_url": live_url,
            "suspended": _notice(request, "suspended", NAME),
            "resumed": _notice(request, "resumed", NAME),
            "can_manage": session.can("keys"),
            "next": next_link(request.path, [subs[-1].name] if len(subs) == PAGE_ROWS else None),
            "paged": after is not None,
        },
        session=session,
    )


@routes.get("/web/reseller/subusers/{name}", name="web-reseller-subuser")
@page
async def subuser_page(request: web.Request) -> web.StreamResponse:
    """One sub-user: its month against its limits, balance, keys and usage per day, and the
    forms that set its limits, suspend or resume it, fund it and make or revoke its keys."""
    session, reseller = await reseller_session(request)
    sub = await own_subuser(request, reseller)
    pool = request.app[PG]
    now = dt.datetime.now(dt.UTC)
    usage = await data.month_usage(pool, reseller.account_id, now, [sub.name])
    (row,) = await data.subuser_rows(pool, [sub], usage, now)
    before = date_cursor(request)
    days = await data.subuser_days(pool, reseller.account_id, sub, before, DAY_ROWS)
    can_manage = session.can("keys")
    keys = await resellers.list_subuser_keys(pool, reseller.account_id, sub.name) if can_manage else []
    transfer = request.query.get("transfer", "")
    return render(
        request,
        "reseller_subuser.html",
        {
            "reseller": reseller,
            "sub": sub,
            "row": row,
            "quota_gb": data.gigabytes(sub.quota_bytes),
            "spend_limit": "" if sub.spend_limit is None else ipsx(sub.spend_limit),
            "balances": await queries.balances(pool, sub.account_name),
            "funds": await data.funds(pool, reseller),
            "days": days,
            "keys": sorted(keys, key=lambda key: (key.revoked_at is not None, key.created_at)),
            "scopes": sorted(resellers.SUBUSER_SCOPES),
            "default_scopes": resellers.DEFAULT_SUBUSER_SCOPES,
            "reference": "w" + secrets.token_hex(16),  # a re-sent funding form moves nothing twice
            "endpoint": data.endpoint(reseller, request.app[SETTINGS].proxy_address),
            "saved": request.query.get("saved") == "limits",
            "state_notice": _notice(request, "state", STATES),
            "transfer_notice": TRANSFER_NOTICES.get(transfer),
            "revoked": _notice(request, "revoked", KEY_ID),
            "can_manage": can_manage,
            "can_fund": session.can("trade"),
            "next": next_link(request.path, [days[-1].day.isoformat()] if len(days) == DAY_ROWS else None),
            "paged": before is not None,
        },
        session=session,
    )


@routes.get("/web/reseller/earnings", name="web-reseller-earnings")
@page
async def earnings_page(request: web.Request) -> web.StreamResponse:
    """The markup the reseller earned: in all, this month per sub-user, and per day."""
    session, reseller = await reseller_session(request)
    pool = request.app[PG]
    before = date_cursor(request)
    days = await data.markup_days(pool, reseller.account_id, before=before, limit=DAY_ROWS)
    now = dt.datetime.now(dt.UTC)
    usage = await data.month_usage(pool, reseller.account_id, now)
    return render(
        request,
        "reseller_earnings.html",
        {
            "reseller": reseller,
            "earned": int(await reseller_terms.markup_earned(pool, reseller.account_id)),
            "funds": await data.funds(pool, reseller),
            "month": data.month_totals(now, usage.values()),
            "by_subuser": [row for row in usage.values() if row.markup_due or row.charged],
            "days": days,
            "next": next_link(request.path, [days[-1].day.isoformat()] if len(days) == DAY_ROWS else None),
            "paged": before is not None,
        },
        session=session,
    )


@routes.get("/web/reseller/settings", name="web-reseller-settings")
@page
async def settings_page(request: web.Request) -> web.StreamResponse:
    """The brand and markup (a form changes them) and the endpoint (the operator's to change)."""
    session, reseller = await reseller_session(request)
    return render(
        request,
        "reseller_settings.html",
        {
            "reseller": reseller,
            "endpoint": data.endpoint(reseller, request.app[SETTINGS].proxy_address),
            "max_markup_bps": MAX_MARKUP_BPS,
            "saved": request.query.get("saved") == "1",
            "can_manage": session.can("keys"),
        },
        session=session,
    )


def _amount(value: int) -> dict[str, str]:
    return {"base_units": str(value), "ipsx": ipsx(value)}


async def live_snapshot(request: web.Request, reseller: Reseller, after: str | None) -> dict[str, Any]:
    """What one ``reseller`` event carries: the month's totals, the reseller's earnings and
    balances, and each sub-user of the page that starts after ``after``."""
    pool = request.app[PG]
    _, month, rows = await _page_rows(request, reseller, after)
    found = await data.funds(pool, reseller)
    return {
        "at": int(dt.datetime.now(dt.UTC).timestamp()),
        "month": {
            "label": month.label,
            "streams": month.streams,
            "bytes": month.bytes,
            "charged": _amount(month.charged),
            "markup": _amount(month.markup),
        },
        "earned": _amount(int(await reseller_terms.markup_earned(pool, reseller.account_id))),
        "funds": {"available": _amount(found.available), "earnings": _amount(found.earnings)},
        "subusers": {
            row.sub.name: {
                "streams": row.streams,
                "used_bytes": row.used_bytes,
                "spent": _amount(row.spent),
                "standing": row.standing,
            }
            for row in rows
        },
    }


@routes.get("/web/reseller/live", name="web-reseller-live")
async def live(request: web.Request) -> web.StreamResponse:
    """``reseller`` events for the sub-users page (``?after=`` as the page's own cursor)."""
    session = await streaming(request, None)  # the reseller check answers first
    reseller = await reseller_of(request, session, "read")
    after = _name_cursor(request)
    interval = max(request.app[SETTINGS].web_live_interval, LIVE_MIN_INTERVAL)
    return await _stream(
        request, session, "reseller", lambda: live_snapshot(request, reseller, after), interval
    )


# -- the navigation entry ----------------------------------------------------------------------

# Whether the page being handled is a reseller's (set by nav_middleware for each /web/ request).
_SHOW_NAV: Final = contextvars.ContextVar("ipsx_web_reseller_nav", default=False)


def reseller_nav() -> bool:
    """The template global ``reseller_nav()``: whether the main navigation shows Reseller."""
    return _SHOW_NAV.get()


def _decorated(path: str) -> bool:
    return path.startswith("/web/") and not path.startswith("/web/static/") and not path.endswith("/live")


@web.middleware
async def nav_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Look the signed-in account up as a reseller before a page is rendered."""
    shown = False
    if _decorated(request.path):
        try:
            session = await sessions.current(request)
            shown = session is not None and (
                await resellers.reseller_of(request.app[PG], session.account.id) is not None
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.debug("no reseller lookup for the navigation of %s", request.path)  # the page reports it
    token = _SHOW_NAV.set(shown)
    try:
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        _SHOW_NAV.reset(token)


def install(app: web.Application) -> None:
    """Add the reseller's navigation lookup to ``app`` (before it starts) and the pages' global."""
    app.middlewares.append(nav_middleware)
    ENV.globals["reseller_nav"] = reseller_nav
