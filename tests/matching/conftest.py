"""Fixtures for the market's functional tests: a migrated PostgreSQL database of their own
(emptied before every test), Redis db 7 (flushed), and a loaded market on both with its own
clock, a provider ``bob`` and a funded requester ``alice``; helpers to put exits online and
offer them."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import db, ledger
from billing.accounts import create_account
from billing.ledger import TREASURY, Amount, transfer
from matching.market import Market, MarketSettings
from pool.models import ExitInfo
from pool.registry import ExitRegistry
from tests.billing.conftest import create_and_migrate, drop_database

REDIS_URL = os.environ.get("IPSX_TEST_MARKET_REDIS_URL", "redis://127.0.0.1:6379/7")


@pytest.fixture(scope="session")
def market_database_url() -> Iterator[str]:
    name = f"ipsx_test_market_{os.getpid()}"
    url = asyncio.run(create_and_migrate(name))
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture
async def pg(market_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.connect(market_database_url, max_size=6)
    tables = await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
    )
    await pool.execute(f"TRUNCATE {', '.join(row['tablename'] for row in tables)} RESTART IDENTITY CASCADE")
    yield pool
    await pool.close()


@pytest.fixture
async def rds() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


IPSX = 10**18
PROVIDER_ADDRESS = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
REQUESTER_ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
GB = 10**9


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def online(rds: Redis, exit_id: str, country: str = "fr", provider: str = PROVIDER_ADDRESS) -> ExitInfo:
    info = ExitInfo(exit_id=exit_id, provider=provider, node="n1", bind="127.0.0.2", country=country)
    await ExitRegistry(rds).register([info])
    return info


async def offline(rds: Redis, info: ExitInfo) -> None:
    await ExitRegistry(rds).deregister("n1", [info])


@pytest.fixture
async def market(pg: asyncpg.Pool, rds: Redis) -> Market:
    await create_account(pg, address=PROVIDER_ADDRESS, name="bob")
    await create_account(pg, address=REQUESTER_ADDRESS, name="alice")
    await transfer(
        pg, debit=TREASURY, credit=ledger.requester_account("alice"), amount=Amount(10 * IPSX), kind="credit"
    )
    m = Market(pg, rds, MarketSettings(settle_grace=5, ready_timeout=60), clock=Clock())
    await m.load()
    return m


def clock(market: Market) -> Clock:
    return market._clock  # type: ignore[return-value]


REQUEST = {
    "filters": {"country": "fr", "protocol": "https"},
    "ips": 1,
    "duration_s": 600,
    "traffic_bytes": GB,
    "max_price_per_gb": str(2 * IPSX),
    "max_price_per_hour": "0",
}


async def offer(market: Market, exit_id: str, price_gb: int = IPSX, **extra: object) -> str:
    placed, _ = await market.place_offer(
        "bob", PROVIDER_ADDRESS, {"exit_id": exit_id, "price_per_gb": str(price_gb), **extra}
    )
    return placed.offer_id


@contextlib.asynccontextmanager
async def refused(pg: asyncpg.Pool, table: str, operation: str) -> AsyncIterator[None]:
    """PostgreSQL refuses every ``operation`` (INSERT, UPDATE) on ``table`` inside the block, as a
    write failing for real at that point would (a trigger that raises)."""
    await pg.execute(
        "CREATE OR REPLACE FUNCTION ipsx_test_refuse() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
    )
    await pg.execute(
        f"CREATE TRIGGER ipsx_test_refuse BEFORE {operation} ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION ipsx_test_refuse()"
    )
    try:
        yield
    finally:
        await pg.execute(f"DROP TRIGGER IF EXISTS ipsx_test_refuse ON {table}")
