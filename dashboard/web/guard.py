"""What every signed-in page does first: find the session, check a form's CSRF token and the
session's scope, and read paging and form values without trusting them."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from multidict import MultiDictProxy

from dashboard.pages import encode_cursor, id_cursor, time_cursor
from dashboard.problems import Problem
from dashboard.web import session as sessions
from dashboard.web.session import WebSession

MAX_FIELD = 200  # characters of any one form value
_BAD_CURSOR = "this page link is not one the dashboard made"
T = TypeVar("T")


async def signed_in(request: web.Request, scope: str | None = "read") -> WebSession:
    """The session, whose key must have ``scope`` (Problem 403 otherwise; ``None``: any key, for
    callers that check a scope of their own). A GET without a session is sent to the sign-in
    page, anything else is answered 401."""
    found = await sessions.current(request)
    if found is None:
        if request.method == "GET":
            raise web.HTTPSeeOther("/signin")
        raise Problem(401, "unauthorized", "sign in first")
    if scope is not None:
        require(found, scope)
    return found


async def streaming(request: web.Request, scope: str | None = "read") -> WebSession:
    """An event stream's session, whose key must have ``scope`` (as :func:`signed_in`): Problem
    401 without one (the browser's EventSource cannot follow a redirect to the sign-in page)."""
    found = await sessions.current(request)
    if found is None:
        raise Problem(401, "unauthorized", "sign in first")
    if scope is not None:
        require(found, scope)
    return found


def require(session: WebSession, scope: str) -> None:
    """Problem 403 unless the session's key has ``scope`` (a wallet or demo session has all)."""
    if not session.can(scope):
        raise Problem(403, "insufficient_scope", f"the API key you signed in with lacks the {scope!r} scope")


async def posted(request: web.Request, scope: str) -> tuple[WebSession, MultiDictProxy[str | Any]]:
    """A cookie-authenticated POST: the session, whose CSRF token the form (or the
    ``X-CSRF-Token`` header) must present, and whose key must have ``scope``; and the form."""
    session = await signed_in(request, None)
    form = await request.post()
    presented = form.get(sessions.CSRF_FIELD) or request.headers.get(sessions.CSRF_HEADER)
    sessions.check_csrf(session, presented if isinstance(presented, str) else None)
    require(session, scope)
    return session, form


def text(form: MultiDictProxy[str | Any], name: str, *, required: bool = False) -> str:
    """A form field as stripped text ('' when absent); Problem 422 when too long or required."""
    value = form.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_FIELD or not value.isprintable():
        raise Problem(
            422, "invalid_field", f"{name!r} must be printable text, {MAX_FIELD} characters at most"
        )
    value = value.strip()
    if required and not value:
        raise Problem(422, "invalid_field", f"fill in {name!r}")
    return value


def decimal_units(value: str, name: str, decimals: int) -> int:
    """``"1.5"`` as an integer of ``10**-decimals`` units, exactly; Problem 422 otherwise."""
    whole, _, fraction = value.partition(".")
    if (
        not whole.isascii()
        or not whole.isdigit()
        or (fraction and not (fraction.isascii() and fraction.isdigit()))
        or len(fraction) > decimals
        or len(whole) > 40
    ):
        raise Problem(422, "invalid_field", f"{name!r} must be a decimal number, {decimals} decimals at most")
    units: int = int(whole) * 10**decimals + int(fraction.ljust(decimals, "0") or "0")
    return units


def whole_number(value: str, name: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 12) or not low <= int(value) <= high:
        raise Problem(422, "invalid_field", f"{name!r} must be a whole number from {low} to {high}")
    return int(value)


def cursor_of(request: web.Request) -> list[Any] | None:
    """The page's ``after`` cursor (an opaque token the previous page linked to), or ``None``.
    Problem 400 for anything else, and for a cursor with NUL in a string (PostgreSQL text cannot
    hold one: the query would fail, not find nothing)."""
    raw = request.query.get("after")
    if raw is None:
        return None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        key = None
    if not isinstance(key, list) or len(raw) > 512 or any(isinstance(v, str) and "\x00" in v for v in key):
        raise Problem(400, "bad_cursor", _BAD_CURSOR)
    return key


def deal_cursor(request: web.Request) -> tuple[dt.datetime, str] | None:
    """The ``(created_at, deal_id)`` of a deals page's cursor, by the API's rules
    (:func:`dashboard.pages.time_cursor`), answered with the page's own 400."""
    moment, deal_id = _page_cursor(time_cursor, cursor_of(request))
    return None if moment is None else (moment, deal_id)


def int_cursor(request: web.Request) -> int | None:
    """The row id of a page's cursor, a positive bigint (:func:`dashboard.pages.id_cursor`)."""
    return _page_cursor(id_cursor, cursor_of(request))


def _page_cursor(parse: Callable[[list[Any] | None], T], key: list[Any] | None) -> T:
    try:
        return parse(key)
    except Problem:
        raise Problem(400, "bad_cursor", _BAD_CURSOR) from None


def date_cursor(request: web.Request) -> dt.date | None:
    key = cursor_of(request)
    if key is None:
        return None
    try:
        (day,) = key
        return dt.date.fromisoformat(str(day))
    except (TypeError, ValueError):
        raise Problem(400, "bad_cursor", _BAD_CURSOR) from None


def next_link(path: str, key: list[Any] | None, **query: str) -> str | None:
    """The link to the next page after the row whose sort key is ``key`` (``None``: no next page)."""
    if key is None:
        return None
    extra = "".join(f"&{name}={value}" for name, value in query.items() if value)
    return f"{path}?after={encode_cursor(key)}{extra}"
