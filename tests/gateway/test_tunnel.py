"""Functional tests of the provider tunnel: a real ``TunnelHub`` and real ``AgentSession`` agents.

The hub listens on 127.0.0.1 and keeps its exits in a real Redis (db 12, flushed around every
test; ``IPSX_TEST_REDIS_URL`` overrides it); agents dial from 127.0.0.2 to local servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from redis.asyncio import Redis

from billing.keys import USAGE_STREAM
from billing.usage import AgentReport, UsageEvent, UsagePublisher, decode_entry
from gateway import wire
from gateway.agent.caps import Limits, ServingState, parse_window
from gateway.agent.governor import Governor
from gateway.agent.policy import ExitPolicy, parse_blocked
from gateway.agent.session import AgentSession, LoginRefused
from gateway.agent.settings import AgentSettings, ExitSpec
from gateway.conn import Conn, ConnectionClosed
from gateway.relay import Splice, SpliceResult
from gateway.settings import GatewaySettings
from gateway.tickets import Ticket, TicketKey
from gateway.tunnel import TunnelHub, exit_id_for
from gateway.tunnel_streams import DialError
from gateway.wire import DialErrorCode
from pool import keys
from pool.registry import ExitRegistry

REDIS_URL = os.environ.get("IPSX_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
NODE = "gw-test"
BOOT = "b007b007b007b007"  # the boot token of the hub under test


def ticket(exit_id: str, stream: str, *, node: str = NODE) -> Ticket:
    """The ticket the front would give a stream of account ``alice`` through ``exit_id``."""
    return Ticket(stream, node, exit_id, "alice", "", "connect", "127.0.0.1:80", 1, BOOT)


BIND = "127.0.0.2"
ALLOW_PRIVATE = ExitPolicy(allow_private=True)
WAIT = 10.0  # seconds before a wait for an event is given up (a failure, not a measurement)


async def until(predicate: Callable[[], Awaitable[bool]] | Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            outcome = predicate()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
            await asyncio.sleep(0.01)


@dataclass
class Gateway:
    hub: TunnelHub
    registry: ExitRegistry
    redis: Redis
    settings: GatewaySettings
    publisher: UsagePublisher
    port: int


@contextlib.asynccontextmanager
async def running_gateway(redis: Redis, **overrides: Any) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        **{
            "redis_url": REDIS_URL,
            "database_url": "unused",
            "node_id": NODE,
            "handshake_timeout": 5.0,
            "dial_timeout": 5.0,
            **overrides,
        }
    )
    registry = ExitRegistry(redis, heartbeat_ttl=settings.heartbeat_ttl)
    publisher = UsagePublisher(redis, flush_interval=0.02)
    await publisher.start()
    hub = TunnelHub(settings, registry, publisher, tickets=await TicketKey.shared(redis), boot=BOOT)
    port = await hub.start("127.0.0.1", 0)
    try:
        yield Gateway(hub, registry, redis, settings, publisher, port)
    finally:
        await hub.close()
        await publisher.close()
        await asyncio.sleep(0.01)


@pytest.fixture
async def gateway(redis: Redis) -> AsyncIterator[Gateway]:
    async with running_gateway(redis) as gateway:
        yield gateway


@dataclass
class Agent:
    session: AgentSession
    account: LocalAccount
    exit_id: str
    serving: asyncio.Task[None] | None


StartAgent = Callable[..., Awaitable[Agent]]


async def stop_agent(agent: Agent) -> None:
    if agent.serving is not None:
        agent.serving.cancel()  # closes the control connection; the gateway then drops the link
        await asyncio.gather(agent.serving, return_exceptions=True)
        # Let the idle data connections see the gateway close them before they are cancelled.
        pending = set(agent.session._tasks)
        if pending:
            await asyncio.wait(pending, timeout=WAIT)
    await agent.session.close()


@contextlib.asynccontextmanager
async def agent_starter(gateway: Gateway) -> AsyncIterator[StartAgent]:
    started: list[Agent] = []

    async def start(
        policy: ExitPolicy = ALLOW_PRIVATE,
        *,
        serve: bool = True,
        pool_size: int = 2,
        limits: Limits | None = None,
        governor: Governor | None = None,
        reuse: bool = True,
    ) -> Agent:
        account = Account.create()
        settings = AgentSettings(
            gateway_host="127.0.0.1",
            gateway_port=gateway.port,
            account=account,
            exits=(ExitSpec(bind=BIND, country="fr"),),
            policy=policy,
            limits=limits or Limits(),
            pool_size=pool_size,
            dial_timeout=5.0,
            handshake_timeout=5.0,
            reuse_data=reuse,
        )
        session = AgentSession(settings, governor=governor)
        agent = Agent(session, account, exit_id_for(account.address, BIND), None)
        started.append(agent)
        await session.login()
        if serve:
            agent.serving = asyncio.create_task(session.serve())
        return agent

    try:
        yield start
    finally:
        for agent in started:
            await stop_agent(agent)
        await asyncio.sleep(0.01)


@pytest.fixture
async def start_agent(gateway: Gateway) -> AsyncIterator[StartAgent]:
    async with agent_starter(gateway) as start:
        yield start


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def connect_raw(gateway: Gateway) -> Conn:
    _, conn = await asyncio.get_running_loop().create_connection(Conn, "127.0.0.1", gateway.port)
    return conn


async def read_message(conn: Conn) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        return wire.decode(await conn.read_line(wire.MAX_LINE))


async def assert_closed_by_peer(conn: Conn) -> None:
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionClosed):
            await conn.read_line(wire.MAX_LINE)


def signature(account: LocalAccount, node: str, nonce: str) -> str:
    signed = account.sign_message(encode_defunct(text=wire.login_message(node, nonce)))
    return "0x" + signed.signature.hex().removeprefix("0x")


async def raw_login(gateway: Gateway, claimed: LocalAccount, signer: LocalAccount) -> Conn:
    """A control connection logged in by hand: hello as ``claimed``, challenge signed by ``signer``."""
    conn = await connect_raw(gateway)
    conn.write(wire.encode({"t": "hello", "v": wire.PROTOCOL_VERSION, "address": claimed.address}))
    challenge = await read_message(conn)
    assert challenge["t"] == "challenge"
    assert challenge["node"] == NODE
    conn.write(
        wire.encode(
            {
                "t": "login",
                "signature": signature(signer, challenge["node"], challenge["nonce"]),
                "exits": [ExitSpec(bind=BIND, country="fr").to_wire()],
                "policy": ExitPolicy().to_wire(),
                "pool": 2,
            }
        )
    )
    return conn


async def pool_keys(redis: Redis) -> list[bytes | str]:
    return await redis.keys("ipsx:{pool}*")


async def usage_reports(redis: Redis) -> list[UsageEvent | AgentReport]:
    entries = await redis.xrange(USAGE_STREAM) or []
    return [item for _, fields in entries for item in decode_entry(cast(dict[bytes, bytes], fields))[0]]


# login and registration


async def test_login_registers_exit(gateway: Gateway, start_agent: StartAgent) -> None:
    agent = await start_agent()
    assert await gateway.registry.live_ids() == {agent.exit_id}
    info = await gateway.registry.get(agent.exit_id)
    assert info is not None
    assert (info.provider, info.node, info.bind, info.country, info.type) == (
        agent.account.address,
        NODE,
        BIND,
        "fr",
        "residential",
    )
    assert gateway.hub.is_available(agent.exit_id)
    assert gateway.hub.exit_info(agent.exit_id) == info
    assert gateway.hub.load(agent.exit_id) == 0
    assert [link.address for link in gateway.hub.links] == [agent.account.address]
    assert await gateway.redis.sismember(keys.node_exits(NODE), agent.exit_id)
    assert await gateway.redis.sismember(keys.index("country", "fr"), agent.exit_id)


async def test_handle_raw_login_welcome(gateway: Gateway) -> None:
    account = Account.create()
    conn = await raw_login(gateway, account, account)
    welcome = await read_message(conn)
    exit_id = exit_id_for(account.address, BIND)
    assert welcome["t"] == "welcome"
    assert len(welcome["token"]) == 64
    assert welcome["exits"] == {BIND: exit_id}
    assert welcome["heartbeat"] == gateway.settings.heartbeat_interval
    assert gateway.hub.is_available(exit_id)
    assert await gateway.registry.live_ids() == {exit_id}
    conn.close()
    await until(lambda: not gateway.hub.is_available(exit_id))
    await until(lambda: pool_keys_empty(gateway))


async def test_agent_text_is_logged_escaped_and_bounded(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ipsx.gateway.tunnel")
    account = Account.create()
    conn = await raw_login(gateway, account, account)
    assert (await read_message(conn))["t"] == "welcome"
    forged = "cap reached\n2099-01-01 ERROR ipsx.gateway: forged line " + "x" * 300
    conn.write(wire.encode({"t": "state", "serving": False, "reason": forged}))

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "not serving" in r.getMessage()]

    await until(lambda: bool(logged()))
    (line,) = logged()
    assert "\n" not in line
    assert "'cap reached\\n2099-01-01 ERROR" in line  # shown as a Python literal
    assert len(line) < 200
    conn.close()
    exit_id = exit_id_for(account.address, BIND)
    await until(lambda: not gateway.hub.is_available(exit_id))


async def pool_keys_empty(gateway: Gateway) -> bool:
    return await pool_keys(gateway.redis) == []


async def test_handle_login_wrong_key_refused(gateway: Gateway) -> None:
    claimed, other = Account.create(), Account.create()
    conn = await raw_login(gateway, claimed, other)
    assert await read_message(conn) == {"t": "error", "reason": "signature does not match the address"}
    await assert_closed_by_peer(conn)
    conn.close()
    assert not gateway.hub.is_available(exit_id_for(claimed.address, BIND))
    assert not gateway.hub.is_available(exit_id_for(other.address, BIND))
    assert gateway.hub.links == []
    assert await gateway.registry.live_ids() == set()
    assert await pool_keys(gateway.redis) == []


async def test_handle_login_replayed_signature_refused(gateway: Gateway) -> None:
    account = Account.create()
    conn = await connect_raw(gateway)
    conn.write(wire.encode({"t": "hello", "v": wire.PROTOCOL_VERSION, "address": account.address}))
    challenge = await read_message(conn)
    stale = signature(account, challenge["node"], "00" * 16)  # signed for another nonce
    exits = [ExitSpec(bind=BIND).to_wire()]
    conn.write(wire.encode({"t": "login", "signature": stale, "exits": exits}))
    assert await read_message(conn) == {"t": "error", "reason": "signature does not match the address"}
    await assert_closed_by_peer(conn)
    conn.close()
    assert gateway.hub.links == []
    assert await pool_keys(gateway.redis) == []


async def test_handle_login_malformed_signature_refused(gateway: Gateway) -> None:
    account = Account.create()
    conn = await connect_raw(gateway)
    conn.write(wire.encode({"t": "hello", "v": wire.PROTOCOL_VERSION, "address": account.address}))
    await read_message(conn)
    conn.write(wire.encode({"t": "login", "signature": "0x1234", "exits": [ExitSpec(bind=BIND).to_wire()]}))
    assert await read_message(conn) == {"t": "error", "reason": "bad signature"}
    await assert_closed_by_peer(conn)
    conn.close()
    assert await pool_keys(gateway.redis) == []


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        ({"t": "hello", "v": 2, "address": "0x" + "ab" * 20}, "unsupported protocol version"),
        ({"t": "hello", "v": 1, "address": "alice"}, "bad address"),
        ({"t": "hello", "v": True, "address": "0x" + "ab" * 20}, "field 'v' has the wrong type"),
    ],
)
async def test_handle_bad_hello_refused(gateway: Gateway, hello: dict[str, Any], reason: str) -> None:
    conn = await connect_raw(gateway)
    conn.write(wire.encode(hello))
    assert await read_message(conn) == {"t": "error", "reason": reason}
    await assert_closed_by_peer(conn)
    conn.close()


async def test_agent_login_refused(gateway: Gateway) -> None:
    settings = AgentSettings(
        gateway_host="127.0.0.1",
        gateway_port=gateway.port,
        account=Account.create(),
        exits=(ExitSpec(bind=BIND, country="fr", type="mobile", region="not a word"),),
    )
    session = AgentSession(settings)
    try:
        with pytest.raises(LoginRefused, match="bad exit location"):
            await session.login()
    finally:
        await session.close()
    assert await pool_keys(gateway.redis) == []


async def test_login_again_replaces_link(gateway: Gateway) -> None:
    account = Account.create()
    exit_id = exit_id_for(account.address, BIND)
    first = await raw_login(gateway, account, account)
    first_token = (await read_message(first))["token"]
    second = await raw_login(gateway, account, account)
    welcome = await read_message(second)
    assert welcome["t"] == "welcome"
    assert welcome["token"] != first_token
    await assert_closed_by_peer(first)  # the older login is let go
    first.close()
    assert [link.token for link in gateway.hub.links] == [welcome["token"]]
    assert gateway.hub.is_available(exit_id)
    assert await gateway.registry.live_ids() == {exit_id}
    # The old login's data token no longer lends connections.
    data = await connect_raw(gateway)
    data.write(wire.encode({"t": "data", "token": first_token}))
    assert await read_message(data) == {"t": "error", "reason": "unknown data token"}
    data.close()
    second.close()
    await until(lambda: pool_keys_empty(gateway))


async def test_usage_report_for_unknown_stream_ignored(gateway: Gateway) -> None:
    account = Account.create()
    exit_id = exit_id_for(account.address, BIND)
    conn = await raw_login(gateway, account, account)
    assert (await read_message(conn))["t"] == "welcome"
    report = {
        "t": "usage",
        "stream": uuid.uuid4().hex,  # never opened through this agent
        "exit": exit_id,
        "up": 10,
        "down": 10**9,
        "opened": 1.0,
        "closed": 2.0,
        "outcome": "gateway_closed",
    }
    conn.write(wire.encode(report))
    conn.write(wire.encode({"t": "bogus"}))  # a bad message ends the link, after the report
    await assert_closed_by_peer(conn)
    conn.close()
    await until(lambda: not gateway.hub.is_available(exit_id))
    await gateway.publisher.flush()
    assert await gateway.redis.xlen(USAGE_STREAM) == 0


# refused connections


async def test_handle_unknown_data_token_refused(gateway: Gateway, start_agent: StartAgent) -> None:
    await start_agent()  # a live link, whose token is not the one sent
    for token in ("ab" * 32, "not-a-token"):
        conn = await connect_raw(gateway)
        conn.write(wire.encode({"t": "data", "token": token}))
        assert await read_message(conn) == {"t": "error", "reason": "unknown data token"}
        await assert_closed_by_peer(conn)
        conn.close()


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"POST / HTTP/1.1\r\n", "not JSON"),  # (GET starts a WebSocket: test_tunnel_websocket.py)
        (b"\x16\x03\x01\x02\x00\n", "not JSON"),
        (b"[1, 2]\n", "not a message object"),
        (b'{"t": "login"}\n', "expected hello or data"),
        (b"x" * (wire.MAX_LINE + 10), "line too long"),
    ],
)
async def test_handle_garbage_refused(gateway: Gateway, first: bytes, reason: str) -> None:
    conn = await connect_raw(gateway)
    conn.write(first if first.endswith(b"\n") or len(first) > wire.MAX_LINE else first + b"\n")
    assert await read_message(conn) == {"t": "error", "reason": reason}
    await assert_closed_by_peer(conn)
    conn.close()
    assert gateway.hub.links == []


# streams


async def test_open_stream_echo(gateway: Gateway, start_agent: StartAgent, echo_port: int) -> None:
    agent = await start_agent()
    stream_id = uuid.uuid4().hex
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, stream_id), "127.0.0.1", echo_port)
    try:
        assert gateway.hub.load(agent.exit_id) == 1
        payload = os.urandom(300_000)
        conn.write(payload)
        echoed = b""
        async with asyncio.timeout(WAIT):
            while len(echoed) < len(payload):
                chunk = await conn.read()
                assert chunk, "the stream ended early"
                echoed += chunk
        assert echoed == payload
        assert conn.transport is not None
        conn.transport.write_eof()
        async with asyncio.timeout(WAIT):
            assert await conn.read() == b""  # the echo server's close came back through
    finally:
        conn.close()
        gateway.hub.stream_closed(agent.exit_id)
    assert gateway.hub.load(agent.exit_id) == 0

    await until(lambda: stream_length(gateway.redis))
    reports = await usage_reports(gateway.redis)
    assert len(reports) == 1
    report = reports[0]
    assert isinstance(report, AgentReport)
    assert report.event_id == stream_id
    assert report.provider == agent.account.address
    assert report.exit_id == agent.exit_id
    assert (report.bytes_up, report.bytes_down) == (len(payload), len(payload))
    assert report.outcome == "gateway_closed"
    assert report.opened_at <= report.closed_at
    assert agent.session.served == 1


async def stream_length(redis: Redis) -> bool:
    return await redis.xlen(USAGE_STREAM) > 0


async def test_open_stream_sequential(gateway: Gateway, start_agent: StartAgent, echo_port: int) -> None:
    agent = await start_agent(pool_size=1)
    for index in range(5):
        conn = await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
        try:
            message = f"message {index}".encode()
            conn.write(message)
            async with asyncio.timeout(WAIT):
                received = b""
                while len(received) < len(message):
                    received += await conn.read()
            assert received == message
        finally:
            conn.close()
            gateway.hub.stream_closed(agent.exit_id)
    await until(lambda: usage_count(gateway.redis, 5))
    reports = await usage_reports(gateway.redis)
    assert sorted(report.bytes_up for report in reports) == [9] * 5
    assert agent.session.served == 5


async def usage_count(redis: Redis, count: int) -> bool:
    return len(await usage_reports(redis)) >= count


async def test_open_stream_policy_refused(gateway: Gateway, start_agent: StartAgent, echo_port: int) -> None:
    agent = await start_agent(ExitPolicy())  # no allow_private
    with pytest.raises(DialError) as info:
        await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
    assert info.value.code is DialErrorCode.POLICY
    assert info.value.reason == "private, loopback, link-local or reserved destination"
    assert info.value.exit_id == agent.exit_id
    assert not info.value.code.retryable
    assert gateway.hub.load(agent.exit_id) == 0
    assert agent.session.served == 0


async def test_open_stream_policy_port_refused(gateway: Gateway, start_agent: StartAgent) -> None:
    agent = await start_agent()
    with pytest.raises(DialError) as info:
        await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", 25)
    assert info.value.code is DialErrorCode.POLICY
    assert info.value.reason == "port 25 (mail) is not allowed by this exit"


async def test_open_stream_refused(gateway: Gateway, start_agent: StartAgent, closed_port: int) -> None:
    agent = await start_agent()
    with pytest.raises(DialError) as info:
        await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", closed_port)
    assert info.value.code is DialErrorCode.REFUSED
    assert info.value.exit_id == agent.exit_id
    assert gateway.hub.load(agent.exit_id) == 0
    assert gateway.hub.is_available(agent.exit_id)  # a refused destination is not the exit's fault


async def test_open_stream_unknown_exit(gateway: Gateway) -> None:
    with pytest.raises(DialError) as info:
        await gateway.hub.open_stream(ticket("0123456789abcdef", uuid.uuid4().hex), "127.0.0.1", 80)
    assert info.value.code is DialErrorCode.EXIT
    assert info.value.exit_id == "0123456789abcdef"


# the control connection ends


async def test_control_closed_deregisters(gateway: Gateway, start_agent: StartAgent) -> None:
    agent = await start_agent(serve=False)  # no data connections: a stream has to wait for one
    assert gateway.hub.is_available(agent.exit_id)
    waiting = [
        asyncio.create_task(gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", 80))
        for _ in range(2)
    ]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)
    await agent.session.close()  # closes the control connection
    for task in waiting:
        async with asyncio.timeout(WAIT):
            with pytest.raises(DialError) as info:
                await task
        assert info.value.code is DialErrorCode.EXIT
    assert not gateway.hub.is_available(agent.exit_id)
    assert gateway.hub.links == []
    await until(lambda: live_ids_empty(gateway))
    await until(lambda: pool_keys_empty(gateway))
    with pytest.raises(DialError) as info:
        await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", 80)
    assert info.value.code is DialErrorCode.EXIT


async def live_ids_empty(gateway: Gateway) -> bool:
    return await gateway.registry.live_ids() == set()


async def test_serving_agent_stop_deregisters(gateway: Gateway, start_agent: StartAgent) -> None:
    agent = await start_agent()
    assert await gateway.registry.live_ids() == {agent.exit_id}
    await stop_agent(agent)
    await until(lambda: not gateway.hub.is_available(agent.exit_id))
    await until(lambda: pool_keys_empty(gateway))
    assert gateway.hub.links == []


def sockets_connected_to(port: int) -> int:
    """How many TCP sockets of this process are connected to ``port`` on 127.0.0.1."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        columns = line.split()
        if int(columns[2].rsplit(":", 1)[1], 16) == port and columns[9] in inodes:
            count += 1
    return count


async def test_agent_close_closes_data_connections(gateway: Gateway, start_agent: StartAgent) -> None:
    agent = await start_agent(pool_size=3)
    link = gateway.hub.links[0]
    await until(lambda: len(link.idle) == 3)
    assert sockets_connected_to(gateway.port) == 4  # the control connection and 3 idle ones
    await agent.session.close()
    await until(lambda: gateway.hub.links == [])
    async with asyncio.timeout(WAIT):
        await asyncio.gather(agent.serving, return_exceptions=True)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    try:
        # Every connection the agent opened to the gateway is closed, not left half-open.
        assert sockets_connected_to(gateway.port) == 0
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # free what a leak left behind here rather than in a later test


async def test_silent_agent_dropped(redis: Redis) -> None:
    async with running_gateway(redis, heartbeat_interval=0.1) as gateway, agent_starter(gateway) as start:
        agent = await start(serve=False)  # logged in, but never heartbeats
        assert gateway.hub.is_available(agent.exit_id)
        await until(lambda: not gateway.hub.is_available(agent.exit_id))
        await until(lambda: pool_keys_empty(gateway))


async def test_heartbeat_refreshes_liveness(redis: Redis) -> None:
    async with running_gateway(redis, heartbeat_interval=0.1) as gateway, agent_starter(gateway) as start:
        agent = await start()
        member = keys.alive_member(NODE, agent.exit_id)
        first = await redis.zscore(keys.alive(), member)
        assert first is not None

        async def beaten() -> bool:
            score = await redis.zscore(keys.alive(), member)
            return score is not None and score > first

        await until(beaten)
        assert gateway.hub.is_available(agent.exit_id)  # a beating agent is never dropped


# what the agent advertises: policy, limits, serving state


async def test_refusal_call(gateway: Gateway, start_agent: StartAgent) -> None:
    domains, networks = parse_blocked(["blocked.test,93.184.215.0/24"])
    policy = ExitPolicy(
        ports=frozenset({80, 443}),
        protocols=frozenset({"http", "https"}),
        blocked_domains=domains,
        blocked_networks=networks,
    )
    agent = await start_agent(policy, limits=Limits(cap_day=10**9, hours=(parse_window("00:00-23:59"),)))
    hub, exit_id = gateway.hub, agent.exit_id
    link = hub.links[0]
    assert link.policy == policy
    assert link.limits.cap_day == 10**9 and [str(w) for w in link.limits.hours] == ["00:00-23:59"]
    assert hub.refusal(exit_id, "www.example.org", 443, "connect") is None
    assert hub.refusal(exit_id, "www.example.org", 80, "http") is None
    assert (
        hub.refusal(exit_id, "www.example.org", 443, "socks5")
        == "protocol socks5 is not allowed by this exit"
    )
    assert hub.refusal(exit_id, "www.example.org", 22, "connect") == "port 22 is not allowed by this exit"
    assert hub.refusal(exit_id, "a.blocked.test", 443, "https") == (
        "destinations under blocked.test are blocked by this exit"
    )
    assert hub.refusal(exit_id, "93.184.215.14", 443, "connect") == (
        "destination 93.184.215.14 is in 93.184.215.0/24, blocked by this exit"
    )
    assert hub.refusal(exit_id, "10.0.0.1", 443, "connect") == (
        "private, loopback, link-local or reserved destination"
    )
    assert hub.refusal("0123456789abcdef", "www.example.org", 443, "connect") == "exit is offline"


async def test_refusal_matches_the_agents_own(
    gateway: Gateway, start_agent: StartAgent, echo_port: int
) -> None:
    agent = await start_agent(ExitPolicy(allow_private=True, protocols=frozenset({"http"})))
    assert gateway.hub.refusal(agent.exit_id, "127.0.0.1", echo_port, "connect") == (
        "protocol https is not allowed by this exit"
    )
    with pytest.raises(DialError) as info:  # asked anyway, the agent refuses for the same reason
        await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
    assert info.value.code is DialErrorCode.POLICY
    assert info.value.reason == "protocol https is not allowed by this exit"


async def test_open_stream_blocked_domain_refused_before_dns(
    gateway: Gateway, start_agent: StartAgent
) -> None:
    domains, _ = parse_blocked(["invalid"])
    agent = await start_agent(ExitPolicy(allow_private=True, blocked_domains=domains))
    with pytest.raises(DialError) as info:  # "x.invalid" never resolves: a DNS error if it were looked up
        await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "x.invalid", 80)
    assert info.value.code is DialErrorCode.POLICY
    assert info.value.reason == "destinations under invalid are blocked by this exit"


async def test_open_stream_blocked_network_refused_after_dns(
    gateway: Gateway, start_agent: StartAgent, echo_port: int
) -> None:
    _, networks = parse_blocked(["127.0.0.0/8"])
    agent = await start_agent(ExitPolicy(allow_private=True, blocked_networks=networks))
    assert gateway.hub.refusal(agent.exit_id, "localhost", echo_port, "connect") is None  # no DNS here
    with pytest.raises(DialError) as info:
        await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "localhost", echo_port)
    assert info.value.code is DialErrorCode.POLICY
    assert info.value.reason == "destination 127.0.0.1 is in 127.0.0.0/8, blocked by this exit"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_serving_state_follows_the_hours(
    gateway: Gateway, start_agent: StartAgent, echo_port: int
) -> None:
    noon = 1_777_000_000 - 1_777_000_000 % 86_400 + 12 * 3600  # 12:00 UTC
    clock = Clock(noon)
    governor = Governor(Limits(hours=(parse_window("22:00-07:00"),), tz="UTC"), clock=clock)
    agent = await start_agent(governor=governor)
    hub, exit_id = gateway.hub, agent.exit_id
    closed = ServingState(False, "outside the serving hours (22:00-07:00)", noon + 10 * 3600)
    assert hub.serving_state(exit_id) == closed  # advertised with the login
    assert not hub.is_available(exit_id)  # so the selector passes it by
    assert hub.refusal(exit_id, "127.0.0.1", echo_port, "connect") == closed.reason
    with pytest.raises(DialError) as info:  # asked anyway, the agent refuses, retryably
        await hub.open_stream(ticket(exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
    assert info.value.code is DialErrorCode.EXIT
    assert info.value.reason == "not serving: outside the serving hours (22:00-07:00)"

    clock.now = noon + 10 * 3600  # 22:00
    governor.refresh()
    await until(lambda: hub.is_available(exit_id))
    assert hub.serving_state(exit_id) == ServingState()
    assert hub.refusal(exit_id, "127.0.0.1", echo_port, "connect") is None
    conn = await hub.open_stream(ticket(exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
    conn.close()
    hub.stream_closed(exit_id)

    clock.now = noon + 19 * 3600  # 07:00 the next day
    governor.refresh()
    await until(lambda: not hub.is_available(exit_id))
    assert hub.serving_state(exit_id) == ServingState(
        False, "outside the serving hours (22:00-07:00)", noon + 34 * 3600
    )


@pytest.mark.parametrize("reuse", [True, False], ids=["reused", "not-reused"])
@pytest.mark.parametrize("limits", [{}, {"cap_day": 10**9}], ids=["ungated", "gated"])
async def test_streams_running_when_the_serving_hours_end_are_cut(
    gateway: Gateway, start_agent: StartAgent, echo_port: int, reuse: bool, limits: dict[str, int]
) -> None:
    night = 1_777_000_000 - 1_777_000_000 % 86_400 + 22 * 3600  # 22:00 UTC
    clock = Clock(night)
    governor = Governor(Limits(hours=(parse_window("22:00-07:00"),), tz="UTC", **limits), clock=clock)
    agent = await start_agent(governor=governor, reuse=reuse)
    stream_id = uuid.uuid4().hex
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, stream_id), "127.0.0.1", echo_port)
    try:
        payload = os.urandom(10_000)
        conn.write(payload)
        echoed = b""
        async with asyncio.timeout(WAIT):
            while len(echoed) < len(payload):
                echoed += await conn.read()
        clock.now = night + 9 * 3600  # 07:00: the window closes with the stream still open
        governor.refresh()
        assert await read_until_eof(conn) == b""  # the agent ends it, as a cap would
    finally:
        conn.close()
        gateway.hub.stream_closed(agent.exit_id)
    await until(lambda: usage_count(gateway.redis, 1))
    (report,) = await usage_reports(gateway.redis)
    assert isinstance(report, AgentReport)
    assert (report.event_id, report.bytes_up, report.bytes_down) == (stream_id, 10_000, 10_000)
    assert report.outcome == "outside_hours"


async def read_until_eof(conn: Conn) -> bytes:
    received = b""
    async with asyncio.timeout(WAIT):
        while chunk := await conn.read():
            received += chunk
    return received


async def test_cap_reached_mid_stream_ends_it_and_meters_it_once(
    gateway: Gateway, start_agent: StartAgent, echo_port: int
) -> None:
    cap = 100_000
    agent = await start_agent(limits=Limits(cap_day=cap))
    hub, exit_id = gateway.hub, agent.exit_id
    stream_id = uuid.uuid4().hex
    conn = await hub.open_stream(ticket(exit_id, stream_id), "127.0.0.1", echo_port)
    try:
        first = os.urandom(40_000)
        conn.write(first)
        echoed = b""
        async with asyncio.timeout(WAIT):
            while len(echoed) < len(first):
                echoed += await conn.read()
        assert echoed == first  # 80,000 bytes of the cap used, both ways
        conn.write(os.urandom(40_000))  # only 20,000 of these fit
        echoed += await read_until_eof(conn)  # the agent ends the stream cleanly: EOF, not a reset
    finally:
        conn.close()
        hub.stream_closed(exit_id)
    assert echoed == first  # the stream ended at the cap, before any of the rest came back

    await until(lambda: usage_count(gateway.redis, 1))
    await asyncio.sleep(0.1)
    reports = [report for report in await usage_reports(gateway.redis) if report.event_id == stream_id]
    assert len(reports) == 1  # reported once
    report = reports[0]
    assert isinstance(report, AgentReport)
    assert (report.bytes_up, report.bytes_down) == (60_000, 40_000)  # exactly what was relayed
    assert report.outcome == "cap_reached"

    await until(lambda: not hub.is_available(exit_id))
    state = hub.serving_state(exit_id)
    assert state is not None and state.reason == "daily cap of 100.0 kB reached"
    with pytest.raises(DialError) as info:
        await hub.open_stream(ticket(exit_id, uuid.uuid4().hex), "127.0.0.1", echo_port)
    assert info.value.code is DialErrorCode.EXIT
    assert info.value.reason == "not serving: daily cap of 100.0 kB reached"


@pytest.fixture
async def sink_port() -> AsyncIterator[int]:
    """A local server that reads and discards everything sent to it."""

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 16):
                pass
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def front_for(conn: Conn, done: asyncio.Future[SpliceResult]) -> AsyncIterator[int]:
    """A port whose first client is spliced to the stream ``conn`` as the front does; ``done``
    gets the splice's result, the gateway's meter of the stream."""

    class Front(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            exit_transport, pending, eof = conn.detach()
            Splice(
                cast(asyncio.Transport, transport),
                exit_transport,
                on_done=done.set_result,
                b_data=pending,
                b_eof=eof,
                idle_timeout=WAIT,
            )

    server = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


UPLOAD_GUARD = 256 * 1024 * 1024  # bytes a client uploading past a cap gives up after
CUT_SLACK = 4 * 1024 * 1024  # bytes in flight when a stream is cut: the buffers between the meters


@pytest.mark.parametrize("reuse", [True, False], ids=["reused", "not-reused"])
async def test_cap_cut_stops_a_client_that_keeps_uploading(
    gateway: Gateway, start_agent: StartAgent, sink_port: int, reuse: bool
) -> None:
    cap = 2_000_000
    agent = await start_agent(limits=Limits(cap_day=cap), reuse=reuse)
    stream_id = uuid.uuid4().hex
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, stream_id), "127.0.0.1", sink_port)
    done: asyncio.Future[SpliceResult] = asyncio.get_running_loop().create_future()
    sent = 0
    async with front_for(conn, done) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        chunk = bytes(1 << 16)
        with contextlib.suppress(ConnectionError):  # the gateway drops the client once the agent went
            async with asyncio.timeout(WAIT):
                while sent < UPLOAD_GUARD and not writer.is_closing():
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
        writer.close()
        async with asyncio.timeout(WAIT):
            result = await done
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    gateway.hub.stream_closed(agent.exit_id)
    await until(lambda: usage_count(gateway.redis, 1))
    (report,) = [report for report in await usage_reports(gateway.redis) if report.event_id == stream_id]
    assert (report.bytes_up, report.outcome) == (cap, "cap_reached")
    # The agent stops reading at the cut: the gateway relays no more than the buffers between
    # them hold, not what the client goes on sending.
    assert sent < UPLOAD_GUARD
    assert cap <= result.a_to_b <= cap + CUT_SLACK, result.a_to_b - cap


async def test_rate_limited_stream_relays_every_byte(
    gateway: Gateway, start_agent: StartAgent, echo_port: int
) -> None:
    agent = await start_agent(limits=Limits(rate_stream=2_000_000, rate_total=4_000_000))
    stream_id = uuid.uuid4().hex
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, stream_id), "127.0.0.1", echo_port)
    payload = os.urandom(600_000)  # several times the buckets' burst: reading pauses and resumes
    try:
        conn.write(payload)
        assert conn.transport is not None
        conn.transport.write_eof()
        echoed = await read_until_eof(conn)
    finally:
        conn.close()
        gateway.hub.stream_closed(agent.exit_id)
    assert echoed == payload
    await until(lambda: usage_count(gateway.redis, 1))
    (report,) = await usage_reports(gateway.redis)
    assert (report.bytes_up, report.bytes_down) == (len(payload), len(payload))
    assert report.outcome == "gateway_closed"
