"""Fixtures for the billing tests: a real PostgreSQL database and a real Redis database.

The PostgreSQL database is created once per session (``ipsx_test_billing_<pid>``), migrated once,
truncated before every test and dropped at the end. Redis db 9 is flushed before and after every
test. Override the servers with ``IPSX_TEST_DATABASE_ADMIN_URL`` and ``IPSX_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import db
from billing.usage import AgentReport, UsageEvent

ADMIN_URL = os.environ.get("IPSX_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IPSX_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

TABLES = (
    "api_keys",
    "accounts",
    "agent_reports",
    "usage_events",
    "ledger_transfers",
    "ledger_movements",
    "ledger_balances",
    "ledger_holds",
    "withdrawals",
)


def database_url_for(name: str) -> str:
    """The admin URL pointed at database ``name``."""
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


async def create_database(name: str) -> str:
    """(Re)create an empty database and return its URL."""
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url_for(name)


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_and_migrate(name: str) -> str:
    url = await create_database(name)
    pool = await db.connect(url, max_size=2)
    try:
        await db.migrate(pool)
    finally:
        await pool.close()
    return url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of the session's migrated database (sync, so it does not pin an event loop)."""
    name = f"ipsx_test_billing_{os.getpid()}"
    url = asyncio.run(create_and_migrate(name))
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session database, every table emptied first."""
    pool = await db.connect(database_url, max_size=5)
    await pool.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    yield pool
    await pool.close()


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    """An empty, unmigrated database for this test only."""
    name = f"ipsx_test_billing_{os.getpid()}_fresh"
    yield await create_database(name)
    await drop_database(name)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """Redis db 9, flushed before and after the test."""
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def make_event(**overrides: object) -> UsageEvent:
    """A valid gateway usage event; ``overrides`` replace fields."""
    values: dict[str, object] = {
        "event_id": uuid.uuid4().hex,
        "deal_id": "deal-1",
        "requester": "alice",
        "provider": "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB",
        "exit_id": "exit-1",
        "node": "gw-1",
        "protocol": "connect",
        "target": "example.com:443",
        "bytes_up": 1234,
        "bytes_down": 56789,
        "opened_at": 1_764_000_000.25,
        "closed_at": 1_764_000_003.5,
        "outcome": "ok",
        "attempts": 1,
    }
    values.update(overrides)
    return UsageEvent(**values)  # type: ignore[arg-type]


def make_report(**overrides: object) -> AgentReport:
    """A valid provider-agent report; ``overrides`` replace fields."""
    values: dict[str, object] = {
        "event_id": uuid.uuid4().hex,
        "provider": "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB",
        "exit_id": "exit-1",
        "bytes_up": 1234,
        "bytes_down": 56700,
        "opened_at": 1_764_000_000.3,
        "closed_at": 1_764_000_003.4,
        "outcome": "ok",
    }
    values.update(overrides)
    return AgentReport(**values)  # type: ignore[arg-type]
