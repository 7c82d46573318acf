"""The chain services' retry logs against a real HTTP node that refuses them: the RPC URL, which
can hold an API key, never reaches a log line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web

from billing.anchoring import Anchorer, AnchorSettings
from billing.chain import ChainSettings, ChainWatcher
from billing.operator_node import failure
from billing.withdrawal_sender import SenderSettings, WithdrawalSender

SECRET = "k3y-0f-the-rpc-provider"
KEY = "0x" + "a1" * 32
CONTRACT = "0x" + "cc" * 20


@pytest.fixture
async def rpc_url() -> AsyncIterator[str]:
    """A node that answers every call 401, at a URL with an API key in its path and query."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text="invalid api key")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://user:{SECRET}@127.0.0.1:{port}/v3/{SECRET}?key={SECRET}"
    await runner.cleanup()


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


async def test_failure_call() -> None:
    assert failure(TimeoutError()) == "TimeoutError"
    assert failure(asyncpg.InterfaceError("pool is closed")) == "InterfaceError: pool is closed"


async def test_chain_watcher_run_logs_no_rpc_url(
    pool: asyncpg.Pool, rpc_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    stop.set()  # one poll
    async with ChainWatcher(
        pool, ChainSettings(channels_address=CONTRACT, operator_key=KEY, rpc_url=rpc_url)
    ) as w:
        await w.run(stop)
    assert "chain watcher poll failed, retrying: ClientResponseError (HTTP 401)" in logged(caplog)
    assert SECRET not in logged(caplog)


async def test_withdrawal_sender_run_logs_no_rpc_url(
    pool: asyncpg.Pool, rpc_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    stop.set()  # one round
    settings = SenderSettings(token_address=CONTRACT, operator_key=KEY, rpc_url=rpc_url)
    async with WithdrawalSender(pool, settings) as sender:
        await sender.run(stop)
    assert "withdrawal sender round failed, retrying: ClientResponseError (HTTP 401)" in logged(caplog)
    assert SECRET not in logged(caplog)


async def test_anchorer_run_logs_no_rpc_url(
    pool: asyncpg.Pool, rpc_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    settings = AnchorSettings(anchor_address=CONTRACT, operator_key=KEY, rpc_url=rpc_url, interval=0.01)
    async with Anchorer(pool, settings) as anchorer:
        running = asyncio.create_task(anchorer.run(stop))
        while True:  # a round fails at once; its log line is what this test waits for
            if "anchoring failed" in logged(caplog):
                break
            await asyncio.sleep(0.01)
        stop.set()
        await running
    assert "anchoring failed, retrying: ClientResponseError (HTTP 401)" in logged(caplog)
    assert SECRET not in logged(caplog)
