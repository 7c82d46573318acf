"""Functional tests of the requester front (plain-HTTP forwarding and SOCKS5) against hostile peers.

A real ``Front`` on 127.0.0.1 with a real ``ExitDialer``, ``TunnelHub`` and provider agent (as in
test_tunnel.py, its exit bound to 127.0.0.2); only authentication is a hook answering for alice.
Origins are scripted asyncio servers sending raw bytes; clients are raw sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from billing.accounts import ApiKey
from billing.usage import UsageEvent
from gateway.conn import Listener
from gateway.exits import ExitDialer
from gateway.forward import MAX_INTERIM_RESPONSES
from gateway.front import Front
from pool.select import Selector
from tests.gateway.test_tunnel import NODE, WAIT, agent_starter, running_gateway, until, usage_reports

SECRET = "s3cret"
AUTH = b"Proxy-Authorization: Basic " + base64.b64encode(f"alice:{SECRET}".encode()) + b"\r\n"
HANDSHAKE_TIMEOUT = 1.0


async def authenticate(account: str, password: str) -> ApiKey | None:
    """The credentials hook: alice and her one secret."""
    if account != "alice" or password != SECRET:
        return None
    return ApiKey("k1", 1, "alice", "test", datetime.now(UTC), None)


@dataclass
class Proxy:
    port: int
    redis: Redis


@pytest.fixture
async def proxy(redis: Redis) -> AsyncIterator[Proxy]:
    async with contextlib.AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(running_gateway(redis, handshake_timeout=HANDSHAKE_TIMEOUT))
        start_agent = await stack.enter_async_context(agent_starter(gateway))
        await start_agent()
        hub = gateway.hub
        selector = Selector(redis, NODE, is_available=hub.is_available, load=hub.load, cache_ttl=0.0)
        dialer = ExitDialer(hub, selector, gateway.publisher, node=NODE, max_attempts=1)
        front = Front(gateway.settings, dialer, authenticate)
        listener = Listener(front.handle)
        port = await listener.start("127.0.0.1", 0)
        stack.push_async_callback(listener.close)
        stack.callback(front.abort_all)
        yield Proxy(port, redis)


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def origin(answer: Answer) -> AsyncIterator[int]:
    """An origin on 127.0.0.1 that reads one request head and lets ``answer`` reply."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await answer(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def sending(response: bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response)
        await writer.drain()
        await reader.read()  # until the gateway closes its side

    return answer


async def outcomes(redis: Redis) -> list[str]:
    """The outcomes of the usage events published so far."""
    return [report.outcome for report in await usage_reports(redis) if isinstance(report, UsageEvent)]


async def metered(redis: Redis, *expected: str) -> None:
    await until(lambda: _outcomes_are(redis, list(expected)))


async def _outcomes_are(redis: Redis, expected: list[str]) -> bool:
    return await outcomes(redis) == expected


async def request(proxy: Proxy, data: bytes) -> bytes:
    """Send ``data`` to the front; everything it answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(data)
        async with asyncio.timeout(WAIT):
            return await reader.read()
    finally:
        writer.close()


def get(port: int, path: bytes = b"/") -> bytes:
    return b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (port, path, AUTH)


# interim responses


async def test_interim_responses_are_passed_on_then_capped_with_502(proxy: Proxy) -> None:
    flood = b"HTTP/1.1 100 Continue\r\n\r\n" * 40_000  # ~1 MB of interim heads, no final one
    async with origin(sending(flood)) as port:
        answer = await request(proxy, get(port))
    assert answer.count(b"HTTP/1.1 100 Continue\r\n\r\n") == MAX_INTERIM_RESPONSES
    final = answer.split(b"\r\n\r\n")[MAX_INTERIM_RESPONSES]
    assert final.startswith(b"HTTP/1.1 502 ")
    assert b"X-IPSX-Error: bad_response" in final
    await metered(proxy.redis, "exit_lost")


async def test_interim_responses_below_the_cap_reach_the_client(proxy: Proxy) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" * MAX_INTERIM_RESPONSES
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with origin(sending(interim + final)) as port:
        answer = await request(proxy, get(port).replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))
    assert answer.count(b"HTTP/1.1 100 Continue\r\n\r\n") == MAX_INTERIM_RESPONSES
    assert answer.endswith(b"\r\n\r\nok")
    assert b"HTTP/1.1 200 OK\r\n" in answer


# malformed response framing


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
async def test_response_with_malformed_framing_is_answered_502(
    proxy: Proxy, response: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with origin(sending(response)) as port:
        answer = await request(proxy, get(port))
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"X-IPSX-Error: bad_response\r\n" in answer
    assert b"hello" not in answer
    await metered(proxy.redis, "exit_lost")
    assert [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR] == []


# the next request head on a kept-alive connection


async def test_next_head_begun_must_end_within_the_handshake_timeout(proxy: Proxy) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ok)
        await reader.read()

    async with origin(answer) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(get(port))
            async with asyncio.timeout(WAIT):
                first = await reader.readuntil(b"ok")
            assert first.startswith(b"HTTP/1.1 200 OK\r\n")
            # The keep-alive timeout (60 s) would let this head dribble in for as long as each
            # byte comes within it; once begun, a head has the handshake timeout to end.
            writer.write(get(port)[:30])
            async with asyncio.timeout(WAIT):
                rest = await reader.read()
        finally:
            writer.close()
    assert rest.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_blank_lines_after_a_body_do_not_start_the_next_heads_deadline(proxy: Proxy) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.write(ok)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok)
        await reader.read()

    async with origin(answer) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            # Some clients end a POST body with an extra CRLF, which a server skips before the
            # next request: that is no request begun, so the keep-alive timeout still applies.
            post = (
                get(port).replace(b"GET ", b"POST ", 1).replace(b"\r\n\r\n", b"\r\nContent-Length: 2\r\n\r\n")
            )
            writer.write(post + b"hi\r\n")
            async with asyncio.timeout(WAIT):
                await reader.readuntil(b"ok")
            await asyncio.sleep(2 * HANDSHAKE_TIMEOUT)
            writer.write(get(port))
            async with asyncio.timeout(WAIT):
                again = await reader.readuntil(b"ok")
        finally:
            writer.close()
    assert again.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_next_head_is_served_after_a_quiet_keep_alive(proxy: Proxy) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ok)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok)
        await reader.read()

    async with origin(answer) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(get(port))
            async with asyncio.timeout(WAIT):
                await reader.readuntil(b"ok")
            # The second head in two pieces, the second after the first request's deadline
            # would have passed: a head split across reads is still served.
            second = get(port)
            writer.write(second[:30])
            await writer.drain()
            writer.write(second[30:])
            async with asyncio.timeout(WAIT):
                again = await reader.readuntil(b"ok")
        finally:
            writer.close()
    assert again.startswith(b"HTTP/1.1 200 OK\r\n")


# SOCKS5


async def test_socks5_method_selection_is_sent_before_a_bad_subnegotiation_reply(proxy: Proxy) -> None:
    # A greeting offering username/password, then a CONNECT where the credentials should be,
    # in one packet: the method selection goes out before the refusal.
    connect = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
    answer = await request(proxy, b"\x05\x01\x02" + connect)
    assert answer.startswith(b"\x05\x02")
    assert len(answer) > 2
