"""The WebSocket tunnel's hand-written handshake, both ways against the ``websockets`` library.

The gateway's side is checked against the library's asyncio client and raw requests in
test_tunnel_websocket.py; here the agent's side (``wstunnel.connect``) upgrades a real connection
to the library's asyncio server, and to raw servers answering what a broken or hostile gateway
(or a proxy in between) might; then the gateway's refusals the other file does not cover.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus

import pytest
from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, serve

from gateway import ws_handshake, wstunnel
from gateway.agent.connect import open_conn
from gateway.conn import Conn
from tests.gateway.test_tunnel import WAIT, Gateway, running_gateway
from tests.gateway.test_tunnel_websocket import raw_exchange


async def dial(port: int) -> Conn:
    return await open_conn(2, "127.0.0.1", port, within=WAIT)  # AF_INET


async def test_the_agent_side_upgrades_to_the_library_server_and_carries_bytes_both_ways() -> None:
    seen: list[str] = []

    async def echo(ws: ServerConnection) -> None:
        seen.append(ws.request.path if ws.request is not None else "")
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = await wstunnel.connect(await dial(port), f"ws://127.0.0.1:{port}/tunnel?x=1", within=WAIT)
        try:
            conn.write(b"\x00\x01 binary " * 1000)
            received = b""
            async with asyncio.timeout(WAIT):
                while len(received) < 10_000:
                    chunk = await conn.read()
                    assert chunk, "the library server closed the stream"
                    received += chunk
            assert received == b"\x00\x01 binary " * 1000
        finally:
            conn.close()
    assert seen == ["/tunnel?x=1"]


Answer = Callable[[bytes], bytes]  # the upgrade request → the raw answer of a fake gateway


def accepting(key_of: Callable[[bytes], str], extra: bytes = b"") -> Answer:
    def answer(request: bytes) -> bytes:
        key = key_of(request)
        accept = base64.b64encode(hashlib.sha1(key.encode() + ws_handshake.GUID).digest())
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
        )

    return answer


def sent_key(request: bytes) -> str:
    for line in request.decode().split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "sec-websocket-key":
            return value.strip()
    raise AssertionError("no Sec-WebSocket-Key in the agent's request")


@pytest.fixture
async def fake_gateway() -> AsyncIterator[Callable[[Answer], Awaitable[tuple[int, list[bytes]]]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[int, list[bytes]]:
        requests: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            requests.append(request)
            answered = answer(request)
            if answered:  # else close at once
                writer.write(answered)
                await writer.drain()
                await reader.read()  # until the agent closes
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], requests

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (accepting(lambda _: "AAAAAAAAAAAAAAAAAAAAAA=="), "Sec-WebSocket-Accept does not match"),
        (accepting(sent_key, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"), "extension"),
        (accepting(sent_key, b"Sec-WebSocket-Protocol: chat\r\n"), "subprotocol"),
        (
            lambda _: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "not an upgrade to websocket",
        ),
        (lambda _: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "answered 403 'Forbidden'"),
        (lambda _: b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not HTTP/1.1"),
        (lambda _: b"", "closed the connection during the handshake"),
    ],
    ids=["wrong-accept", "extension", "subprotocol", "other-protocol", "refused", "not-http", "closed"],
)
async def test_the_agent_side_refuses_an_answer_that_does_not_open_the_websocket(
    fake_gateway: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]], answer: Answer, problem: str
) -> None:
    port, requests = await fake_gateway(answer)
    conn = await dial(port)
    with pytest.raises(wstunnel.HandshakeFailed, match=problem):
        await wstunnel.connect(conn, f"ws://127.0.0.1:{port}/", within=WAIT)
    request = requests[0].decode()
    assert request.startswith("GET / HTTP/1.1\r\nHost: 127.0.0.1:")
    assert len(base64.b64decode(sent_key(requests[0]), validate=True)) == 16


async def test_each_upgrade_sends_a_fresh_key(
    fake_gateway: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    port, requests = await fake_gateway(accepting(sent_key))
    for _ in range(3):
        conn = await wstunnel.connect(await dial(port), f"ws://127.0.0.1:{port}/", within=WAIT)
        conn.close()  # it opened: the fake gateway had the request
    assert len({sent_key(request) for request in requests}) == 3


async def test_a_gateway_that_never_answers_times_the_upgrade_out(
    fake_gateway: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    port, _ = await fake_gateway(lambda _: b"HTTP/1.1 101 Switching")  # and then nothing
    with pytest.raises(TimeoutError):
        await wstunnel.connect(await dial(port), f"ws://127.0.0.1:{port}/", within=0.3)


async def test_frames_in_the_same_read_as_the_101_reach_the_stream(
    fake_gateway: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    # Binary frames from the gateway (unmasked) right behind its answer, in one write.
    frames = b"\x82\x05hello" + b"\x82\x06 world"
    port, _ = await fake_gateway(lambda request: accepting(sent_key)(request) + frames)
    conn = await wstunnel.connect(await dial(port), f"ws://127.0.0.1:{port}/", within=WAIT)
    try:
        received = b""
        async with asyncio.timeout(WAIT):
            while len(received) < 11:
                received += await conn.read()
        assert received == b"hello world"
    finally:
        conn.close()


async def test_the_url_s_credentials_stay_out_of_the_request_and_its_path_is_quoted(
    fake_gateway: Callable[[Answer], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    port, requests = await fake_gateway(accepting(sent_key))
    url = f"ws://tunnel-user:s3cret@127.0.0.1:{port}/a path/tunnel?n=1 2"
    conn = await wstunnel.connect(await dial(port), url, within=WAIT)
    conn.close()
    request = requests[0].decode()
    assert request.startswith(f"GET /a%20path/tunnel?n=1%202 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")
    assert "s3cret" not in request and "tunnel-user" not in request


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/", "ws:///nohost", "ws://127.0.0.1:99999/"])
async def test_what_is_no_websocket_url_is_refused_before_anything_is_sent(url: str) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        conn = await dial(server.sockets[0].getsockname()[1])
        with pytest.raises(ValueError):
            await wstunnel.connect(conn, url, within=WAIT)
        assert conn.transport is not None and conn.transport.is_closing()
    finally:
        server.close()


# ---- the gateway's refusals ----------------------------------------------------------------------


@pytest.fixture
async def gateway(redis: Redis) -> AsyncIterator[Gateway]:
    async with running_gateway(redis, handshake_timeout=1.0) as gateway:
        yield gateway


def upgrade(*lines: str, start: str = "GET / HTTP/1.1") -> bytes:
    return (start + "\r\nHost: gw\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode()


KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
V13 = "Sec-WebSocket-Version: 13"
UPGRADE = ("Upgrade: websocket", "Connection: keep-alive, Upgrade")


LATIN_1_KEY = b"Sec-WebSocket-Key: \xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9=="
REFUSED = {
    "version-8": (upgrade(*UPGRADE, KEY, "Sec-WebSocket-Version: 8"), 426, b"Sec-WebSocket-Version: 13"),
    "no-key": (upgrade(*UPGRADE, V13), 400, None),
    "short-key": (upgrade(*UPGRADE, "Sec-WebSocket-Key: c2hvcnQ=", V13), 400, None),  # 5 bytes
    "two-keys": (upgrade(*UPGRADE, KEY, KEY, V13), 400, None),
    "latin-1-key": (
        upgrade(*UPGRADE, V13).replace(b"\r\n\r\n", b"\r\n" + LATIN_1_KEY + b"\r\n\r\n"),
        400,
        None,
    ),
    "http-1.0": (upgrade(*UPGRADE, KEY, V13, start="GET / HTTP/1.0"), 505, None),
    "http-2.0": (upgrade(*UPGRADE, KEY, V13, start="GET / HTTP/2.0"), 505, None),
    "no-connection": (upgrade(UPGRADE[0], KEY, V13), 426, b"Upgrade: websocket"),
    "long-line": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414, None),
    "with-a-body": (upgrade(*UPGRADE, KEY, V13, "Content-Length: 5") + b"hello", 400, None),
    "two-hosts": (upgrade(*UPGRADE, KEY, V13, start="GET / HTTP/1.1\r\nHost: other"), 400, None),
    "other-path": (upgrade(*UPGRADE, KEY, V13, start="GET /metrics HTTP/1.1"), 404, None),
    "plain-get-other-path": (b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n", 404, None),
}


@pytest.mark.parametrize(("request_bytes", "status", "header"), REFUSED.values(), ids=REFUSED.keys())
async def test_the_gateway_refuses_a_bad_upgrade_with_its_http_error(
    gateway: Gateway, request_bytes: bytes, status: int, header: bytes | None
) -> None:
    answer = await raw_exchange(gateway, request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()), answer[:80]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nServer: ipsx-gateway\r\n" in head
    assert f"Content-Length: {len(body)}".encode() in head
    if header is not None:
        assert b"\r\n" + header + b"\r\n" in head + b"\r\n"
        assert b"\r\nConnection: Upgrade, close\r\n" in head
    else:
        assert b"\r\nConnection: close\r\n" in head + b"\r\n"


async def test_the_gateway_accepts_the_rfc_example_key(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(upgrade(*UPGRADE, KEY, "Sec-WebSocket-Version: 13"))
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 §1.3: the key "dGhlIHNhbXBsZSBub25jZQ==" is answered with this value
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head


async def test_the_gateway_takes_header_names_and_tokens_in_any_case(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    request = b"GET /tunnel HTTP/1.1\r\nhost: gw\r\nupgrade: WebSocket\r\nCONNECTION: Keep-Alive, UPGRADE\r\n"
    request += b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n"
    try:
        writer.write(request)
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
