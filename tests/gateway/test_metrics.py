"""A gateway node's /metrics, /healthz and /readyz, scraped after real traffic.

The node runs in-process (``gateway.server.running_gateway``) with its metrics on a port of
their own, against a real PostgreSQL database (``ipsx_test_gwmetrics_<pid>``, for the API key)
and the test Redis; a real provider agent lends it one exit (bound to 127.0.0.2) and a real
origin answers on 127.0.0.1. Clients are httpx (HTTP and SOCKS5 proxies) and raw sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from billing import accounts, db
from gateway.agent.fleet import run_agent
from gateway.agent.policy import ExitPolicy
from gateway.agent.settings import AgentSettings, ExitSpec
from gateway.metrics import SELECTION_BUCKETS, GatewayStats, Histogram
from gateway.server import GatewayPorts, running_gateway
from gateway.settings import GatewaySettings
from gateway.tunnel import exit_id_for
from gateway.wire import DialErrorCode
from ipsx.origin import Origin
from pool.registry import ExitRegistry
from tests.billing.conftest import create_and_migrate, drop_database
from tests.gateway.conftest import REDIS_URL

WAIT = 15.0  # seconds before a wait is given up (a failure, not a measurement)
BIND = "127.0.0.2"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@dataclass(frozen=True)
class Requester:
    database_url: str
    account: str
    secret: str


@pytest.fixture(scope="module")
def requester() -> Iterator[Requester]:
    name = f"ipsx_test_gwmetrics_{os.getpid()}"

    async def prepare() -> Requester:
        url = await create_and_migrate(name)
        pool = await db.connect(url, max_size=2)
        try:
            await accounts.create_account(pool, address="0x" + "ab" * 20, name="alice")
            key = await accounts.create_key(pool, account_name="alice", scopes=frozenset({"proxy"}))
        finally:
            await pool.close()
        return Requester(url, "alice", key.secret)

    yield asyncio.run(prepare())
    asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin("127.0.0.1", 0).start()
    yield server
    server.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@dataclass
class Node:
    ports: GatewayPorts
    requester: Requester
    stack: contextlib.AsyncExitStack

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    def proxy(self, user: str = "alice", secret: str | None = None, scheme: str = "http") -> str:
        port = self.ports.http if scheme == "http" else self.ports.socks
        return f"{scheme}://{user}:{secret or self.requester.secret}@127.0.0.1:{port}"

    async def scrape(self) -> Samples:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{self.metrics_url}/metrics")
        assert answer.status_code == 200
        return samples(answer.text)

    async def scrape_until(self, name: str, expected: float, **labels: str) -> Samples:
        async with asyncio.timeout(WAIT):
            while True:
                found = await self.scrape()
                if found.get((name, frozenset(labels.items()))) == expected:
                    return found
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def agent(tunnel_port: int, redis: Redis) -> AsyncIterator[None]:
    """A provider agent with one exit on 127.0.0.2, until that exit is live in the pool."""
    account = Account.create()
    settings = AgentSettings(
        gateway_host="127.0.0.1",
        gateway_port=tunnel_port,
        account=account,
        exits=(ExitSpec(bind=BIND, country="fr"),),
        policy=ExitPolicy(allow_private=True),
        pool_size=2,
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(run_agent(settings, stop))
    try:
        exit_id = exit_id_for(account.address, BIND)
        registry = ExitRegistry(redis, heartbeat_ttl=10.0)
        async with asyncio.timeout(WAIT):
            while exit_id not in await registry.live_ids():
                assert not serving.done(), "the agent stopped"
                await asyncio.sleep(0.02)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=WAIT)


@pytest.fixture
async def node(requester: Requester, redis: Redis) -> AsyncIterator[Node]:
    settings = GatewaySettings(
        redis_url=REDIS_URL,
        database_url=requester.database_url,
        http_port=0,
        socks_port=0,
        tunnel_port=0,
        metrics_port=0,
        node_id="gw-metrics",
        drain_timeout=WAIT,
    )
    gateway = contextlib.AsyncExitStack()  # closed by the drain test while the agent still serves
    ports = await gateway.enter_async_context(running_gateway(settings))
    try:
        async with agent(ports.tunnel, redis):
            yield Node(ports, requester, gateway)
    finally:
        await gateway.aclose()


def _basic(user: str, secret: str) -> str:
    return base64.b64encode(f"{user}:{secret}".encode()).decode()


async def open_tunnel(node: Node, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A CONNECT to ``target`` as alice: the reader, the writer and the proxy's response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.ports.http)
    credentials = _basic("alice", node.requester.secret)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\n"
    writer.write(head.encode() + b"\r\n")
    return reader, writer, await reader.readuntil(b"\r\n\r\n")


async def socks5_login(node: Node, user: str, password: str) -> bytes:
    """Offer username/password to the SOCKS5 port and log in; the server's answer to the login."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.ports.socks)
    try:
        writer.write(b"\x05\x01\x02")
        assert await reader.readexactly(2) == b"\x05\x02"
        writer.write(bytes([1, len(user)]) + user.encode() + bytes([len(password)]) + password.encode())
        return await reader.readexactly(2)
    finally:
        writer.close()
        await writer.wait_closed()


async def get_through(proxy: str, url: str) -> httpx.Response:
    """One request on a client (and so a proxy connection) of its own."""
    async with httpx.AsyncClient(proxy=proxy, timeout=WAIT) as client:
        return await client.get(url)


async def test_gateway_counts_streams_bytes_and_refusals(
    node: Node, origin: Origin, closed_port: int
) -> None:
    for _ in range(3):
        answer = await get_through(node.proxy(), origin.url("/ip"))
        assert (answer.status_code, answer.text) == (200, BIND)
    found = await node.scrape_until("ipsx_gateway_streams_closed_total", 3, protocol="http")
    assert value(found, "ipsx_gateway_streams_opened_total", protocol="http") == 3
    assert value(found, "ipsx_gateway_bytes_down_total", protocol="http") > 3 * len(BIND)

    # A tunnel: counted live while open, its bytes exactly when it ends.
    reader, writer, head = await open_tunnel(node, f"127.0.0.1:{origin.port}")
    assert head.startswith(b"HTTP/1.1 200")
    live = await node.scrape()
    assert value(live, "ipsx_gateway_tunnels_open") == 1
    assert value(live, "ipsx_gateway_streams_open") == 1
    assert value(live, "ipsx_gateway_exit_streams_open") == 1
    assert value(live, "ipsx_gateway_exit_streams_open_max") == 1
    request = f"GET /ip HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nConnection: close\r\n\r\n".encode()
    writer.write(request)
    response = await reader.read()
    assert response.endswith(BIND.encode())
    writer.close()
    await writer.wait_closed()
    found = await node.scrape_until("ipsx_gateway_streams_closed_total", 1, protocol="connect")
    assert value(found, "ipsx_gateway_bytes_up_total", protocol="connect") == len(request)
    assert value(found, "ipsx_gateway_bytes_down_total", protocol="connect") == len(response)
    assert value(found, "ipsx_gateway_tunnels_open") == 0

    answer = await get_through(node.proxy(scheme="socks5"), origin.url("/ip"))
    assert answer.text == BIND
    await node.scrape_until("ipsx_gateway_streams_closed_total", 1, protocol="socks5")

    # A destination that refuses: one dial, one error; a country no exit is in: no dial at all.
    _, writer, head = await open_tunnel(node, f"127.0.0.1:{closed_port}")
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 502") and b"X-IPSX-Error: connection_refused" in head
    answer = await get_through(node.proxy("alice-country-de"), origin.url("/ip"))
    assert (answer.status_code, answer.headers["X-IPSX-Error"]) == (502, "no_exit_matches")

    found = await node.scrape()
    assert value(found, "ipsx_gateway_streams_opened_total", protocol="connect") == 1
    assert value(found, "ipsx_gateway_streams_opened_total", protocol="socks5") == 1
    assert value(found, "ipsx_gateway_dial_errors_total", reason="refused") == 1
    assert value(found, "ipsx_gateway_dial_errors_total", reason="timeout") == 0
    assert value(found, "ipsx_gateway_refusals_total", reason="no_exit") == 1
    # one selection per stream asked for: 3 http, 1 connect, 1 socks5, the refused and the no-exit
    assert value(found, "ipsx_gateway_selection_seconds_count") == 7
    assert value(found, "ipsx_gateway_selection_seconds_bucket", le="+Inf") == 7
    assert value(found, "ipsx_gateway_selection_seconds_sum") > 0
    assert value(found, "ipsx_gateway_streams_open") == 0
    assert value(found, "ipsx_gateway_agents_connected") == 1
    assert value(found, "ipsx_gateway_exits_connected") == 1
    assert value(found, "ipsx_gateway_info", node="gw-metrics") == 1
    assert value(found, "ipsx_gateway_auth_failures_total", reason="invalid") == 0


async def test_gateway_counts_auth_failures_by_reason(node: Node, origin: Origin) -> None:
    wrong = await get_through(node.proxy(secret="ipsx_000000000000_" + "x" * 32), origin.url("/ip"))
    assert (wrong.status_code, wrong.headers["X-IPSX-Error"]) == (407, "auth_failed")
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{node.ports.http}") as client:
        anonymous = await client.get(origin.url("/ip"))
    assert (anonymous.status_code, anonymous.headers["X-IPSX-Error"]) == (407, "auth_required")
    garbled = await get_through(node.proxy("alice-country-fra"), origin.url("/ip"))
    assert (garbled.status_code, garbled.headers["X-IPSX-Error"]) == (400, "bad_targeting")
    assert await socks5_login(node, "alice", "wrong") == b"\x01\x01"  # sub-negotiation failed

    found = await node.scrape()
    assert value(found, "ipsx_gateway_auth_failures_total", reason="invalid") == 2  # HTTP and SOCKS5
    assert value(found, "ipsx_gateway_auth_failures_total", reason="missing") == 1
    assert value(found, "ipsx_gateway_auth_failures_total", reason="bad_targeting") == 1
    assert value(found, "ipsx_gateway_auth_failures_total", reason="unavailable") == 0
    assert value(found, "ipsx_gateway_streams_opened_total", protocol="http") == 0  # nothing relayed


async def test_gateway_health_and_readiness_through_a_drain(node: Node, origin: Origin) -> None:
    async with httpx.AsyncClient() as client:
        health = await client.get(f"{node.metrics_url}/healthz")
        ready = await client.get(f"{node.metrics_url}/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})

    # A stream in flight holds the drain open: meanwhile the node says it is not ready.
    _, writer, head = await open_tunnel(node, f"127.0.0.1:{origin.port}")
    assert head.startswith(b"HTTP/1.1 200")
    stopping = asyncio.create_task(node.stack.aclose())
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(WAIT):
            answer = await client.get(f"{node.metrics_url}/readyz")
            while answer.status_code == 200:
                await asyncio.sleep(0.02)
                answer = await client.get(f"{node.metrics_url}/readyz")
            alive = await client.get(f"{node.metrics_url}/healthz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "not ready", "problems": ["proxy ports not accepting"]}
        assert alive.status_code == 200
    finally:
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(stopping, timeout=WAIT)
    with pytest.raises(httpx.ConnectError):  # the listener went with the node
        async with httpx.AsyncClient() as client:
            await client.get(f"{node.metrics_url}/healthz")


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.005, 0.05, 3.0):
        histogram.observe(seconds)
    assert histogram.buckets() == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    assert histogram.total == pytest.approx(3.0565)
    with pytest.raises(ValueError, match="increasing order"):
        Histogram((0.1, 0.01))


def test_stats_keys_are_fixed_and_reasons_bounded() -> None:
    stats = GatewayStats()
    assert set(stats.opened) == {"http", "connect", "socks5"}
    assert set(stats.dial_errors) == {code.value for code in DialErrorCode}
    stats.refused("a reason the market made up")
    stats.dial_error(DialErrorCode.TIMEOUT)
    stats.stream_closed("connect", 10, 20)
    assert stats.refusals["other"] == 1
    assert stats.dial_errors["timeout"] == 1
    assert (stats.closed["connect"], stats.bytes_up["connect"], stats.bytes_down["connect"]) == (1, 10, 20)
    assert stats.selection.bounds == SELECTION_BUCKETS
