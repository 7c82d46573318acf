"""One market per deployment, whichever API nodes run.

The market (``matching.market``) keeps the order book in memory and must be the only writer. The
API node that holds a PostgreSQL session advisory lock runs it and announces its address in
Redis; every other node forwards the market's write calls (placing, amending, cancelling orders)
to that address, and keeps trying the lock, so when the leader stops or dies — PostgreSQL
releases a dead session's locks — another node loads the book from the database and takes over
within ``retry`` seconds. A leader that loses its lock connection stops its market at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing.payments import Invoicer, PaymentSettings
from matching.market import Market, MarketSettings

log = logging.getLogger("ipsx.api.leader")

# pg_advisory_lock key of the process that runs the market (one per deployment)
MARKET_LOCK = int.from_bytes(hashlib.sha256(b"ipsx.matching.market").digest()[:8], "big", signed=True)
LEADER_KEY = "ipsx:market:leader"  # string: the leader's API base URL, expiring unless refreshed


def default_advertise_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, with this machine's name when the API listens on every address."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class MarketSeat:
    """This node's place in the market: ``market`` while it leads, ``None`` while it follows."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        advertise_url: str | None,
        *,
        retry: float = 2.0,
        announce_ttl: float = 10.0,
        payments: PaymentSettings | None = None,
        market: MarketSettings | None = None,
    ) -> None:
        self._payments = payments or PaymentSettings()
        self._market_settings = market
        self._pool = pool
        self._redis = redis
        self._url = advertise_url
        self._retry = retry
        self._ttl = announce_ttl
        self.market: Market | None = None
        self.settled = asyncio.Event()  # set once the first attempt at the lock is decided
        self._announcing: asyncio.Task[None] | None = None

    def advertise(self, url: str) -> None:
        """Where the other API nodes reach this one (known once it listens); announced at once
        if this node already runs the market."""
        self._url = url
        if self.market is not None:
            self._announcing = asyncio.get_running_loop().create_task(self._announce())

    async def leader_url(self) -> str | None:
        """Where the market runs now, as its node announced it; ``None`` if nobody announces."""
        if self.market is not None:
            return None  # this node runs it: nothing to forward
        try:
            url = await self._redis.get(LEADER_KEY)
        except RedisError:
            return None
        return url.decode() if isinstance(url, bytes) else None

    async def run(self, stop: asyncio.Event) -> None:
        """Lead when the lock is free, follow otherwise, until ``stop`` is set."""
        following_logged = False
        while not stop.is_set():
            try:
                async with self._pool.acquire() as holder:
                    if await holder.fetchval("SELECT pg_try_advisory_lock($1)", MARKET_LOCK):
                        following_logged = False
                        await self._lead(holder, stop)
                    elif not following_logged:
                        log.info("another API node runs the market; market calls are forwarded to it")
                        following_logged = True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("market leadership check failed (%s); retrying", type(exc).__name__)
            except Exception:  # e.g. the book failed to load: try again rather than never lead
                log.exception("market leadership failed; retrying")
            finally:
                self.settled.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._retry)

    async def _lead(self, holder: asyncpg.Connection, stop: asyncio.Event) -> None:
        market = Market(self._pool, self._redis, self._market_settings)
        await market.load()
        market_stop = asyncio.Event()
        task = asyncio.create_task(market.run(market_stop))
        # The market's node also bills channel-funded requesters and keeps the cut-off list.
        invoicing = asyncio.create_task(Invoicer(self._pool, self._redis, self._payments).run(market_stop))
        self.market = market
        self.settled.set()
        log.info("this API node runs the market (announced as %s)", self._url)
        try:
            while not stop.is_set() and not task.done():
                await self._announce()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(1.0, self._ttl / 3))
                await holder.fetchval("SELECT 1")  # raises once the lock's session is gone
        finally:
            self.market = None
            market_stop.set()
            try:
                await invoicing
            except Exception:
                log.exception("invoicing stopped on an error")
            try:
                await task
            except Exception:  # the market failed: step down; the lock is tried again after retry
                log.exception("the market stopped on an error")
            with contextlib.suppress(Exception):  # the session may be gone, and the lock with it
                await holder.execute("SELECT pg_advisory_unlock($1)", MARKET_LOCK)
            with contextlib.suppress(RedisError):
                if self._url is not None and await self._redis.get(LEADER_KEY) == self._url.encode():
                    await self._redis.delete(LEADER_KEY)
            log.info("this API node no longer runs the market")

    async def _announce(self) -> None:
        if self._url is None:
            return
        try:
            await self._redis.set(LEADER_KEY, self._url, px=int(self._ttl * 1000))
        except RedisError:
            log.warning("could not announce the market leader in Redis")
