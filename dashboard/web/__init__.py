"""The dashboard's web pages, served by the API process: sign-in (wallet, API key, demo), the
requester's pages, the provider's (``/web/provider…``), the white-label reseller's
(``/web/reseller…``) and the operator's (``/web/operator…``), server-rendered with Jinja2, with a
little JavaScript for the live charts and figures (Server-Sent Events from ``/web/live``,
``/web/provider/live``, ``/web/reseller/live`` and ``/web/operator/live``), the operator's world
map, copying, the wallet and the theme toggle.

``add_web_routes(app)`` adds them to the API application built by ``dashboard.app.build_app``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from dashboard.web import (
    live,
    manage,
    operator,
    provider,
    requester,
    reseller,
    reseller_forms,
    signin,
    streams,
)
from dashboard.web.live import LIVE_STOP
from dashboard.web.render import STATIC_DIR, STATIC_ROUTE, page

__all__ = ["add_web_routes"]


@page
async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound(reason="there is no such page")


async def _end_live_streams(app: web.Application) -> None:
    app[LIVE_STOP].set()


def add_web_routes(app: web.Application) -> None:
    """Serve the pages (``/``, ``/signin``, ``/web/…``) and their assets (``/web/static/…``)."""
    app[LIVE_STOP] = asyncio.Event()
    app.on_shutdown.append(_end_live_streams)
    app.router.add_routes(signin.routes)
    app.router.add_routes(requester.routes)
    app.router.add_routes(manage.routes)
    app.router.add_routes(live.routes)
    app.router.add_routes(provider.routes)
    app.router.add_routes(operator.routes)
    app.router.add_routes(streams.routes)
    app.router.add_routes(reseller.routes)
    app.router.add_routes(reseller_forms.routes)
    reseller.install(app)  # the Reseller entry of the navigation, for resellers only
    app.router.add_static("/web/static", STATIC_DIR, name=STATIC_ROUTE, append_version=True)
    app.router.add_route("*", "/web/{tail:.*}", _not_found)  # last: any other /web/ path
