"""Rendering the pages: one Jinja2 environment, the filters the templates use, the headers every
page carries, and the guard that turns any error into a small error page (never a traceback)."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import jinja2
from aiohttp import web

from billing import ledger
from dashboard.problems import REQUEST_ID, Problem
from dashboard.web import session as sessions

log = logging.getLogger("ipsx.web")

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_ROUTE: Final = "web-static"
PageHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Pages load scripts, styles and images from this origin only, and no other site may frame them.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def ipsx(value: int | str | None) -> str:
    """Base units as decimal IPSX ("—" for none)."""
    if value is None:
        return "—"
    return ledger.format_amount(ledger.Amount(int(value)))


def size(value: int | None) -> str:
    """Bytes for people: 1.5 MB, 320 B (decimal units, as per-GB prices count them)."""
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(amount) < 1000 or unit == "TB":
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{value} B"


def when(value: dt.datetime | int | float | None) -> str:
    """A time in UTC, to the second."""
    if value is None:
        return "—"
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromtimestamp(float(value), dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dashboard.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ipsx=ipsx, size=size, when=when, percent=percent)
    return env


ENV: Final = _environment()


def static_url(request: web.Request, filename: str) -> str:
    """A static asset's URL with its content's hash, so browsers may cache it for good."""
    return str(request.app.router[STATIC_ROUTE].url_for(filename=filename))


def render(
    request: web.Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    session: sessions.WebSession | None = None,
) -> web.Response:
    """The page ``template`` with ``context``, the session's account and CSRF token, and the
    security headers."""
    values = {
        "session": session,
        "csrf_field": sessions.CSRF_FIELD,
        "path": request.path,
        "static": functools.partial(static_url, request),
        **(context or {}),
    }
    text = ENV.get_template(template).render(values)
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(location: str) -> web.Response:
    """A 303 to ``location`` (a path of this site)."""
    return web.Response(status=303, headers={"Location": location})


def error_page(
    request: web.Request, status: int, detail: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    session = request.get(sessions.SESSION)
    response = render(
        request,
        "error.html",
        {"status": status, "detail": detail, "request_id": request.get(REQUEST_ID, "")},
        status=status,
        session=session if isinstance(session, sessions.WebSession) else None,
    )
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            response.headers[name] = value
    return response


def page(handler: PageHandler) -> PageHandler:
    """Wrap a page handler so an error becomes an error page with the problem's text: a
    Problem's status and detail, aiohttp's own 4xx, or a 500 that names only the request id."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return error_page(request, problem.status, problem.detail, headers=problem.headers)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return error_page(request, error.status, error.reason)
        except Exception:
            request_id = request.get(REQUEST_ID) or secrets.token_hex(8)
            log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
            return error_page(request, 500, f"the server failed; quote request {request_id}")

    return guarded
