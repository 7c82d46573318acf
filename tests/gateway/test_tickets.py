"""Stream tickets and confirmed usage reports.

``TicketKey`` signs and checks tickets; a real ``TunnelHub`` (Redis db 12, see ``test_tunnel``)
sends them with every dial, confirms an agent's usage report only once Redis holds it, and meters
on the ticket alone a report the agent could not deliver to the node that opened the stream.
``UsageReports`` is the agent's bookkeeping of unconfirmed reports, tested with real
``AgentSession`` objects, unconnected where only the bookkeeping matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from redis.asyncio import Redis

from billing.keys import USAGE_STREAM
from billing.usage import AgentReport, UsageEvent, UsagePublisher
from gateway import wire
from gateway.agent.fleet import _Fleet
from gateway.agent.governor import Governor
from gateway.agent.outbox import UsageReports
from gateway.agent.session import AgentSession
from gateway.agent.settings import AgentSettings, ExitSpec
from gateway.conn import Conn
from gateway.settings import GatewaySettings
from gateway.tickets import MAC_HEX, Ticket, TicketKey
from gateway.tunnel import TunnelHub, exit_id_for
from gateway.wire import WireError
from pool import keys
from pool.nodes import NodeInfo
from pool.registry import ExitRegistry
from tests.gateway.test_tunnel import (
    ALLOW_PRIVATE,
    BIND,
    BOOT,
    NODE,
    REDIS_URL,
    WAIT,
    Gateway,
    connect_raw,
    raw_login,
    read_message,
    running_gateway,
    ticket,
    until,
    usage_reports,
)

OTHER_NODE = "gw-other"
LOST_NODE = "gw-lost"


def full_ticket(exit_id: str, stream: str, *, node: str = LOST_NODE, deal: str = "deal-7") -> Ticket:
    """A ticket whose every field differs from ``ticket()``'s defaults, to see each one carried;
    opened by the hub under test when ``node`` is its node, else by a process with boot ""."""
    return Ticket(
        stream, node, exit_id, "bob", deal, "socks5", "example.org:443", 2, BOOT if node == NODE else ""
    )


def a_key() -> TicketKey:
    return TicketKey(os.urandom(32))


@pytest.fixture
async def gateway(redis: Redis) -> AsyncIterator[Gateway]:
    async with running_gateway(redis) as gateway:
        yield gateway


# TicketKey


def test_sign_check_round_trip() -> None:
    key = a_key()
    t = full_ticket("0123456789abcdef", uuid.uuid4().hex)
    mac = key.sign(t)
    assert len(mac) == MAC_HEX == 32
    assert int(mac, 16) >= 0 and mac == mac.lower()
    # What the agent echoes has been through JSON twice.
    raw = orjson.loads(orjson.dumps(t.to_wire()))
    assert key.check(raw, mac) == t
    assert key.sign(t) == mac  # deterministic


def test_sign_depends_on_key() -> None:
    t = ticket("0123456789abcdef", uuid.uuid4().hex)
    key, other = a_key(), a_key()
    assert key.sign(t) != other.sign(t)
    with pytest.raises(WireError, match="signature does not match"):
        other.check(t.to_wire(), key.sign(t))


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, "f" * 32),  # stream
        (1, "gw-else"),  # node
        (2, "fedcba9876543210"),  # exit
        (3, "mallory"),  # requester
        (4, "deal-8"),  # deal
        (4, ""),  # deal removed
        (5, "http"),  # protocol
        (6, "example.org:80"),  # target
        (7, 3),  # attempts
    ],
)
def test_check_tampered_field_refused(index: int, value: Any) -> None:
    key = a_key()
    t = full_ticket("0123456789abcdef", "a" * 32)
    mac = key.sign(t)
    raw = t.to_wire()
    assert raw[index] != value
    raw[index] = value
    Ticket.from_wire(raw)  # well formed: only the signature gives it away
    with pytest.raises(WireError, match="signature does not match"):
        key.check(raw, mac)


@pytest.mark.parametrize("mac", [None, 123, ["x"], b"0" * 32, "", "0" * 32])
def test_check_bad_mac_refused(mac: Any) -> None:
    key = a_key()
    t = ticket("0123456789abcdef", uuid.uuid4().hex)
    with pytest.raises(WireError, match="signature does not match"):
        key.check(t.to_wire(), mac)


def test_check_mac_variants_refused() -> None:
    key = a_key()
    t = ticket("0123456789abcdef", uuid.uuid4().hex)
    mac = key.sign(t)
    for wrong in (mac[:-1], mac + "0", mac.upper(), " " + mac):
        if wrong == mac:
            continue  # mac.upper() of an all-digit MAC
        with pytest.raises(WireError):
            key.check(t.to_wire(), wrong)


def test_check_non_ascii_mac_refused_as_wire_error() -> None:
    """A MAC is agent input: any string must be refused with WireError (the hub only catches that)."""
    key = a_key()
    t = ticket("0123456789abcdef", uuid.uuid4().hex)
    with pytest.raises(WireError):
        key.check(t.to_wire(), "é" * MAC_HEX)


GOOD = ["a" * 32, LOST_NODE, "0123456789abcdef", "bob", "", "connect", "example.org:443", 1, ""]


def _with(index: int, value: Any) -> list[Any]:
    raw = list(GOOD)
    raw[index] = value
    return raw


@pytest.mark.parametrize(
    "raw",
    [
        _with(0, 5),  # stream not a string
        _with(1, None),
        _with(3, ["bob"]),
        _with(4, None),  # no deal is "", not null
        _with(6, 443),
        _with(7, True),  # attempts a bool
        _with(7, 0),
        _with(7, -1),
        _with(7, 100),
        _with(7, 2**70),
        _with(7, 1.0),
        _with(7, "1"),
        _with(3, "x" * 301),  # overlong text
        _with(6, "h" * 301),
    ],
)
def test_check_malformed_ticket_refused(raw: list[Any]) -> None:
    key = a_key()
    # Signed as it is (where JSON can carry it), so only the validation can refuse it.
    mac = "0" * MAC_HEX if raw[7] == 2**70 else key.sign(Ticket(*raw))
    with pytest.raises(WireError, match="bad ticket"):
        key.check(raw, mac)


@pytest.mark.parametrize("raw", [None, "ticket", {"stream": "a" * 32}, GOOD[:7], [*GOOD, 1], []])
def test_check_ticket_not_a_list_of_nine_refused(raw: Any) -> None:
    with pytest.raises(WireError, match="bad ticket"):
        a_key().check(raw, "0" * 32)


@pytest.mark.parametrize("raw", [_with(7, 99), _with(3, "x" * 300), _with(4, ""), _with(6, "")])
def test_check_limits_accepted(raw: list[Any]) -> None:
    key = a_key()
    t = Ticket(*raw)
    assert key.check(raw, key.sign(t)) == t


@pytest.mark.parametrize("size", [0, 16, 31])
def test_short_key_refused(size: int) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TicketKey(b"k" * size)


def test_key_of_32_bytes_accepted() -> None:
    t = ticket("0123456789abcdef", uuid.uuid4().hex)
    assert TicketKey(b"k" * 32).check(t.to_wire(), TicketKey(b"k" * 32).sign(t)) == t


async def test_shared_key_same_for_every_node(redis: Redis) -> None:
    first = await TicketKey.shared(redis)
    stored = await redis.get(keys.ticket_key())
    assert isinstance(stored, bytes) and len(stored) == 32
    client = Redis.from_url(REDIS_URL)  # another node, its own client
    try:
        second = await TicketKey.shared(client)
    finally:
        await client.aclose()
    assert await redis.get(keys.ticket_key()) == stored  # the second node did not replace it
    t = full_ticket("0123456789abcdef", uuid.uuid4().hex)
    assert second.check(t.to_wire(), first.sign(t)) == t
    assert first.sign(t) == second.sign(t) == TicketKey(stored).sign(t)
    # A cluster without a key gets a new, random one.
    await redis.delete(keys.ticket_key())
    third = await TicketKey.shared(redis)
    assert third.sign(t) != first.sign(t)


async def test_shared_key_concurrent_first_nodes_agree(redis: Redis) -> None:
    clients = [Redis.from_url(REDIS_URL) for _ in range(4)]
    try:
        key_list = await asyncio.gather(*(TicketKey.shared(client) for client in clients))
    finally:
        for client in clients:
            await client.aclose()
    t = ticket("0123456789abcdef", uuid.uuid4().hex)
    assert len({key.sign(t) for key in key_list}) == 1


# the hub: dial tickets, acks, orphans (raw agent connections)


@dataclass
class RawAgent:
    control: Conn
    account: LocalAccount
    exit_id: str
    token: str


StartRawAgent = Callable[[Gateway], Awaitable[RawAgent]]


@pytest.fixture
async def raw_agent() -> AsyncIterator[StartRawAgent]:
    """Log in by hand (see ``raw_login``); the control connections are closed after the test."""
    opened: list[Conn] = []

    async def start(gateway: Gateway) -> RawAgent:
        account = Account.create()
        control = await raw_login(gateway, account, account)
        opened.append(control)
        welcome = await read_message(control)
        assert welcome["t"] == "welcome"
        return RawAgent(control, account, exit_id_for(account.address, BIND), welcome["token"])

    yield start
    for conn in opened:
        conn.close()
    await asyncio.sleep(0.01)


def usage(
    exit_id: str,
    stream: str,
    *,
    t: Ticket | None = None,
    mac: Any = None,
    up: int = 123,
    down: int = 4567,
) -> dict[str, Any]:
    """A usage report as the agent sends it; with ``t``, the ticket and its ``mac`` echoed."""
    message: dict[str, Any] = {
        "t": "usage",
        "stream": stream,
        "exit": exit_id,
        "up": up,
        "down": down,
        "opened": 1000.0,
        "closed": 1010.5,
        "outcome": "gateway_lost",
    }
    if t is not None:
        message["ticket"] = t.to_wire()
        message["mac"] = mac
    return message


async def signed_usage(gateway: Gateway, agent: RawAgent, t: Ticket, **counts: int) -> dict[str, Any]:
    key = await TicketKey.shared(gateway.redis)
    return usage(agent.exit_id, t.stream, t=t, mac=key.sign(t), **counts)


def expected_report(agent: RawAgent, stream: str, up: int = 123, down: int = 4567) -> AgentReport:
    return AgentReport(stream, agent.account.address, agent.exit_id, up, down, 1000.0, 1010.5, "gateway_lost")


async def test_dial_carries_signed_ticket_and_report_is_acked_once_in_redis(
    raw_agent: StartRawAgent, gateway: Gateway
) -> None:
    agent = await raw_agent(gateway)
    data = await connect_raw(gateway)
    data.write(wire.encode({"t": "data", "token": agent.token}))
    link = gateway.hub.links[0]
    await until(lambda: len(link.idle) == 1)  # no "more" on the control connection
    t = ticket(agent.exit_id, uuid.uuid4().hex)
    opening = asyncio.create_task(gateway.hub.open_stream(t, "127.0.0.1", 80))
    dial = await read_message(data)
    assert dial["t"] == "dial"
    assert (dial["stream"], dial["exit"], dial["host"], dial["port"]) == (
        t.stream,
        agent.exit_id,
        "127.0.0.1",
        80,
    )
    assert dial["ticket"] == t.to_wire()
    key = await TicketKey.shared(gateway.redis)
    assert key.check(dial["ticket"], dial["mac"]) == t
    with pytest.raises(WireError):
        a_key().check(dial["ticket"], dial["mac"])
    data.write(wire.encode({"t": "ok"}))
    async with asyncio.timeout(WAIT):
        conn = await opening
    conn.close()
    gateway.hub.stream_closed(agent.exit_id)
    data.close()
    assert await gateway.redis.xlen(USAGE_STREAM) == 0

    # Reported on the link that opened it, with the ticket echoed as the real agent does.
    agent.control.write(wire.encode(usage(agent.exit_id, t.stream, t=t, mac=dial["mac"])))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    # The ack came only once Redis held the report: no waiting needed to find it there.
    assert await usage_reports(gateway.redis) == [expected_report(agent, t.stream)]
    assert t.stream not in link.streams


async def test_report_of_opened_stream_without_ticket_still_acked(
    raw_agent: StartRawAgent, gateway: Gateway
) -> None:
    agent = await raw_agent(gateway)
    data = await connect_raw(gateway)
    data.write(wire.encode({"t": "data", "token": agent.token}))
    await until(lambda: len(gateway.hub.links[0].idle) == 1)
    t = ticket(agent.exit_id, uuid.uuid4().hex)
    opening = asyncio.create_task(gateway.hub.open_stream(t, "127.0.0.1", 80))
    assert (await read_message(data))["t"] == "dial"
    data.write(wire.encode({"t": "ok"}))
    async with asyncio.timeout(WAIT):
        (await opening).close()
    gateway.hub.stream_closed(agent.exit_id)
    data.close()
    agent.control.write(wire.encode(usage(agent.exit_id, t.stream, up=7, down=8)))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    assert await usage_reports(gateway.redis) == [expected_report(agent, t.stream, 7, 8)]


@pytest.mark.parametrize(("deal", "deal_id"), [("deal-7", "deal-7"), ("", None)])
async def test_orphan_of_lost_node_metered_from_ticket(
    raw_agent: StartRawAgent, gateway: Gateway, deal: str, deal_id: str | None
) -> None:
    agent = await raw_agent(gateway)
    t = full_ticket(agent.exit_id, uuid.uuid4().hex, deal=deal)
    message = await signed_usage(gateway, agent, t)
    agent.control.write(wire.encode(message))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    event = UsageEvent(
        event_id=t.stream,
        deal_id=deal_id,
        requester="bob",
        provider=agent.account.address,
        exit_id=agent.exit_id,
        node=LOST_NODE,
        protocol="socks5",
        target="example.org:443",
        bytes_up=123,
        bytes_down=4567,
        opened_at=1000.0,
        closed_at=1010.5,
        outcome="node_lost",
        attempts=2,
    )
    assert await usage_reports(gateway.redis) == [event, expected_report(agent, t.stream)]

    # Sent again (the ack was lost): stored again, under the same event id, for ingestion to dedup.
    agent.control.write(wire.encode(message))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    items = await usage_reports(gateway.redis)
    assert items == [event, expected_report(agent, t.stream)] * 2
    assert {item.event_id for item in items} == {t.stream}
    assert gateway.hub.is_available(agent.exit_id)


async def test_orphan_of_live_node_held(raw_agent: StartRawAgent, gateway: Gateway) -> None:
    agent = await raw_agent(gateway)
    gateway.hub.set_nodes([NodeInfo(NODE, ":1", BOOT), NodeInfo(OTHER_NODE, ":2")])
    nodes = await read_message(agent.control)
    assert nodes["t"] == "nodes"
    t = full_ticket(agent.exit_id, uuid.uuid4().hex, node=OTHER_NODE)
    message = await signed_usage(gateway, agent, t)
    agent.control.write(wire.encode(message))
    assert await read_message(agent.control) == {"t": "held", "streams": [t.stream]}
    await gateway.publisher.flush()  # anything published with the hold would be in Redis now
    assert await gateway.redis.xlen(USAGE_STREAM) == 0
    assert gateway.hub.is_available(agent.exit_id)

    # The opener leaves the node list: the same report is now taken and metered here.
    gateway.hub.set_nodes([NodeInfo(NODE, ":1", BOOT)])
    assert (await read_message(agent.control))["t"] == "nodes"
    agent.control.write(wire.encode(message))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    items = await usage_reports(gateway.redis)
    assert [type(item) for item in items] == [UsageEvent, AgentReport]
    assert isinstance(items[0], UsageEvent)
    assert (items[0].node, items[0].outcome, items[0].event_id) == (OTHER_NODE, "node_lost", t.stream)
    assert items[1] == expected_report(agent, t.stream)


async def test_orphan_of_this_node_reported_only(raw_agent: StartRawAgent, gateway: Gateway) -> None:
    agent = await raw_agent(gateway)
    # This node is in the live list too: its own tickets are never held.
    gateway.hub.set_nodes([NodeInfo(NODE, ":1", BOOT)])
    assert (await read_message(agent.control))["t"] == "nodes"
    t = full_ticket(agent.exit_id, uuid.uuid4().hex, node=NODE)
    message = await signed_usage(gateway, agent, t, up=5, down=6)
    agent.control.write(wire.encode(message))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    assert await usage_reports(gateway.redis) == [expected_report(agent, t.stream, 5, 6)]
    agent.control.write(wire.encode(message))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    items = await usage_reports(gateway.redis)
    assert items == [expected_report(agent, t.stream, 5, 6)] * 2  # no UsageEvent: this node makes its own
    assert items[0].event_id == items[1].event_id == t.stream


def _bad_orphans(exit_id: str, key: TicketKey) -> dict[str, dict[str, Any]]:
    stream = uuid.uuid4().hex
    t = full_ticket(exit_id, stream)
    tampered = t.to_wire()
    tampered[3] = "mallory"
    wrong_stream = full_ticket(exit_id, uuid.uuid4().hex)  # validly signed, for another stream
    wrong_exit = full_ticket("fedcba9876543210", stream)  # validly signed, for another exit
    malformed = t.to_wire()[:7]
    return {
        "other key": usage(exit_id, stream, t=t, mac=a_key().sign(t)),
        "mac not a string": usage(exit_id, stream, t=t, mac=12345),
        "no mac": {key: value for key, value in usage(exit_id, stream, t=t).items() if key != "mac"},
        "tampered requester": {**usage(exit_id, stream, t=t, mac=key.sign(t)), "ticket": tampered},
        "ticket of another stream": usage(exit_id, stream, t=wrong_stream, mac=key.sign(wrong_stream)),
        "ticket of another exit": usage(exit_id, stream, t=wrong_exit, mac=key.sign(wrong_exit)),
        "malformed ticket": {**usage(exit_id, stream, t=t, mac=key.sign(t)), "ticket": malformed},
        "ticket null": {**usage(exit_id, stream, t=t, mac=key.sign(t)), "ticket": None},
    }


BAD_ORPHANS = list(_bad_orphans("0123456789abcdef", a_key()))


@pytest.mark.parametrize("case", BAD_ORPHANS)
async def test_orphan_with_bad_ticket_refused_link_stays_up(
    raw_agent: StartRawAgent, gateway: Gateway, case: str
) -> None:
    agent = await raw_agent(gateway)
    key = await TicketKey.shared(gateway.redis)
    bad = _bad_orphans(agent.exit_id, key)[case]
    agent.control.write(wire.encode(bad))
    agent.control.write(wire.encode({"t": "hb"}))
    # A good orphan after it: the link still reads, and the bad one was refused, with no record.
    good = full_ticket(agent.exit_id, uuid.uuid4().hex, node=NODE)
    agent.control.write(wire.encode(usage(agent.exit_id, good.stream, t=good, mac=key.sign(good))))
    assert await read_message(agent.control) == {"t": "refused", "streams": [bad["stream"]]}
    assert await read_message(agent.control) == {"t": "acked", "streams": [good.stream]}
    assert await usage_reports(gateway.redis) == [expected_report(agent, good.stream)]
    assert gateway.hub.is_available(agent.exit_id)
    assert len(gateway.hub.links) == 1


async def test_orphan_with_non_ascii_mac_refused_link_stays_up(
    raw_agent: StartRawAgent, gateway: Gateway
) -> None:
    agent = await raw_agent(gateway)
    key = await TicketKey.shared(gateway.redis)
    t = full_ticket(agent.exit_id, uuid.uuid4().hex)
    agent.control.write(wire.encode(usage(agent.exit_id, t.stream, t=t, mac="é" * MAC_HEX)))
    good = full_ticket(agent.exit_id, uuid.uuid4().hex, node=NODE)
    agent.control.write(wire.encode(usage(agent.exit_id, good.stream, t=good, mac=key.sign(good))))
    assert await read_message(agent.control) == {"t": "refused", "streams": [t.stream]}
    assert await read_message(agent.control) == {"t": "acked", "streams": [good.stream]}
    assert gateway.hub.is_available(agent.exit_id)


async def test_orphan_for_exit_of_another_agent_ignored(raw_agent: StartRawAgent, gateway: Gateway) -> None:
    agent, other = await raw_agent(gateway), await raw_agent(gateway)
    key = await TicketKey.shared(gateway.redis)
    # The other agent's stream, validly signed: still not this agent's to report.
    t = full_ticket(other.exit_id, uuid.uuid4().hex)
    agent.control.write(wire.encode(usage(other.exit_id, t.stream, t=t, mac=key.sign(t))))
    good = full_ticket(agent.exit_id, uuid.uuid4().hex, node=NODE)
    agent.control.write(wire.encode(usage(agent.exit_id, good.stream, t=good, mac=key.sign(good))))
    assert await read_message(agent.control) == {"t": "acked", "streams": [good.stream]}
    assert await usage_reports(gateway.redis) == [expected_report(agent, good.stream)]


@contextlib.asynccontextmanager
async def gateway_holding_usage(redis: Redis) -> AsyncIterator[Gateway]:
    """A gateway whose publisher is never started: usage reaches Redis only on ``flush()``."""
    settings = GatewaySettings(
        redis_url=REDIS_URL, database_url="unused", node_id=NODE, handshake_timeout=5.0, dial_timeout=5.0
    )
    registry = ExitRegistry(redis, heartbeat_ttl=settings.heartbeat_ttl)
    publisher = UsagePublisher(redis)
    hub = TunnelHub(settings, registry, publisher, tickets=await TicketKey.shared(redis), boot=BOOT)
    hub.set_nodes([NodeInfo(NODE, ":1", BOOT), NodeInfo(OTHER_NODE, ":2")])
    port = await hub.start("127.0.0.1", 0)
    try:
        yield Gateway(hub, registry, redis, settings, publisher, port)
    finally:
        await hub.close()
        await publisher.close()


async def test_no_ack_before_redis_accepts(raw_agent: StartRawAgent, redis: Redis) -> None:
    async with gateway_holding_usage(redis) as gateway:
        agent = await raw_agent(gateway)
        key = await TicketKey.shared(redis)
        mine = full_ticket(agent.exit_id, uuid.uuid4().hex, node=NODE)
        agent.control.write(wire.encode(usage(agent.exit_id, mine.stream, t=mine, mac=key.sign(mine))))
        await until(lambda: gateway.publisher.pending == 1)
        # A hold is answered at once; the earlier report's ack would come before it if it did not
        # wait for Redis.
        held = full_ticket(agent.exit_id, uuid.uuid4().hex, node=OTHER_NODE)
        agent.control.write(wire.encode(usage(agent.exit_id, held.stream, t=held, mac=key.sign(held))))
        assert await read_message(agent.control) == {"t": "held", "streams": [held.stream]}
        assert await redis.xlen(USAGE_STREAM) == 0
        assert await gateway.publisher.flush() == 1
        assert await read_message(agent.control) == {"t": "acked", "streams": [mine.stream]}
        assert await usage_reports(redis) == [expected_report(agent, mine.stream)]


async def test_acks_sent_together_in_one_batch(raw_agent: StartRawAgent, redis: Redis) -> None:
    async with gateway_holding_usage(redis) as gateway:
        agent = await raw_agent(gateway)
        key = await TicketKey.shared(redis)
        tickets = [full_ticket(agent.exit_id, uuid.uuid4().hex, node=NODE) for _ in range(3)]
        for t in tickets:
            agent.control.write(wire.encode(usage(agent.exit_id, t.stream, t=t, mac=key.sign(t))))
        await until(lambda: gateway.publisher.pending == 3)
        assert await gateway.publisher.flush() == 3
        assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream for t in tickets]}


# UsageReports, with real (unconnected) agent sessions


def settings_for(port: int = 1, account: LocalAccount | None = None) -> AgentSettings:
    return AgentSettings(
        gateway_host="127.0.0.1",
        gateway_port=port,
        account=account or Account.create(),
        exits=(ExitSpec(bind=BIND, country="fr"),),
        policy=ALLOW_PRIVATE,
        pool_size=2,
        dial_timeout=5.0,
        handshake_timeout=5.0,
    )


SETTINGS = settings_for()


def session_to(reports: UsageReports, node: str) -> AgentSession:
    """A session as logged in to ``node`` (no connection: what it sends stays in ``unacked``)."""
    session = AgentSession(SETTINGS, reports=reports)
    session.node = node
    return session


def report_of(opener: str | None, stream: str | None = None) -> dict[str, Any]:
    stream = stream or uuid.uuid4().hex
    message = usage("0123456789abcdef", stream)
    if opener is not None:
        t = ticket("0123456789abcdef", stream, node=opener)
        message["ticket"], message["mac"] = t.to_wire(), "0" * 32
    else:
        message["ticket"], message["mac"] = None, None
    return message


@pytest.mark.parametrize("node", [NODE, OTHER_NODE])
async def test_orphan_of_an_earlier_process_of_a_live_node_id_metered(
    raw_agent: StartRawAgent, gateway: Gateway, node: str
) -> None:
    """A node restarted under the same id (``--node-id``, or a ``--workers`` child restarted)
    announces a new boot token: the streams its predecessor opened are lost, and metered here."""
    agent = await raw_agent(gateway)
    gateway.hub.set_nodes([NodeInfo(NODE, ":1", BOOT), NodeInfo(OTHER_NODE, ":2", "new-boot")])
    assert (await read_message(agent.control))["t"] == "nodes"
    t = Ticket(uuid.uuid4().hex, node, agent.exit_id, "bob", "", "http", "example.org:80", 1, "old-boot")
    agent.control.write(wire.encode(await signed_usage(gateway, agent, t)))
    assert await read_message(agent.control) == {"t": "acked", "streams": [t.stream]}
    items = await usage_reports(gateway.redis)
    assert [type(item) for item in items] == [UsageEvent, AgentReport]
    assert isinstance(items[0], UsageEvent)
    assert (items[0].node, items[0].outcome, items[0].protocol) == (node, "node_lost", "http")


async def test_orphan_the_usage_stream_cannot_hold_is_refused(
    raw_agent: StartRawAgent, gateway: Gateway
) -> None:
    agent = await raw_agent(gateway)
    # Validly signed (by a node of another version, say) but not a protocol this one meters.
    t = Ticket(uuid.uuid4().hex, LOST_NODE, agent.exit_id, "bob", "", "quic", "example.org:443", 1, "")
    agent.control.write(wire.encode(await signed_usage(gateway, agent, t)))
    assert await read_message(agent.control) == {"t": "refused", "streams": [t.stream]}
    await gateway.publisher.flush()
    assert await gateway.redis.xlen(USAGE_STREAM) == 0
    assert gateway.hub.is_available(agent.exit_id)


def test_refused_report_is_dropped() -> None:
    reports = UsageReports()
    session = session_to(reports, "n1")
    reports.attach(session)
    kept, refused = report_of("n1"), report_of("n1")
    reports.submit(session, kept)
    reports.submit(session, refused)
    reports.refused(session, [refused["stream"], uuid.uuid4().hex, 7])
    assert session.unacked == {kept["stream"]: kept}
    reports.detach(session)
    assert reports.orphans == 1  # only the one no node refused goes on


def test_report_kept_until_acked() -> None:
    reports = UsageReports()
    session = session_to(reports, "n1")
    reports.attach(session)
    first, second = report_of("n1"), report_of("n1")
    reports.submit(session, first)
    reports.submit(session, second)
    assert session.unacked == {first["stream"]: first, second["stream"]: second}
    assert reports.orphans == 0
    reports.acked(session, [uuid.uuid4().hex, 5, None])  # unknown streams, junk
    reports.acked(session, first["stream"])  # not a list
    assert set(session.unacked) == {first["stream"], second["stream"]}
    reports.acked(session, [first["stream"]])
    assert session.unacked == {second["stream"]: second}
    reports.acked(session, [second["stream"]])
    assert session.unacked == {}
    assert reports.orphans == 0


def test_detach_makes_orphans_until_a_session_serves() -> None:
    reports = UsageReports()
    first = session_to(reports, "n1")
    reports.attach(first)
    messages = [report_of("n1") for _ in range(2)]
    for message in messages:
        reports.submit(first, message)
    reports.detach(first)
    assert first.unacked == {}
    assert reports.orphans == 2
    reports.flush()  # no session serves: they wait
    assert reports.orphans == 2
    # A report of a stream that ends after its session did waits with them.
    late = report_of("n1")
    reports.submit(first, late)
    assert reports.orphans == 3 and first.unacked == {}
    other = session_to(reports, "n2")
    reports.attach(other)  # any serving node takes them when the opener is not reached
    assert reports.orphans == 0
    assert other.unacked == {message["stream"]: message for message in [*messages, late]}


def test_flush_hands_orphans_to_opener_else_anyone() -> None:
    reports = UsageReports()
    anyone, opener = session_to(reports, "n2"), session_to(reports, "n3")
    reports.attach(anyone)
    reports.attach(opener)
    gone = session_to(reports, "n1")  # its session already ended (never attached)
    to_opener, to_unreached, no_ticket = report_of("n3"), report_of("n1"), report_of(None)
    for message in (to_opener, to_unreached, no_ticket):
        reports.submit(gone, message)
    assert opener.unacked == {to_opener["stream"]: to_opener}
    assert anyone.unacked == {to_unreached["stream"]: to_unreached, no_ticket["stream"]: no_ticket}
    assert reports.orphans == 0


def test_opener_reached_again_gets_its_orphans() -> None:
    reports = UsageReports()
    reports.retry = 0.0
    old = session_to(reports, "n1")
    reports.attach(old)
    message = report_of("n1")
    reports.submit(old, message)
    other = session_to(reports, "n2")
    reports.attach(other)
    reports.detach(old)
    assert other.unacked == {message["stream"]: message}  # the opener is not reached
    reports.held(other, [message["stream"]])  # n2 still sees n1 live
    assert other.unacked == {} and reports.orphans == 1
    new = session_to(reports, "n1")
    reports.attach(new)  # n1 reached again: preferred over n2, the first serving session
    assert new.unacked == {message["stream"]: message}
    assert other.unacked == {} and reports.orphans == 0


def test_held_report_waits_retry() -> None:
    reports = UsageReports()
    reports.retry = 3600.0
    session = session_to(reports, "n2")
    reports.attach(session)
    message = report_of("n1")
    reports.submit(session, message)
    reports.held(session, [message["stream"], uuid.uuid4().hex, 7])  # unknown ones ignored
    assert session.unacked == {} and reports.orphans == 1
    reports.flush()
    reports.attach(session_to(reports, "n1"))  # even the opener does not get it before its time
    assert session.unacked == {} and reports.orphans == 1
    reports.held(session, "not a list")
    assert reports.orphans == 1


def test_held_report_resent_after_retry() -> None:
    reports = UsageReports()
    reports.retry = 0.2
    session = session_to(reports, "n2")
    reports.attach(session)
    message = report_of("n1")
    reports.submit(session, message)
    held_at = time.monotonic()
    reports.held(session, [message["stream"]])
    while message["stream"] not in session.unacked:
        assert time.monotonic() - held_at < WAIT
        reports.flush()
        time.sleep(0.01)
    assert time.monotonic() - held_at >= reports.retry
    assert session.unacked == {message["stream"]: message}
    assert reports.orphans == 0


async def test_run_resends_held_reports() -> None:
    reports = UsageReports()
    reports.retry = 0.05
    session = session_to(reports, "n2")
    reports.attach(session)
    message = report_of("n1")
    reports.submit(session, message)
    stop = asyncio.Event()
    running = asyncio.create_task(reports.run(stop))
    try:
        held_at = time.monotonic()
        reports.held(session, [message["stream"]])
        assert session.unacked == {}
        await until(lambda: message["stream"] in session.unacked)
        assert time.monotonic() - held_at >= reports.retry
        assert reports.orphans == 0
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await running


def test_max_orphans_drops_oldest() -> None:
    reports = UsageReports()
    reports.max_orphans = 3
    session = session_to(reports, "n1")
    reports.attach(session)
    messages = [report_of("n1") for _ in range(5)]
    for message in messages:
        reports.submit(session, message)
    reports.detach(session)
    assert reports.orphans == 3
    # Kept again at the bound: a stream already kept replaces itself, dropping nothing.
    reports.submit(session, messages[3])
    assert reports.orphans == 3
    other = session_to(reports, "n2")
    reports.attach(other)
    assert list(other.unacked) == [message["stream"] for message in messages[2:]]


def test_detach_of_replaced_session_keeps_the_new_one() -> None:
    reports = UsageReports()
    old, new = session_to(reports, "n1"), session_to(reports, "n1")
    reports.attach(old)
    reports.attach(new)  # a new login to the same node
    reports.detach(old)
    message = report_of("n1")
    reports.submit(new, message)
    assert new.unacked == {message["stream"]: message}
    assert reports.orphans == 0


# end to end: real agent sessions, real nodes


@contextlib.asynccontextmanager
async def running_node(redis: Redis, node: str) -> AsyncIterator[Gateway]:
    """A gateway node other than ``NODE``, on the same Redis (and so the same ticket key)."""
    settings = GatewaySettings(
        redis_url=REDIS_URL, database_url="unused", node_id=node, handshake_timeout=5.0, dial_timeout=5.0
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


@dataclass
class Serving:
    session: AgentSession
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def sessions(reports: UsageReports) -> AsyncIterator[list[Serving]]:
    started: list[Serving] = []
    try:
        yield started
    finally:
        for serving in started:
            serving.task.cancel()
            await asyncio.gather(serving.task, return_exceptions=True)
            await serving.session.close()


async def serve(started: list[Serving], reports: UsageReports, settings: AgentSettings) -> AgentSession:
    session = AgentSession(settings, reports=reports)
    await session.login()
    started.append(Serving(session, asyncio.create_task(session.serve())))
    return session


async def echo_once(conn: Conn, payload: bytes) -> None:
    conn.write(payload)
    received = b""
    async with asyncio.timeout(WAIT):
        while len(received) < len(payload):
            chunk = await conn.read()
            assert chunk, "the stream ended early"
            received += chunk
    assert received == payload


async def test_agent_report_acked_on_its_session(gateway: Gateway, echo_port: int) -> None:
    reports = UsageReports()
    async with sessions(reports) as started:
        session = await serve(started, reports, settings_for(gateway.port))
        exit_id = exit_id_for(session._settings.account.address, BIND)
        t = ticket(exit_id, uuid.uuid4().hex)
        conn = await gateway.hub.open_stream(t, "127.0.0.1", echo_port)
        await echo_once(conn, b"hello")
        conn.close()
        gateway.hub.stream_closed(exit_id)

        async def reported() -> bool:
            return len(await usage_reports(gateway.redis)) == 1

        await until(reported)
        await until(lambda: session.unacked == {})
        assert reports.orphans == 0
        [report] = await usage_reports(gateway.redis)
        assert isinstance(report, AgentReport)
        assert (report.event_id, report.bytes_up, report.bytes_down) == (t.stream, 5, 5)


async def test_agent_orphan_delivered_when_its_node_is_reached_again(
    gateway: Gateway, echo_port: int
) -> None:
    reports = UsageReports()
    settings = settings_for(gateway.port)
    exit_id = exit_id_for(settings.account.address, BIND)
    async with sessions(reports) as started:
        await serve(started, reports, settings)
        t = ticket(exit_id, uuid.uuid4().hex)
        conn = await gateway.hub.open_stream(t, "127.0.0.1", echo_port)
        await echo_once(conn, b"x" * 1000)
        # The session ends with the stream in flight; the stream itself goes on.
        started[0].task.cancel()
        await asyncio.gather(started[0].task, return_exceptions=True)
        await until(lambda: gateway.hub.links == [])
        await echo_once(conn, b"y" * 500)
        conn.close()
        gateway.hub.stream_closed(exit_id)
        await until(lambda: reports.orphans == 1)  # no session serves
        assert await gateway.redis.xlen(USAGE_STREAM) == 0

        again = await serve(started, reports, settings)  # a new login to the same node

        async def reported() -> bool:
            return len(await usage_reports(gateway.redis)) == 1

        await until(reported)
        await until(lambda: again.unacked == {} and reports.orphans == 0)
        [report] = await usage_reports(gateway.redis)
        assert report == AgentReport(
            t.stream,
            settings.account.address,
            exit_id,
            1500,
            1500,
            report.opened_at,
            report.closed_at,
            "gateway_closed",
        )


async def test_agent_orphan_held_then_metered_by_another_node(
    gateway: Gateway, redis: Redis, echo_port: int
) -> None:
    reports = UsageReports()
    reports.retry = 0.05
    settings = settings_for(gateway.port)
    exit_id = exit_id_for(settings.account.address, BIND)
    stop = asyncio.Event()
    retrying = asyncio.create_task(reports.run(stop))
    try:
        async with running_node(redis, OTHER_NODE) as other, sessions(reports) as started:
            other.hub.set_nodes([NodeInfo(NODE, ":1", BOOT), NodeInfo(OTHER_NODE, ":2")])
            await serve(started, reports, settings)
            on_other = await serve(started, reports, replace(settings, gateway_port=other.port))
            await until(lambda: len(other.hub.links) == 1)
            t = Ticket(uuid.uuid4().hex, NODE, exit_id, "alice", "deal-1", "connect", "127.0.0.1:80", 3, BOOT)
            conn = await gateway.hub.open_stream(t, "127.0.0.1", echo_port)
            await echo_once(conn, b"z" * 300)
            # The opening node goes away before the agent could report the stream to it.
            await gateway.hub.close()
            await until(lambda: started[0].task.done())
            conn.close()
            # The other node holds the report while it still sees the opener live.
            await until(lambda: reports.orphans == 1)
            await other.publisher.flush()
            assert await redis.xlen(USAGE_STREAM) == 0

            other.hub.set_nodes([NodeInfo(OTHER_NODE, ":2")])  # the opener left the registry

            async def metered() -> bool:
                return len(await usage_reports(redis)) == 2

            await until(metered)
            await until(lambda: on_other.unacked == {} and reports.orphans == 0)
            event, report = await usage_reports(redis)
            assert isinstance(event, UsageEvent) and isinstance(report, AgentReport)
            assert event == UsageEvent(
                event_id=t.stream,
                deal_id="deal-1",
                requester="alice",
                provider=settings.account.address,
                exit_id=exit_id,
                node=NODE,
                protocol="connect",
                target="127.0.0.1:80",
                bytes_up=300,
                bytes_down=300,
                opened_at=report.opened_at,
                closed_at=report.closed_at,
                outcome="node_lost",
                attempts=3,
            )
            assert (report.event_id, report.bytes_up, report.bytes_down) == (t.stream, 300, 300)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await retrying


async def test_draining_node_gets_the_reports_of_its_streams(
    gateway: Gateway, redis: Redis, echo_port: int
) -> None:
    settings = settings_for()
    exit_id = exit_id_for(settings.account.address, BIND)
    stop = asyncio.Event()
    async with running_node(redis, OTHER_NODE) as other:
        nodes = [NodeInfo(NODE, f":{gateway.port}", BOOT), NodeInfo(OTHER_NODE, f":{other.port}", BOOT)]
        gateway.hub.set_nodes(nodes)
        other.hub.set_nodes(nodes)
        fleet = _Fleet(replace(settings, gateway_port=other.port), stop, Governor())
        running = asyncio.create_task(fleet.run())  # enters by the other node, then tunnels to NODE
        try:
            await until(lambda: NODE in fleet._reports._sessions)  # logged in to NODE, serving
            t = ticket(exit_id, uuid.uuid4().hex)
            conn = await gateway.hub.open_stream(t, "127.0.0.1", echo_port)
            await echo_once(conn, b"x" * 1000)
            # NODE drains: out of the registry, so the other node's list leaves it out; its
            # stream still runs, and the stream's report must reach it, not the other node.
            other.hub.set_nodes(nodes[1:])
            await until(lambda: [node for node, _, _ in fleet._nodes] == [OTHER_NODE])
            await echo_once(conn, b"y" * 500)
            conn.close()
            gateway.hub.stream_closed(exit_id)

            async def reported() -> bool:
                return any(isinstance(item, AgentReport) for item in await usage_reports(redis))

            await until(reported)
            await other.publisher.flush()
            [report] = await usage_reports(redis)  # no "node_lost" event of the other node's
            assert isinstance(report, AgentReport)
            assert (report.event_id, report.bytes_up, report.bytes_down) == (t.stream, 1500, 1500)
            assert len(other.hub.links) == 1 and len(gateway.hub.links) == 1

            await gateway.hub.close()  # the drain is over: its tunnel closes, and is not reopened
            await until(lambda: NODE not in fleet._direct)
            assert not running.done()
        finally:
            stop.set()
            async with asyncio.timeout(WAIT):
                await running


def test_a_node_that_never_confirms_cannot_grow_the_unconfirmed_reports_without_bound() -> None:
    reports = UsageReports()
    reports.max_orphans = 3
    session = session_to(reports, "n1")
    reports.attach(session)
    sent = [report_of("n1") for _ in range(5)]
    for message in sent:
        reports.submit(session, message)
    assert list(session.unacked) == [message["stream"] for message in sent[2:]]
    reports.submit(session, sent[4])  # the same report again replaces, drops nothing
    assert list(session.unacked) == [message["stream"] for message in sent[2:]]
