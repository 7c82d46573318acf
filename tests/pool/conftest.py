"""Fixtures for the pool tests: a real Redis database, flushed before and after every test.

Redis db 12 by default; ``IPSX_TEST_REDIS_URL`` overrides it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from pool.models import ExitInfo

REDIS_URL = os.environ.get("IPSX_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
PROVIDER = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """Redis db 12, flushed before and after the test."""
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def make_exit(exit_id: str, node: str = "n1", **overrides: object) -> ExitInfo:
    """An exit in France on ``node``; ``overrides`` replace attributes."""
    info = ExitInfo(exit_id=exit_id, provider=PROVIDER, node=node, bind="127.0.0.2", country="fr")
    return replace(info, **overrides)  # type: ignore[arg-type]
