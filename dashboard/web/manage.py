"""The requester's pages that change things: request orders (place, cancel) and API keys
(create with scopes and a spend limit, revoke). Every POST needs the session's CSRF token and the
scope the REST API asks for the same change (``trade``, ``keys``)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from aiohttp import web

from billing import accounts, ledger
from billing.errors import InvalidAccount
from dashboard import auth
from dashboard.appkeys import HTTP, PG, REDIS, SEAT, SETTINGS
from dashboard.problems import Problem
from dashboard.web import queries
from dashboard.web.builder import build
from dashboard.web.guard import decimal_units, int_cursor, next_link, posted, signed_in, text, whole_number
from dashboard.web.render import page, redirect, render
from dashboard.web.session import WebSession
from matching.errors import InvalidOrder, MatchingError
from matching.market import MarketRefused
from matching.orders import EXIT_TYPES, MAX_DURATION_S, MAX_IPS, MIN_DURATION_S
from pool.registry import ExitRegistry

routes = web.RouteTableDef()

PAGE_ROWS = 50
_ORDER_ID = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
_KEY_ID = re.compile(r"[0-9a-f]{12}", re.ASCII)
_LABEL = re.compile(r"[ -~]{0,100}", re.ASCII)
DURATIONS = ((300, "5 minutes"), (3600, "1 hour"), (86400, "1 day"), (7 * 86400, "1 week"))
PROTOCOLS = ("http", "https", "socks5")


def _notice_id(request: web.Request, name: str, pattern: re.Pattern[str]) -> str | None:
    value = request.query.get(name, "")
    return value if pattern.fullmatch(value) else None


@routes.get("/web/orders", name="web-orders")
@page
async def orders_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    before = int_cursor(request)
    rows = await queries.orders(request.app[PG], session.account.name, before=before, limit=PAGE_ROWS)
    live = await ExitRegistry(request.app[REDIS]).list_live()
    return render(
        request,
        "orders.html",
        {
            "orders": rows,
            "countries": sorted({info.country for info in live if info.country}),
            "types": sorted(EXIT_TYPES),
            "durations": DURATIONS,
            "protocols": PROTOCOLS,
            "placed": _notice_id(request, "placed", _ORDER_ID),
            "cancelled": _notice_id(request, "cancelled", _ORDER_ID),
            "next": next_link(request.path, [rows[-1].seq] if len(rows) == PAGE_ROWS else None),
            "paged": before is not None,
            "can_trade": session.can("trade"),
        },
        session=session,
    )


def order_terms(form: Any) -> dict[str, Any]:
    """A request order's API terms from the order form; Problem 422 for a value out of range."""
    filters: dict[str, Any] = {"protocol": text(form, "protocol") or "http"}
    for name in ("country", "type", "city"):
        value = text(form, name).lower()
        if value:
            filters[name] = value
    gb = decimal_units(text(form, "traffic_gb") or "0", "traffic_gb", 9)
    max_gb = text(form, "max_price_per_gb", required=True)
    max_hour = text(form, "max_price_per_hour") or "0"
    return {
        "filters": filters,
        "ips": whole_number(text(form, "ips") or "1", "ips", 1, MAX_IPS),
        "duration_s": whole_number(
            text(form, "duration_s") or "3600", "duration_s", MIN_DURATION_S, MAX_DURATION_S
        ),
        "traffic_bytes": gb,
        "max_price_per_gb": str(decimal_units(max_gb, "max_price_per_gb", ledger.DECIMALS)),
        "max_price_per_hour": str(decimal_units(max_hour, "max_price_per_hour", ledger.DECIMALS)),
        "rest": form.get("rest") == "on",
        "dedicated": form.get("dedicated") == "on",
    }


def _refused(error: Exception) -> Problem:
    if isinstance(error, MarketRefused):
        return Problem(error.status, error.code, error.detail)
    if isinstance(error, InvalidOrder):
        return Problem(422, "invalid_order", f"the order was refused: {error}")
    if isinstance(error, MatchingError):
        return Problem(422, "refused", f"the order was refused: {error}")
    return Problem(422, "invalid_order", "the order's terms are malformed")


async def forward_to_market(
    request: web.Request, session: WebSession, method: str, path: str, body: Any
) -> Any:
    """A market call passed to the API node that runs the market, as the wallet's session.

    A session opened with an API key cannot be forwarded (the key's secret is not kept), so it
    is answered 503 with what to do instead.
    """
    if session.principal.key is not None:
        raise Problem(
            503,
            "market_elsewhere",
            "another API node runs the market: trade from its dashboard, or sign in with your wallet",
        )
    leader = await request.app[SEAT].leader_url()
    if leader is None:
        raise Problem(503, "market_unavailable", "no API node runs the market right now; try again shortly")
    token = auth.issue_token(request.app[SETTINGS], session.account)
    try:
        async with request.app[HTTP].request(
            method, leader + path, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as answer:
            payload = await answer.json(content_type=None) if answer.status != 204 else None
            if answer.status >= 400:
                detail = payload.get("detail") if isinstance(payload, dict) else None
                raise Problem(answer.status, "refused", str(detail or answer.reason))
            return payload
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise Problem(503, "market_unavailable", "the market's API node did not answer; try again") from None


@routes.post("/web/orders", name="web-orders-place")
@page
async def place_order(request: web.Request) -> web.StreamResponse:
    session, form = await posted(request, "trade")
    terms = order_terms(form)
    market = request.app[SEAT].market
    if market is None:
        placed = await forward_to_market(request, session, "POST", "/v1/requests", terms)
        return redirect(f"/web/orders?placed={placed['order_id']}")
    try:
        order, _ = await market.place_request(session.account.name, terms, key_id=session.principal.key_id)
    except (MarketRefused, MatchingError, TypeError, ValueError) as error:
        raise _refused(error) from None
    return redirect(f"/web/orders?placed={order.request_id}")


@routes.post("/web/orders/{order_id}/cancel", name="web-orders-cancel")
@page
async def cancel_order(request: web.Request) -> web.StreamResponse:
    session, _ = await posted(request, "trade")
    order_id = await cancel_own_order(request, session)
    return redirect(f"/web/orders?cancelled={order_id}")


async def cancel_own_order(request: web.Request, session: WebSession) -> str:
    """Cancel the signed-in account's order (a request or an offer) named in the path, on this
    node's market or through the node that runs it; returns its id. Raises Problem 404 or the
    market's refusal."""
    order_id = request.match_info["order_id"]
    if not _ORDER_ID.fullmatch(order_id):
        raise Problem(404, "not_found", "you have no open order with this id")
    market = request.app[SEAT].market
    if market is None:
        await forward_to_market(request, session, "DELETE", f"/v1/orders/{order_id}", None)
    else:
        try:
            await market.cancel(session.account.name, order_id)
        except MarketRefused as error:
            raise _refused(error) from None
    return order_id


@routes.get("/web/keys", name="web-keys")
@page
async def keys_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request, "keys")  # as GET /v1/keys
    keys = [
        key
        for key in await accounts.list_keys(request.app[PG], session.account.name)
        if session.principal.manages(key.key_id)
    ]
    return render(
        request,
        "keys.html",
        {
            "keys": sorted(keys, key=lambda key: (key.revoked_at is not None, key.created_at), reverse=False),
            "grantable": _grantable(session),
            "revoked": _notice_id(request, "revoked", _KEY_ID),
            "session_key": session.principal.key_id,
        },
        session=session,
    )


def _grantable(session: WebSession) -> list[str]:
    """The scopes a new key may have: a key session grants at most its own key's."""
    own = session.principal.key.scopes if session.principal.key else accounts.GRANTABLE
    return sorted(accounts.GRANTABLE & own)


@routes.post("/web/keys", name="web-keys-create")
@page
async def create_key(request: web.Request) -> web.StreamResponse:
    """A new key; its secret is on this answer only (never in a URL, never stored)."""
    session, form = await posted(request, "keys")
    label = text(form, "label")
    if not _LABEL.fullmatch(label):
        raise Problem(422, "invalid_field", "the label must be printable ASCII")
    scopes = [value for value in form.getall("scopes", []) if isinstance(value, str)]
    if not scopes:
        raise Problem(422, "invalid_field", "pick at least one scope")
    if not set(scopes) <= set(_grantable(session)):
        raise Problem(403, "insufficient_scope", "a key cannot make a key with scopes it lacks")
    limit_text = text(form, "spend_limit")
    limit = None if not limit_text else decimal_units(limit_text, "spend_limit", ledger.DECIMALS)
    try:
        new = await accounts.create_key(
            request.app[PG],
            account_name=session.account.name,
            label=label,
            scopes=frozenset(scopes),
            spend_limit=limit,
            parent=session.principal.key,
        )
    except InvalidAccount as error:
        raise Problem(422, "invalid_field", f"{error.field}: {error.reason}") from None
    settings = request.app[SETTINGS]
    proxy = build(
        session.account.name, {}, http_address=settings.proxy_address, socks_address=settings.socks_address
    )
    return render(
        request,
        "key_created.html",
        {
            "key": new.key,
            "secret": new.secret,
            "proxy_url": proxy.http_url(new.secret),
        },
        status=201,
        session=session,
    )


@routes.post("/web/keys/{key_id}/revoke", name="web-keys-revoke")
@page
async def revoke_key(request: web.Request) -> web.StreamResponse:
    session, _ = await posted(request, "keys")
    key_id = request.match_info["key_id"]
    if (
        not _KEY_ID.fullmatch(key_id)
        or not session.principal.manages(key_id)
        or not await accounts.revoke_key(request.app[PG], key_id, account_id=session.account.id)
    ):
        raise Problem(404, "not_found", "no live key of yours has this id")
    return redirect(f"/web/keys?revoked={key_id}")
