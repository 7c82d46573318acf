"""What every signed-in page does first: find the session, check a form's CSRF token and the
session's scope, and read paging and form values without trusting them."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiDictProxy

from dashboard.pages import encode_cursor
from dashboard.problems import Problem
from dashboard.web import session as sessions
from dashboard.web.session import WebSession

MAX_FIELD = 200  # characters of any one form value


async def signed_in(request: web.Request) -> WebSession:
    """The session; a GET without one is sent to the sign-in page, anything else is answered 401."""
    found = await sessions.current(request)
    if found is not None:
        return found
    if request.method == "GET":
        raise web.HTTPSeeOther("/signin")
    raise Problem(401, "unauthorized", "sign in first")


async def posted(request: web.Request, scope: str) -> tuple[WebSession, MultiDictProxy[str | Any]]:
    """A cookie-authenticated POST: the session, whose CSRF token the form (or the
    ``X-CSRF-Token`` header) must present, and whose key must have ``scope``; and the form."""
    session = await signed_in(request)
    form = await request.post()
    presented = form.get(sessions.CSRF_FIELD) or request.headers.get(sessions.CSRF_HEADER)
    sessions.check_csrf(session, presented if isinstance(presented, str) else None)
    if not session.can(scope):
        raise Problem(403, "insufficient_scope", f"the API key you signed in with lacks the {scope!r} scope")
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
    """The page's ``after`` cursor (an opaque token the previous page linked to), or ``None``."""
    raw = request.query.get("after")
    if raw is None:
        return None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        key = None
    if not isinstance(key, list) or len(raw) > 512:
        raise Problem(400, "bad_cursor", "this page link is not one the dashboard made")
    return key


def deal_cursor(request: web.Request) -> tuple[dt.datetime, str] | None:
    key = cursor_of(request)
    if key is None:
        return None
    try:
        moment, deal_id = key
        return dt.datetime.fromisoformat(str(moment)), str(deal_id)
    except (TypeError, ValueError):
        raise Problem(400, "bad_cursor", "this page link is not one the dashboard made") from None


def int_cursor(request: web.Request) -> int | None:
    key = cursor_of(request)
    if key is None:
        return None
    if len(key) != 1 or type(key[0]) is not int:
        raise Problem(400, "bad_cursor", "this page link is not one the dashboard made")
    return int(key[0])


def date_cursor(request: web.Request) -> dt.date | None:
    key = cursor_of(request)
    if key is None:
        return None
    try:
        (day,) = key
        return dt.date.fromisoformat(str(day))
    except (TypeError, ValueError):
        raise Problem(400, "bad_cursor", "this page link is not one the dashboard made") from None


def next_link(path: str, key: list[Any] | None, **query: str) -> str | None:
    """The link to the next page after the row whose sort key is ``key`` (``None``: no next page)."""
    if key is None:
        return None
    extra = "".join(f"&{name}={value}" for name, value in query.items() if value)
    return f"{path}?after={encode_cursor(key)}{extra}"
