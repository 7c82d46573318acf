"""Fixtures for the market's functional tests: a migrated PostgreSQL database of their own
(emptied before every test) and Redis db 7 (flushed)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import db
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
