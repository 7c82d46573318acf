"""The REST API application: its resources, opened in a cleanup context and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from billing import db
from dashboard import openapi
from dashboard.appkeys import MARKET, PG, REDIS, SETTINGS
from dashboard.problems import json_response, problems_middleware
from dashboard.routes import routes
from dashboard.routes_market import routes as market_routes
from dashboard.settings import ApiSettings
from matching.market import Market
from pool.client import redis_from_url

# pg_advisory_lock key of the process that runs the market (one per deployment)
MARKET_LOCK = int.from_bytes(hashlib.sha256(b"ipsx.matching.market").digest()[:8], "big", signed=True)

log = logging.getLogger("ipsx.api")


async def _openapi(request: web.Request) -> web.Response:
    return json_response(openapi.document())


def build_app(settings: ApiSettings) -> web.Application:
    """The API application; PostgreSQL and Redis are opened when it starts."""
    if len(settings.jwt_secret.encode()) < 32:
        raise ValueError("the JWT secret must be at least 32 bytes")
    app = web.Application(middlewares=[problems_middleware], client_max_size=settings.max_body)
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[PG] = await db.connect(settings.database_url, min_size=1, max_size=settings.db_pool)
        app[REDIS] = redis_from_url(settings.redis_url)
        try:
            if settings.market:
                async with _market(app[PG], app[REDIS]) as market:
                    if market is not None:
                        app[MARKET] = market
                    yield
            else:
                yield
        finally:
            await app[REDIS].aclose()
            await app[PG].close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_routes(routes)
    app.router.add_routes(market_routes)
    return app


@contextlib.asynccontextmanager
async def _market(pool: asyncpg.Pool, redis: Redis) -> AsyncIterator[Market | None]:
    """Run the market here if no other process does (a session advisory lock says who does)."""
    async with pool.acquire() as holder:
        if not await holder.fetchval("SELECT pg_try_advisory_lock($1)", MARKET_LOCK):
            log.warning("another process runs the market; this API node answers market calls with 503")
            yield None
            return
        market = Market(pool, redis)
        await market.load()
        stop = asyncio.Event()
        task = asyncio.create_task(market.run(stop))
        try:
            yield market
        finally:
            stop.set()
            await task
            await holder.execute("SELECT pg_advisory_unlock($1)", MARKET_LOCK)


@contextlib.asynccontextmanager
async def running_api(settings: ApiSettings) -> AsyncIterator[int]:
    """Serve the API; yields the bound port (useful with port 0)."""
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        server = site._server
        port = settings.port
        if isinstance(server, asyncio.Server) and server.sockets:
            port = int(server.sockets[0].getsockname()[1])
        log.info("API on http://%s:%d (OpenAPI document at /openapi.json)", settings.host, port)
        yield port
    finally:
        await runner.cleanup()


async def run_api(settings: ApiSettings, stop: asyncio.Event) -> None:
    async with running_api(settings):
        await stop.wait()
