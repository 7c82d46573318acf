"""Fixtures for the pool tests: a real Redis database, flushed before and after every test.

Redis db 12 by default; ``IPSX_TEST_REDIS_URL`` overrides it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
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


@contextlib.contextmanager
def host_clock(offset: float) -> Iterator[None]:
    """Inside the block this process's wall clock (``time.time``) reads ``offset`` seconds off,
    as another host's may: what the pool writes or judges there is what a skewed host would."""
    real = time.time
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: real() + offset)
        yield
