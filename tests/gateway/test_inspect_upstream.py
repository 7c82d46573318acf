"""Tunnels through the gateway (``gateway.inspect.upstream``) against scripted peers on loopback.

The peer plays the gateway's CONNECT answer, then the origin behind it, so the client's handling
of hostile and failing peers (refusals, malformed answers, early closes, silence, huge bodies) is
checked byte for byte. The real gateway in front of real origins is tested end to end in
``tests/e2e/test_inspect.py``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.inspect.errors import GatewayRefused, GatewayUnavailable, OriginError
from gateway.inspect.upstream import (
    ClientTunnels,
    Limits,
    OriginRequest,
    TunnelKey,
    open_tunnel,
    origin_context,
)
from tests.e2e.conftest import free_port
from tests.tls import self_signed

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 Connection established\r\nX-IPSX-Exit: 0123456789abcdef\r\n\r\n"
KEY = TunnelKey("Basic YWxpY2U6c2VjcmV0", (("X-IPSX-Country", "de"),), "http", "origin.test", 80)
GET = OriginRequest("GET", b"/page?q=1", [(b"Host", b"origin.test")])
LIMITS = Limits(connect_timeout=5, idle_timeout=5, max_response_body=1000)


class Peer:
    """A loopback server that records each CONNECT head and then runs ``script``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return "127.0.0.1", int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Script], Awaitable[Peer]]]:
    started: list[Peer] = []

    async def start(script: Script) -> Peer:
        found = Peer(script)
        found.server = await asyncio.start_server(found._serve, "127.0.0.1", 0)
        started.append(found)
        return found

    yield start
    for found in started:
        assert found.server is not None
        found.server.close()
        await found.server.wait_closed()


async def _request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _answering(*responses: bytes, then_close: bool = False) -> Script:
    """Accept the CONNECT, then answer one request per response."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        for response in responses:
            await _request_head(reader)
            writer.write(response)
            await writer.drain()
        if not then_close:
            await reader.read()

    return script


async def test_open_tunnel_call_sends_credentials_targeting_and_extra(
    peer: Callable[[Script], Awaitable[Peer]],
) -> None:
    gateway = await peer(_answering())
    tunnel = await open_tunnel(gateway.address, KEY, None, LIMITS, (("X-IPSX-Ban", "1"),))
    tunnel.close()
    assert gateway.heads == [
        b"CONNECT origin.test:80 HTTP/1.1\r\nHost: origin.test:80\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\nX-IPSX-Country: de\r\nX-IPSX-Ban: 1\r\n\r\n"
    ]
    assert tunnel.exit_id == "0123456789abcdef"


@pytest.mark.parametrize(
    ("answer", "status", "code", "message", "authenticate"),
    [
        (
            b"HTTP/1.1 502 Bad Gateway\r\nX-IPSX-Error: no_exit_matches\r\nContent-Length: 40\r\n\r\n"
            b"no exit matches the requested targeting\n",
            502,
            "no_exit_matches",
            "no exit matches the requested targeting",
            None,
        ),
        (
            b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="IPSX"\r\n'
            b"X-IPSX-Error: auth_failed\r\nContent-Length: 5\r\n\r\nno\x00\x01\n",
            407,
            "auth_failed",
            "no",
            'Basic realm="IPSX"',
        ),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 403, "gateway_refused", None, None),
    ],
)
async def test_open_tunnel_call_passes_the_gateway_refusal_on(
    peer: Callable[[Script], Awaitable[Peer]],
    answer: bytes,
    status: int,
    code: str,
    message: str | None,
    authenticate: str | None,
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)

    gateway = await peer(refuse)
    with pytest.raises(GatewayRefused) as raised:
        await open_tunnel(gateway.address, KEY, None, LIMITS)
    assert (raised.value.status, raised.value.code, raised.value.authenticate) == (status, code, authenticate)
    assert raised.value.message == (message or f"the gateway refused the tunnel ({status})")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",  # malformed status line
        b"HTTP/1.1 200 Connection established\r\n\r\nearly bytes",  # someone spoke first
        b"HTTP/1.1 200 Connection",  # closed mid-head
    ],
)
async def test_open_tunnel_call_malformed_answers(
    peer: Callable[[Script], Awaitable[Peer]], answer: bytes
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    gateway = await peer(script)
    with pytest.raises(GatewayUnavailable):
        await open_tunnel(gateway.address, KEY, None, LIMITS)


async def test_open_tunnel_call_gateway_unreachable() -> None:
    with pytest.raises(GatewayUnavailable) as raised:
        await open_tunnel(("127.0.0.1", free_port()), KEY, None, LIMITS)
    assert raised.value.status == 502 and raised.value.code == "gateway_unavailable"


async def test_exchange_call_keeps_the_tunnel_for_the_next_request(
    peer: Callable[[Script], Awaitable[Peer]],
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    hinted = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
    )
    gateway = await peer(_answering(chunked, hinted))
    tunnels = ClientTunnels(gateway.address, origin_context(None), LIMITS)
    first, tunnel = await tunnels.exchange(KEY, GET)
    second, again = await tunnels.exchange(KEY, GET)
    tunnels.close()
    assert (first.status, first.body) == (200, b"abcde")
    assert (second.status, second.reason, second.body) == (404, b"Not Found", b"no")
    assert again is tunnel and len(gateway.heads) == 1  # one CONNECT, one stream, two requests
    assert tunnel.exit_id == "0123456789abcdef"


async def test_exchange_call_reopens_a_stale_tunnel_for_idempotent_requests(
    peer: Callable[[Script], Awaitable[Peer]],
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _request_head(reader)  # the next request is dropped unanswered, the tunnel closed

    gateway = await peer(script)
    tunnels = ClientTunnels(gateway.address, origin_context(None), LIMITS)
    await tunnels.exchange(KEY, GET)
    answer, _ = await tunnels.exchange(KEY, GET)  # the kept tunnel fails; a new one answers
    with pytest.raises(OriginError) as raised:
        await tunnels.exchange(KEY, OriginRequest("POST", b"/", [(b"Host", b"o"), (b"Content-Length", b"0")]))
    tunnels.close()
    assert answer.body == b"ok"
    assert len(gateway.heads) == 2
    assert (raised.value.code, raised.value.stale) == ("exit_closed", True)  # a POST is never sent twice


@pytest.mark.parametrize(
    ("response", "code", "status"),
    [
        (b"", "exit_closed", 502),  # closed without a response
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "exit_closed", 502),  # closed mid-body
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, "response_too_large", 502),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", "bad_response", 502),
        (b"NOT HTTP AT ALL\r\n\r\n", "bad_response", 502),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", "bad_response", 502),  # head too large
    ],
)
async def test_exchange_call_origin_failures(
    peer: Callable[[Script], Awaitable[Peer]], response: bytes, code: str, status: int
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await _request_head(reader)
        writer.write(response)
        await writer.drain()

    gateway = await peer(script)
    tunnels = ClientTunnels(gateway.address, origin_context(None), LIMITS)
    with pytest.raises(OriginError) as raised:
        await tunnels.exchange(KEY, GET)
    tunnels.close()
    assert (raised.value.code, raised.value.status, raised.value.stale) == (code, status, False)


async def test_exchange_call_silent_origin_times_out(peer: Callable[[Script], Awaitable[Peer]]) -> None:
    gateway = await peer(_answering())  # accepts the CONNECT, never answers the request
    tunnels = ClientTunnels(gateway.address, origin_context(None), Limits(idle_timeout=0.2))
    with pytest.raises(OriginError) as raised:
        await tunnels.exchange(KEY, GET)
    tunnels.close()
    assert (raised.value.status, raised.value.code) == (504, "origin_timeout")


@pytest.fixture(scope="module")
def origin_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("origin"), "DNS:origin.test")


def _tls_origin(cert: Path, key: Path) -> Script:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        try:
            await writer.start_tls(context)
        except (ssl.SSLError, ConnectionError):
            return  # the client refused our certificate
        await _request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()
        await reader.read()

    return script


async def test_open_tunnel_call_checks_the_origin_certificate(
    peer: Callable[[Script], Awaitable[Peer]], origin_cert: tuple[Path, Path]
) -> None:
    cert, key = origin_cert
    gateway = await peer(_tls_origin(cert, key))
    https = TunnelKey("Basic x", (), "https", "origin.test", 443)
    trusting = ClientTunnels(gateway.address, origin_context(str(cert)), LIMITS)
    answer, _ = await trusting.exchange(https, GET)
    trusting.close()
    with pytest.raises(OriginError) as raised:
        await open_tunnel(gateway.address, https, origin_context(None), LIMITS)
    assert answer.body == b"secret"
    assert (raised.value.status, raised.value.code) == (502, "origin_certificate")
    assert "certificate" in raised.value.message
