"""The provider tunnel over WebSocket: agents dial ``ws://`` or ``wss://`` on the tunnel port.

A real ``TunnelHub`` and real ``AgentSession`` agents, as in test_tunnel.py; the hostile clients
are the ``websockets`` library's own asyncio client and raw sockets.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
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
from gateway import wire, ws_handshake, wstunnel
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


@pytest.fixture
async def gateway(redis: Redis) -> AsyncIterator[Gateway]:
    async with running_gateway(redis, handshake_timeout=1.0) as gateway:
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


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, key: bytes | None = b"k3y!"
) -> bytes:
    """One WebSocket frame as a client sends it (masked with ``key``, unless None)."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        header = bytes((first, size | (0x80 if key else 0)))
    else:
        header = struct.pack("!BBQ", first, 127 | (0x80 if key else 0), size)
    if key is None:
        return header + payload
    return header + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def server_frames(answer: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames after the gateway's 101 response."""
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), answer[:80]
    data = answer.partition(b"\r\n\r\n")[2]
    frames = []
    while data:
        opcode, size, at = data[0] & 0x0F, data[1] & 0x7F, 2
        if size == 126:
            size, at = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, at = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[at : at + size]))
        data = data[at + size :]
    return frames


@pytest.mark.parametrize(
    "bad",
    [
        frame(0x2, b"x", rsv=0x40),  # a reserved bit (no extension was agreed)
        frame(0x2, b"x", key=None),  # a client frame must be masked
        frame(0x9, b"p" * 126),  # a control frame's payload is 125 bytes at most
        frame(0x9, b"p", fin=False),  # and never fragmented
        frame(0x3, b"x"),  # an opcode RFC 6455 does not define
    ],
)
async def test_a_frame_breaking_the_protocol_is_refused_with_close_1002(gateway: Gateway, bad: bytes) -> None:
    answer = await raw_exchange(gateway, wstunnel.upgrade_request("/") + bad)
    ((opcode, payload),) = server_frames(answer)
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2]) == (1002,)


async def test_ping_is_answered_with_pong_and_close_with_close(gateway: Gateway) -> None:
    going_away = struct.pack("!H", 1001)
    answer = await raw_exchange(
        gateway, wstunnel.upgrade_request("/") + frame(0x9, b"are you there") + frame(0x8, going_away)
    )
    assert server_frames(answer) == [(0xA, b"are you there"), (0x8, going_away)]


async def test_a_frame_is_read_as_it_arrives_not_buffered_whole(gateway: Gateway) -> None:
    # A frame announcing 2**40 bytes whose first bytes are a data connection's first line: the
    # gateway reads that line and answers it long before the frame could ever end.
    line = b'{"t": "data", "token": "not-a-token"}\n'
    key = b"m4sk"
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**40) + key
    masked = bytes(byte ^ key[i % 4] for i, byte in enumerate(line))
    answer = await raw_exchange(gateway, wstunnel.upgrade_request("/") + header + masked)
    opcodes = [opcode for opcode, _ in server_frames(answer)]
    assert opcodes == [0x2, 0x8]  # the refusal, then the close
    ((_, refusal), _) = server_frames(answer)
    assert wire.decode(refusal.rstrip(b"\n"))["t"] == "error"


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
    assert refused.value.response.headers["Server"] == ws_handshake.SERVER


async def test_frames_arriving_a_byte_at_a_time_are_read_whole(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        writer.write(wstunnel.upgrade_request("/"))
        await writer.drain()
        await asyncio.sleep(0.05)
        # 130 bytes: a payload past 125 takes the 16-bit length; ping, then close, split everywhere
        data = frame(0x2, b"z" * 130) + frame(0x9, b"ping") + frame(0x8, struct.pack("!H", 1000))
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.0005)
        async with asyncio.timeout(WAIT):
            answer = await reader.read()
    finally:
        writer.close()
    # The 130 bytes went to the stream's first-line reader (no newline yet), the ping was
    # answered, the close echoed.
    assert server_frames(answer) == [(0xA, b"ping"), (0x8, struct.pack("!H", 1000))]


async def unread_upgrade(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgraded on a socket with a small receive buffer, its 101 answer read; the
    caller then reads nothing more, as a client flooding the gateway with pings would."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gateway.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(wstunnel.upgrade_request("/"))
    async with asyncio.timeout(WAIT):
        await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def flood_pings(writer: asyncio.StreamWriter) -> None:
    """Pings (125 bytes each, ~1 MB a write) for as long as the gateway takes them."""
    batch = frame(0x9, b"p" * 125) * 8000
    while True:
        writer.write(batch)
        await writer.drain()


def server_wires() -> list[wstunnel._Wire]:
    """The gateway side of the WebSocket connections open in this process."""
    gc.collect()  # those of earlier tests are garbage by now
    return [
        thing
        for thing in gc.get_objects()
        if isinstance(thing, wstunnel._Wire) and not thing._client and not thing.raw.is_closing()
    ]


async def test_pings_unread_by_their_sender_pause_reading_and_keep_the_buffer_bounded(redis: Redis) -> None:
    async with running_gateway(redis, handshake_timeout=WAIT * 3) as gateway:
        _, writer = await unread_upgrade(gateway)
        flooding = asyncio.create_task(flood_pings(writer))
        try:
            (wire_,) = server_wires()
            await until(lambda: not wire_.raw.is_reading())  # the pongs went unread: no more pings
            _, high = wire_.raw.get_write_buffer_limits()
            assert wire_.raw.get_write_buffer_size() <= high + 127  # one pong past the mark at most
            assert not flooding.done()
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
            writer.transport.abort()  # a close would wait for the pings still buffered to go out
        await until(lambda: wire_.raw.is_closing())  # the reset reached the gateway


async def test_a_connection_timed_out_with_pongs_unread_is_aborted(gateway: Gateway) -> None:
    # Past the handshake timeout the gateway refuses the connection: it resets it rather than
    # wait, with a full write buffer, for a peer that reads nothing.
    _, writer = await unread_upgrade(gateway)
    (wire_,) = server_wires()
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(ConnectionError):
                await flood_pings(writer)
    finally:
        writer.close()
    assert wire_.raw.is_closing()
    assert wire_.raw.get_write_buffer_size() == 0  # the pongs nobody read are gone with it
