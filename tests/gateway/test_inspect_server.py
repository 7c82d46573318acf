"""The inspecting worker in-process (mitmproxy's core with the IPSX addons), on the real
PostgreSQL and Redis, with httpx as the client and a scripted gateway behind it.

The scripted gateway records each CONNECT the worker sends and answers it like the real one
(``200`` with an ``X-IPSX-Exit``, or a refusal), then plays an HTTPS origin. That shows what the
worker itself sends and returns byte for byte — credentials, targeting, the retry's new session,
the exit id — which the end-to-end tests (``tests/e2e/test_inspect.py``) check against the real
gateway and exits.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from billing import accounts, db
from gateway.inspect import ca, state
from gateway.inspect.settings import InspectSettings
from tests.billing.conftest import create_and_migrate, drop_database
from tests.e2e.conftest import free_port
from tests.gateway.conftest import REDIS_URL
from tests.tls import self_signed

with warnings.catch_warnings():
    # mitmproxy's addons package imports ldap3 and passlib, which use deprecated pyasn1 names and
    # the deprecated crypt module; pyproject's filterwarnings makes any warning an error.
    warnings.simplefilter("ignore", DeprecationWarning)
    from gateway.inspect.server import running_inspector

EXIT = "0123456789abcdef"
# mitmproxy 11's TLS setup hands pyOpenSSL 24.3 X509 and PKey objects, which it deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Passing pyOpenSSL .* objects is deprecated:DeprecationWarning"
)


@dataclass
class Gateway:
    """A scripted gateway: CONNECT answered ``answer``, then an origin (HTTPS for port 443, else
    plain HTTP) answering ``statuses`` in turn (the last one forever), echoing the request head."""

    tls: ssl.SSLContext
    answer: bytes = b"HTTP/1.1 200 Connection established\r\nX-IPSX-Exit: " + EXIT.encode() + b"\r\n\r\n"
    statuses: list[int] = field(default_factory=lambda: [200])
    connects: list[bytes] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            connect = await reader.readuntil(b"\r\n\r\n")
            self.connects.append(connect)
            writer.write(self.answer)
            await writer.drain()
            if not self.answer.startswith(b"HTTP/1.1 200"):
                return
            if connect.split(b" ", 2)[1].endswith(b":443"):
                await writer.start_tls(self.tls)
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(head), head))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@dataclass
class Worker:
    port: int
    gateway: Gateway
    secret: str
    redis: Redis
    pg: asyncpg.Pool
    ca: Path

    def client(self, user: str = "alice", secret: str | None = None) -> httpx.AsyncClient:
        proxy = f"http://{user}:{secret or self.secret}@127.0.0.1:{self.port}"
        verify = ssl.create_default_context(cafile=str(self.ca))
        return httpx.AsyncClient(proxy=proxy, verify=verify, timeout=10)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    name = f"ipsx_test_inspect_server_{os.getpid()}"
    yield asyncio.run(create_and_migrate(name))
    asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def origin_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("origin"), "DNS:origin.test")


@pytest.fixture
async def worker(
    database_url: str, redis: Redis, origin_tls: tuple[Path, Path], tmp_path: Path
) -> AsyncIterator[Worker]:
    pg = await db.connect(database_url, max_size=2)
    await pg.execute("TRUNCATE accounts, api_keys, inspection_cas RESTART IDENTITY CASCADE")
    alice = await accounts.create_account(pg, address="0x" + "a1" * 20, name="alice")
    key = await accounts.create_key(pg, account_name="alice")
    authority = await ca.authority_for(pg, alice.id, alice.name)
    (tmp_path / "alice-ca.pem").write_bytes(authority.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*origin_tls)
    gateway = Gateway(context)
    server = await asyncio.start_server(gateway.serve, "127.0.0.1", 0)
    gateway.port = int(server.sockets[0].getsockname()[1])
    settings = InspectSettings(
        redis_url=REDIS_URL,
        database_url=database_url,
        gateway_port=gateway.port,
        port=free_port(),
        upstream_ca=str(origin_tls[0]),
        drain_timeout=1,
    )
    try:
        async with running_inspector(settings) as port:
            yield Worker(port, gateway, key.secret, redis, pg, tmp_path / "alice-ca.pem")
    finally:
        server.close()
        await server.wait_closed()
        await pg.close()


def _connect_headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}


async def test_request_call_goes_through_the_gateway_with_the_clients_credentials(worker: Worker) -> None:
    await state.set_enabled(worker.redis, "alice", True)
    async with worker.client("alice-country-de") as client:
        answer = await client.get(
            "https://origin.test/page?q=1", headers={"X-IPSX-Session": "s1", "X-IPSX-Retry-On": "429"}
        )
    (connect,) = worker.gateway.connects
    sent = _connect_headers(connect)
    assert connect.startswith(b"CONNECT origin.test:443 HTTP/1.1\r\n")
    assert (
        base64.b64decode(sent["proxy-authorization"].split()[1]).decode()
        == f"alice-country-de:{worker.secret}"
    )
    assert sent["x-ipsx-session"] == "s1" and "x-ipsx-retryon" not in sent and "x-ipsx-retry-on" not in sent
    assert answer.status_code == 200
    assert (answer.headers["x-ipsx-exit"], answer.headers["x-ipsx-tries"]) == (EXIT, "1")
    origin_saw = answer.text.lower()
    assert origin_saw.startswith("get /page?q=1 http/1.1\r\n")
    assert "x-ipsx" not in origin_saw and "proxy-authorization" not in origin_saw


async def test_request_call_retries_with_a_new_session(worker: Worker) -> None:
    await state.set_enabled(worker.redis, "alice", True)
    worker.gateway.statuses = [403, 429, 200]
    async with worker.client() as client:
        answer = await client.get(
            "https://origin.test/", headers={"X-IPSX-Retry-On": "403,429", "X-IPSX-Max-Retries": "2"}
        )
    sessions = [_connect_headers(head).get("x-ipsx-session") for head in worker.gateway.connects]
    assert (answer.status_code, answer.headers["x-ipsx-tries"]) == (200, "3")
    assert sessions[0] is None and None not in sessions[1:] and len(set(sessions)) == 3


async def test_request_call_ban_goes_on_a_new_tunnel_once(worker: Worker) -> None:
    await state.set_enabled(worker.redis, "alice", True)
    async with worker.client("alice-session-s7") as client:
        await client.get("https://origin.test/a")
        await client.get("https://origin.test/b", headers={"X-IPSX-Ban": "1"})
        await client.get("https://origin.test/c")
    bans = [_connect_headers(head).get("x-ipsx-ban") for head in worker.gateway.connects]
    assert bans == [None, "1"]  # the ban opened a fresh tunnel; the next request kept using it


async def test_http_connect_call_refusals(worker: Worker) -> None:
    async with worker.client() as client:
        with pytest.raises(httpx.ProxyError) as disabled:
            await client.get("https://origin.test/")
    await state.set_enabled(worker.redis, "alice", True)
    async with worker.client(secret="ipsx_000000000000_" + "x" * 32) as client:
        with pytest.raises(httpx.ProxyError) as wrong_key:
            await client.get("https://origin.test/")
    async with worker.client("alice-country-france") as client:
        with pytest.raises(httpx.ProxyError) as bad_targeting:
            await client.get("https://origin.test/")
    assert "403" in str(disabled.value)
    assert "407" in str(wrong_key.value)
    assert "400" in str(bad_targeting.value)
    assert worker.gateway.connects == []  # nothing went on to the gateway


async def test_request_call_passes_the_gateway_refusal_on(worker: Worker) -> None:
    await state.set_enabled(worker.redis, "alice", True)
    worker.gateway.answer = (
        b"HTTP/1.1 502 Bad Gateway\r\nX-IPSX-Error: no_exit_matches\r\nContent-Length: 40\r\n\r\n"
        b"no exit matches the requested targeting\n"
    )
    async with worker.client() as client:
        answer = await client.get("https://origin.test/")
    assert (answer.status_code, answer.headers["x-ipsx-error"]) == (502, "no_exit_matches")
    assert answer.text == "no exit matches the requested targeting\n"


async def test_plain_http_request_call(worker: Worker) -> None:
    await state.set_enabled(worker.redis, "alice", True)
    worker.gateway.answer = b"HTTP/1.1 200 Connection established\r\n\r\n"  # names no exit
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{worker.port}") as anonymous:
        refused = await anonymous.get("http://origin.test/plain")
    async with httpx.AsyncClient(proxy=f"http://alice:{worker.secret}@127.0.0.1:{worker.port}") as client:
        answer = await client.get("http://origin.test/plain", headers={"X-IPSX-Country": "fr"})
    (connect,) = worker.gateway.connects
    assert (refused.status_code, refused.headers["x-ipsx-error"]) == (407, "auth_required")
    assert refused.headers["proxy-authenticate"] == 'Basic realm="IPSX"'
    assert connect.startswith(b"CONNECT origin.test:80 HTTP/1.1\r\n")
    assert _connect_headers(connect)["x-ipsx-country"] == "fr"
    assert answer.status_code == 200 and answer.text.startswith("GET /plain HTTP/1.1\r\n")
    assert "x-ipsx-exit" not in answer.headers and answer.headers["x-ipsx-tries"] == "1"
