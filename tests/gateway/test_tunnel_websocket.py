"""The provider tunnel over WebSocket: agents dial ``ws://`` or ``wss://`` on the tunnel port.

A real ``TunnelHub`` and real ``AgentSession`` agents, as in test_tunnel.py; the hostile clients
are the ``websockets`` library's own asyncio client and raw sockets.
"""

from __future__ import annotations

import asyncio
import os
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account
from redis.asyncio import Redis
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from billing.usage import AgentReport
from gateway import wire, wstunnel
from gateway.agent.session import AgentSession
from gateway.agent.settings import AgentSettings, ExitSpec
from gateway.conn import Conn
from gateway.tunnel import exit_id_for
from tests.gateway.test_tunnel import (
    ALLOW_PRIVATE,
    BIND,
    WAIT,
    Gateway,
    running_gateway,
    ticket,
    until,
    usage_count,
    usage_reports,
)
from tests.tls import self_signed


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed(tmp_path_factory.mktemp("tunnel-wss"), "IP:127.0.0.1")


@pytest.fixture
async def gateway(redis: Redis) -> AsyncIterator[Gateway]:
    async with running_gateway(redis, handshake_timeout=1.0) as gateway:
        yield gateway


@pytest.fixture
async def tls_gateway(redis: Redis, certificate: tuple[Path, Path]) -> AsyncIterator[Gateway]:
    cert, key = certificate
    async with running_gateway(redis, tunnel_cert=str(cert), tunnel_key=str(key)) as gateway:
        yield gateway


def agent_settings(
    gateway: Gateway, *, path: str | None = "/", tls: bool = False, ca_file: str | None = None
) -> AgentSettings:
    return AgentSettings(
        gateway_host="127.0.0.1",
        gateway_port=gateway.port,
        account=Account.create(),
        exits=(ExitSpec(bind=BIND, country="fr"),),
        policy=ALLOW_PRIVATE,
        tls=tls,
        ca_file=ca_file,
        websocket_path=path,
        pool_size=2,
        dial_timeout=5.0,
        handshake_timeout=5.0,
    )


async def echo_through(gateway: Gateway, exit_id: str, echo_port: int, payload: bytes) -> Conn:
    """Open a stream through ``exit_id`` to the echo server and check ``payload`` comes back."""
    conn = await gateway.hub.open_stream(ticket(exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
    conn.write(payload)
    echoed = b""
    async with asyncio.timeout(WAIT):
        while len(echoed) < len(payload):
            chunk = await conn.read()
            assert chunk, "the stream ended early"
            echoed += chunk
    assert echoed == payload
    return conn


async def serving(settings: AgentSettings) -> tuple[AgentSession, asyncio.Task[None]]:
    session = AgentSession(settings)
    await session.login()
    return session, asyncio.create_task(session.serve())


async def stop(session: AgentSession, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await session.close()


async def test_stream_over_ws_is_relayed_half_closed_and_metered(gateway: Gateway, echo_port: int) -> None:
    settings = agent_settings(gateway)
    session, task = await serving(settings)
    try:
        exit_id = exit_id_for(settings.account.address, BIND)
        assert gateway.hub.is_available(exit_id)
        payload = os.urandom(700_000)  # several WebSocket messages each way
        conn = await echo_through(gateway, exit_id, echo_port, payload)
        assert conn.transport is not None
        assert conn.transport.get_extra_info("websocket") is True  # the data connection is a WebSocket
        conn.transport.write_eof()  # an empty message: the echo server sees EOF and closes
        async with asyncio.timeout(WAIT):
            assert await conn.read() == b""
        conn.close()
        gateway.hub.stream_closed(exit_id)
        await until(lambda: usage_count(gateway.redis, 1))
        (report,) = await usage_reports(gateway.redis)
        assert isinstance(report, AgentReport)
        # The agent counts the stream's bytes, not the WebSocket framing around them.
        assert (report.bytes_up, report.bytes_down) == (len(payload), len(payload))
        assert report.outcome == "gateway_closed"
    finally:
        await stop(session, task)


async def test_stream_over_wss(tls_gateway: Gateway, certificate: tuple[Path, Path], echo_port: int) -> None:
    settings = agent_settings(tls_gateway, path="/tunnel", tls=True, ca_file=str(certificate[0]))
    session, task = await serving(settings)
    try:
        exit_id = exit_id_for(settings.account.address, BIND)
        conn = await echo_through(tls_gateway, exit_id, echo_port, os.urandom(100_000))
        assert conn.transport is not None
        assert conn.transport.get_extra_info("websocket") is True
        assert conn.transport.get_extra_info("ssl_object") is not None  # and under it, TLS
        conn.close()
        tls_gateway.hub.stream_closed(exit_id)
    finally:
        await stop(session, task)


async def test_native_and_websocket_agents_share_the_tunnel_port(gateway: Gateway, echo_port: int) -> None:
    native, websocket = agent_settings(gateway, path=None), agent_settings(gateway)
    started = [await serving(native), await serving(websocket)]
    try:
        ids = {exit_id_for(settings.account.address, BIND) for settings in (native, websocket)}
        assert await gateway.registry.live_ids() == ids
        for exit_id in ids:
            conn = await echo_through(gateway, exit_id, echo_port, b"hello")
            conn.close()
            gateway.hub.stream_closed(exit_id)
    finally:
        for session, task in started:
            await stop(session, task)


async def test_agent_at_a_path_the_gateway_does_not_serve_is_told_404(gateway: Gateway) -> None:
    session = AgentSession(agent_settings(gateway, path="/admin"))
    try:
        with pytest.raises(wstunnel.HandshakeFailed, match="404"):
            await session.login()
        assert gateway.hub.links == []
    finally:
        await session.close()


async def raw_exchange(gateway: Gateway, data: bytes) -> bytes:
    """Send ``data`` on a new tunnel connection and read until the gateway closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(data)
        async with asyncio.timeout(WAIT):
            return await reader.read()
    finally:
        writer.close()


# 20 KiB of headers in 20 lines: within the library's limits on lines and headers, past the 16 KiB
# the gateway reads of an upgrade request.
LONG_REQUEST = b"GET / HTTP/1.1\r\n" + (b"X-Pad: " + b"a" * 1000 + b"\r\n") * 20


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", b"426 Upgrade Required"),  # plain HTTP, no upgrade
        (b"GET /\x00 junk\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\n", b"408 Request Timeout"),  # and then nothing: the slow client
        (LONG_REQUEST, b"431 Request Header Fields Too Large"),
        (wstunnel.upgrade_request("/metrics"), b"404 Not Found"),
    ],
)
async def test_bad_upgrades_get_their_http_error_and_the_port_keeps_serving(
    gateway: Gateway, echo_port: int, request_bytes: bytes, status: bytes
) -> None:
    answer = await raw_exchange(gateway, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"Traceback" not in answer
    # Everyone else is still served.
    settings = agent_settings(gateway)
    session, task = await serving(settings)
    try:
        conn = await echo_through(gateway, exit_id_for(settings.account.address, BIND), echo_port, b"ok")
        conn.close()
    finally:
        await stop(session, task)


async def test_a_text_message_is_refused_with_close_1003(gateway: Gateway) -> None:
    async with ws_connect(f"ws://127.0.0.1:{gateway.port}/") as client:
        await client.send('{"t": "hello"}\n')  # the tunnel carries bytes: text is a protocol error
        async with asyncio.timeout(WAIT):
            with pytest.raises(ConnectionClosedError) as closed:
                await client.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1003


async def test_a_message_over_the_limit_is_refused_with_close_1009(gateway: Gateway) -> None:
    async with ws_connect(f"ws://127.0.0.1:{gateway.port}/", max_size=None) as client:
        await client.send(b"x" * (wstunnel.MAX_MESSAGE + 1))
        async with asyncio.timeout(WAIT):
            with pytest.raises(ConnectionClosedError) as closed:
                await client.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_a_frame_announcing_a_huge_payload_is_refused_before_it_arrives(gateway: Gateway) -> None:
    # A masked binary frame claiming 2**40 bytes; nothing follows. The gateway must not wait for it.
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**40) + b"\x00\x00\x00\x00"
    answer = await raw_exchange(gateway, wstunnel.upgrade_request("/") + header)
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    close_frame = answer.partition(b"\r\n\r\n")[2]
    assert close_frame[:1] == b"\x88"  # a close frame …
    assert struct.unpack("!H", close_frame[2:4]) == (1009,)  # … saying: message too big


async def test_no_second_upgrade_inside_a_websocket(gateway: Gateway) -> None:
    async with ws_connect(f"ws://127.0.0.1:{gateway.port}/") as client:
        await client.send(wstunnel.upgrade_request("/"))
        async with asyncio.timeout(WAIT):
            answer = await client.recv()
    assert isinstance(answer, bytes)
    assert wire.decode(answer.rstrip(b"\n")) == {"t": "error", "reason": "not JSON"}


async def test_the_library_client_is_refused_a_path_it_should_not_use(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"ws://127.0.0.1:{gateway.port}/admin"):
            pass
    assert refused.value.response.status_code == 404
    assert refused.value.response.headers["Server"] == wstunnel.SERVER
