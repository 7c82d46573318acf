"""The REST API application: its resources, opened in a cleanup context and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
from aiohttp import web

from billing import db
from dashboard import metrics, openapi
from dashboard.appkeys import HTTP, PG, REDIS, SEAT, SETTINGS
from dashboard.leader import MarketSeat, default_advertise_url
from dashboard.problems import json_response, problems_middleware
from dashboard.remote import parse_network, trusted_proxies_middleware
from dashboard.routes import routes
from dashboard.routes_anchors import routes as anchor_routes
from dashboard.routes_bans import routes as ban_routes
from dashboard.routes_deals import routes as deal_routes
from dashboard.routes_inspect import routes as inspect_routes
from dashboard.routes_market import routes as market_routes
from dashboard.routes_orders import routes as order_routes
from dashboard.routes_payments import payment_settings
from dashboard.routes_payments import routes as payment_routes
from dashboard.routes_reseller_reports import routes as reseller_report_routes
from dashboard.routes_reseller_subusers import routes as reseller_subuser_routes
from dashboard.routes_resellers import routes as reseller_routes
from dashboard.routes_withdrawals import routes as withdrawal_routes
from dashboard.settings import ApiSettings
from dashboard.web import add_web_routes
from ipsx.listen import listening
from matching.market import MarketSettings
from pool.client import redis_from_url

log = logging.getLogger("ipsx.api")


async def _openapi(request: web.Request) -> web.Response:
    return json_response(openapi.document())


def build_app(settings: ApiSettings) -> web.Application:
    """The API application; PostgreSQL and Redis are opened when it starts."""
    if len(settings.jwt_secret.encode()) < 32:
        raise ValueError("the JWT secret must be at least 32 bytes")
    api_metrics = metrics.ApiMetrics()
    middlewares = [metrics.observe(api_metrics), problems_middleware]
    if settings.trusted_proxies:
        networks = [parse_network(text) for text in settings.trusted_proxies]
        # inside observe(), whose clone of the request would not keep the client's address
        middlewares.insert(1, trusted_proxies_middleware(networks))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body)
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[PG] = await db.connect(settings.database_url, min_size=1, max_size=settings.db_pool)
        app[REDIS] = redis_from_url(settings.redis_url)
        app[HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        payments = payment_settings(settings)
        market = MarketSettings(
            spot_duration_s=settings.spot_duration_s, spot_traffic_bytes=settings.spot_traffic_bytes
        )
        app[SEAT] = seat = MarketSeat(
            app[PG], app[REDIS], settings.advertise_url, payments=payments, market=market
        )
        stop = asyncio.Event()
        leading = asyncio.create_task(seat.run(stop)) if settings.market else None
        if leading is not None:  # serve once this node knows whether it runs the market
            await asyncio.wait(
                {leading, asyncio.create_task(seat.settled.wait())}, return_when="FIRST_COMPLETED"
            )
        try:
            yield
        finally:
            stop.set()
            if leading is not None:
                await leading
            await app[HTTP].close()
            await app[REDIS].aclose()
            await app[PG].close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/metrics", metrics.endpoint(api_metrics))
    app.router.add_routes(routes)
    app.router.add_routes(order_routes)
    app.router.add_routes(deal_routes)
    app.router.add_routes(market_routes)
    app.router.add_routes(withdrawal_routes)
    app.router.add_routes(payment_routes)
    app.router.add_routes(anchor_routes)
    app.router.add_routes(ban_routes)
    app.router.add_routes(inspect_routes)
    app.router.add_routes(reseller_routes)
    app.router.add_routes(reseller_subuser_routes)
    app.router.add_routes(reseller_report_routes)
    add_web_routes(app)
    return app


class _BoundSite(web.BaseSite):
    """A site on a server bound before the application started: connections wait in its
    backlog until the site starts serving them."""

    __slots__ = ("_bound",)

    def __init__(self, runner: web.AppRunner, bound: asyncio.Server) -> None:
        super().__init__(runner)
        self._bound = bound

    @property
    def name(self) -> str:
        host, port = self._bound.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._server = self._bound  # closed by the site's stop, at the runner's cleanup
        await self._bound.start_serving()


def _handler(runner: web.AppRunner) -> asyncio.BaseProtocol:
    """A connection's handler, from the runner's server: the bound server accepts connections
    only once the runner is set up."""
    return cast(web.Server, runner.server)()


@contextlib.asynccontextmanager
async def running_api(settings: ApiSettings) -> AsyncIterator[int]:
    """Serve the API; yields the bound port (useful with port 0).

    The port is bound before the application starts (PostgreSQL, Redis, the market seat), so
    an API that cannot listen has started nothing, no market among it: that raises
    :class:`ipsx.listen.ListenError` (for ``--port``).
    """
    runner = web.AppRunner(build_app(settings), access_log=None)
    with listening("--port", settings.host, settings.port):
        bound = await asyncio.get_running_loop().create_server(
            lambda: _handler(runner), settings.host, settings.port, backlog=128, start_serving=False
        )
    try:
        await runner.setup()
    except BaseException:
        bound.close()
        raise
    try:
        await _BoundSite(runner, bound).start()
        port = int(runner.addresses[0][1])
        if not settings.advertise_url:  # other API nodes forward market calls here
            runner.app[SEAT].advertise(default_advertise_url(settings.host, port))
        log.info("API on http://%s:%d (OpenAPI document at /openapi.json)", settings.host, port)
        yield port
    finally:
        await runner.cleanup()
        bound.close()  # already, unless the site never started


async def run_api(settings: ApiSettings, stop: asyncio.Event) -> None:
    async with running_api(settings):
        await stop.wait()
