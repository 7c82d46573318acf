"""Fixtures shared by the gateway's functional tests: the test Redis, a local echo server, and a
tunnel endpoint speaking TLS with a self-signed certificate."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.gateway.test_tunnel import Gateway, running_gateway
from tests.tls import self_signed

REDIS_URL = os.environ.get("IPSX_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A local server echoing every byte until EOF, then closing."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed(tmp_path_factory.mktemp("tunnel-tls"), "IP:127.0.0.1")


@pytest.fixture
async def tls_gateway(redis: Redis, certificate: tuple[Path, Path]) -> AsyncIterator[Gateway]:
    """A tunnel endpoint with ``certificate`` (agents dial it with ``tls://`` or ``wss://``)."""
    cert, key = certificate
    async with running_gateway(redis, tunnel_cert=str(cert), tunnel_key=str(key)) as gateway:
        yield gateway
