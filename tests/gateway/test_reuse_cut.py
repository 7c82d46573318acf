"""A stream one side cuts on a reused data connection (``cut`` in ``gateway.reuse`` and
``gateway.wire``): the agent says where the upload stopped (its provider's cap), the gateway says
where the download stopped (its deal's allowance); the other side stops writing and meters what
the cutting side relayed, and the connection ends cleanly and goes back to the pool.

A real ``TunnelHub`` and real ``AgentSession`` agents over loopback, Redis db 12 (the fixtures of
``test_tunnel``); the wrapper's own steps against a real loopback connection pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from eth_account import Account
from redis.asyncio import Redis

from billing.usage import AgentReport
from gateway import reuse, tunnel, wire
from gateway.agent.caps import Limits
from gateway.agent.policy import ExitPolicy
from gateway.agent.settings import ExitSpec
from gateway.conn import Conn
from gateway.exits import Stream
from gateway.front import Front
from gateway.relay import Splice, SpliceResult
from gateway.reuse import ReusedStream
from gateway.tunnel import exit_id_for
from gateway.tunnel_streams import ProviderLink
from tests.gateway import test_reuse, test_tunnel
from tests.gateway.test_reuse import Pair, serving, wrapped
from tests.gateway.test_tunnel import (
    BIND,
    WAIT,
    Gateway,
    StartAgent,
    agent_starter,
    assert_closed_by_peer,
    connect_raw,
    front_for,
    read_message,
    running_gateway,
    signature,
    ticket,
    until,
    usage_count,
    usage_reports,
)
from tests.gateway.test_tunnel_websocket import agent_settings

# fixtures of those modules
gateway, start_agent, pair = test_reuse.gateway, test_reuse.start_agent, test_reuse.pair
firehose_port = test_reuse.firehose_port
sink_port = test_tunnel.sink_port


CAP = 2_000_000
UPLOAD = 8 * 1024 * 1024  # what the client tries to send, well past the cap


async def upload_through(gateway: Gateway, exit_id: str, port: int) -> tuple[str, Conn, SpliceResult]:
    """A client uploading ``UPLOAD`` bytes through a stream to ``port``, spliced as the front does:
    the stream's id, its data connection, and the gateway's splice result."""
    stream_id = uuid.uuid4().hex
    conn = await gateway.hub.open_stream(ticket(exit_id, stream_id), "127.0.0.1", port)
    done: asyncio.Future[SpliceResult] = asyncio.get_running_loop().create_future()
    async with front_for(conn, done) as front_port:
        _, writer = await asyncio.open_connection("127.0.0.1", front_port)
        chunk = bytes(1 << 16)
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(WAIT):
                for _ in range(UPLOAD // len(chunk)):
                    if writer.is_closing():
                        break
                    writer.write(chunk)
                    await writer.drain()
        async with asyncio.timeout(WAIT):
            result = await done
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    gateway.hub.stream_closed(exit_id)
    return stream_id, conn, result


async def agent_report(gateway: Gateway, stream_id: str) -> AgentReport:
    await until(lambda: usage_count(gateway.redis, 1))
    (report,) = [r for r in await usage_reports(gateway.redis) if r.event_id == stream_id]
    assert isinstance(report, AgentReport)
    return report


async def test_cut_upload_is_told_and_the_connection_goes_back_to_the_pool(
    gateway: Gateway,
    start_agent: StartAgent,
    sink_port: int,
) -> None:
    agent = await start_agent(limits=Limits(cap_day=CAP + 10**6), pool_size=1)
    link = gateway.hub.links[0]
    assert link.reuse and link.cut and agent.session._cut  # both ends agreed at login
    await until(lambda: len(link.idle) == 1)
    first = link.idle[0].transport
    assert first is not None
    carrier = first.get_extra_info("peername")[:2]

    stream_id, conn, result = await upload_through(gateway, agent.exit_id, sink_port)
    report = await agent_report(gateway, stream_id)
    assert (report.bytes_up, report.bytes_down, report.outcome) == (CAP + 10**6, 0, "cap_reached")
    side = conn.transport
    assert isinstance(side, ReusedStream)
    # The agent said where it stopped: the upload it relayed, which is what the gateway meters
    # (ExitDialer.finish takes the lower of its own count and this one).
    assert (side.cut, side.cut_reason) == (CAP + 10**6, "cap_reached")
    assert result.a_to_b >= side.cut  # the splice itself read what was in flight too
    # The agent read and dropped what was in flight up to the gateway's end, and freed the
    # connection: no reset, and back in the pool.
    await until(lambda: gateway.hub.reuses == 1)
    assert carrier in {c.transport.get_extra_info("peername")[:2] for c in link.idle if c.transport}


async def test_allowance_cut_by_the_gateway_is_told_and_both_meters_agree(
    gateway: Gateway, start_agent: StartAgent, firehose_port: int
) -> None:
    agent = await start_agent(pool_size=1)
    link = gateway.hub.links[0]
    await until(lambda: len(link.idle) == 1)
    stream_id = uuid.uuid4().hex
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, stream_id), "127.0.0.1", firehose_port)
    exit_side = conn.transport
    assert isinstance(exit_side, ReusedStream)
    done: asyncio.Future[SpliceResult] = asyncio.get_running_loop().create_future()
    spliced: list[Splice] = []

    class Client(asyncio.Protocol):  # the client's side, spliced to the stream as the front does
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            exit_transport, pending, eof = conn.detach()
            client = cast(asyncio.Transport, transport)
            spliced.append(Splice(client, exit_transport, on_done=done.set_result, b_data=pending, b_eof=eof))

    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        received = len(await reader.readexactly(1_000_000))  # the download runs at full speed
        stream = Stream(conn, stream_id, agent.exit_id, "0xprovider", "alice", "connect", "t:1", "d1", 1)
        Front._cut_allowance(stream, spliced[0])  # the deal's allowance is used up
        async with asyncio.timeout(WAIT):
            while chunk := await reader.read(1 << 16):
                received += len(chunk)
            result = await done
        writer.close()
    finally:
        server.close()
    gateway.hub.stream_closed(agent.exit_id)
    assert result.outcome != "b_lost"  # the agent ended its side cleanly, no reset
    assert received == result.b_to_a  # the client got every byte the gateway metered
    report = await agent_report(gateway, stream_id)
    # The agent heard how much of the download reached the client and metered that, not what
    # it had sent past it (dropped at the gateway).
    assert (report.bytes_down, report.outcome) == (result.b_to_a, "allowance_used")
    assert exit_side.discarded > 0  # the firehose had more in flight
    await until(lambda: gateway.hub.reuses == 1)  # read up to the agent's end: back in the pool


@pytest.fixture
async def resetting_port() -> AsyncIterator[int]:
    """A destination that reads 1 MB of an upload, then resets the connection (as a server
    refusing a body too large may)."""

    async def reset_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1_000_000)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset_after, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_destination_gone_mid_upload_is_told_and_both_meters_agree(
    gateway: Gateway, start_agent: StartAgent, resetting_port: int
) -> None:
    agent = await start_agent(pool_size=1)
    await until(lambda: len(gateway.hub.links[0].idle) == 1)
    stream_id, conn, result = await upload_through(gateway, agent.exit_id, resetting_port)
    report = await agent_report(gateway, stream_id)
    side = conn.transport
    assert isinstance(side, ReusedStream)
    assert report.outcome == "destination_lost" and side.cut_reason == "destination_lost"
    # What the agent relayed before the reset, which the gateway meters (ExitDialer.finish)
    assert side.cut == report.bytes_up >= 1_000_000
    assert result.a_to_b >= side.cut
    await until(lambda: gateway.hub.reuses == 1)  # read up to the gateway's end: back in the pool


@pytest.mark.parametrize("transport", ["ws", "tls"])
async def test_cut_over_the_websocket_and_tls_tunnels(
    transport: str, gateway: Gateway, tls_gateway: Gateway, certificate: tuple[Path, Path], sink_port: int
) -> None:
    node = gateway if transport == "ws" else tls_gateway
    settings = agent_settings(
        node, path="/" if transport == "ws" else None, tls=transport == "tls", ca_file=str(certificate[0])
    )
    settings = replace(settings, limits=Limits(cap_day=CAP), pool_size=1)
    async with serving(node, settings) as agent:
        assert node.hub.links[0].cut
        stream_id, conn, result = await upload_through(node, agent.exit_id, sink_port)
        report = await agent_report(node, stream_id)
        side = conn.transport
        assert isinstance(side, ReusedStream)
        assert side.cut == report.bytes_up == CAP and report.outcome == "cap_reached"
        assert result.a_to_b >= CAP
        await until(lambda: node.hub.reuses == 1)  # the connection ended cleanly: back in the pool


async def test_agent_facing_a_gateway_without_cut_resets_as_before(
    redis: Redis,
    sink_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A gateway node of the previous version: reuse, no cut in its welcome.
    def older(*args: Any, **kwargs: Any) -> ProviderLink:
        return ProviderLink(*args, **{**kwargs, "cut": False})

    monkeypatch.setattr(tunnel, "ProviderLink", older)
    async with running_gateway(redis) as gateway, agent_starter(gateway) as start:
        agent = await start(limits=Limits(cap_day=CAP), pool_size=1)
        assert agent.session._reuse and not agent.session._cut
        stream_id, conn, result = await upload_through(gateway, agent.exit_id, sink_port)
        report = await agent_report(gateway, stream_id)
        assert (report.bytes_up, report.outcome) == (CAP, "cap_reached")
        side = conn.transport
        assert isinstance(side, ReusedStream) and side.cut is None  # never told
        assert result.a_to_b > CAP  # the gap the cut message closes: in flight, counted here only
        assert gateway.hub.reuses == 0  # the connection went with the stream


# the login


async def login_with(gateway: Gateway, **fields: Any) -> tuple[Conn, dict[str, Any], str]:
    account = Account.create()
    conn = await connect_raw(gateway)
    conn.write(wire.encode({"t": "hello", "v": wire.PROTOCOL_VERSION, "address": account.address}))
    challenge = await read_message(conn)
    login = {
        "t": "login",
        "signature": signature(account, challenge["node"], challenge["nonce"]),
        "exits": [ExitSpec(bind=BIND, country="fr").to_wire()],
        "policy": ExitPolicy().to_wire(),
        "pool": 1,
        **fields,
    }
    conn.write(wire.encode(login))
    welcome = await read_message(conn)
    assert welcome["t"] == "welcome"
    return conn, welcome, exit_id_for(account.address, BIND)


@pytest.mark.parametrize(
    ("fields", "agreed"),
    [
        ({"reuse": True, "cut": True}, True),
        ({"reuse": True}, False),  # an agent of the previous version
        ({"cut": True}, False),  # cut rides on reuse
        ({"reuse": True, "cut": "yes"}, False),
    ],
)
async def test_welcome_agrees_to_cut_only_with_reuse(
    gateway: Gateway, fields: dict[str, Any], agreed: bool
) -> None:
    conn, welcome, _ = await login_with(gateway, **fields)
    assert welcome["cut"] is agreed
    assert gateway.hub.links[0].cut is agreed
    conn.close()


async def test_a_cut_the_login_did_not_ask_for_drops_the_link(gateway: Gateway) -> None:
    conn, welcome, exit_id = await login_with(gateway, reuse=True)
    assert welcome["cut"] is False
    conn.write(wire.encode({"t": "cut", "stream": uuid.uuid4().hex, "up": 1, "why": "cap_reached"}))
    await assert_closed_by_peer(conn)
    conn.close()
    await until(lambda: not gateway.hub.is_available(exit_id))


@pytest.mark.parametrize("up", ["10", -1, None, 2**70], ids=["text", "negative", "missing", "huge"])
async def test_a_malformed_cut_drops_the_link(gateway: Gateway, up: Any) -> None:
    conn, _, exit_id = await login_with(gateway, reuse=True, cut=True)
    stream = uuid.uuid4().hex  # for no stream of this node: the message is checked all the same
    if up == 2**70:  # beyond 64 bits: JSON's parser reads it as a float
        conn.write(b'{"t":"cut","stream":"%s","up":%d,"why":"cap_reached"}\n' % (stream.encode(), up))
    else:
        message: dict[str, Any] = {"t": "cut", "stream": stream, "why": "cap_reached"}
        if up is not None:
            message["up"] = up
        conn.write(wire.encode(message))
    await assert_closed_by_peer(conn)
    conn.close()
    await until(lambda: not gateway.hub.is_available(exit_id))


async def test_a_cut_for_a_stream_already_over_is_ignored(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipsx.gateway.tunnel")
    conn, _, exit_id = await login_with(gateway, reuse=True, cut=True)
    conn.write(wire.encode({"t": "cut", "stream": uuid.uuid4().hex, "up": 5, "why": "somewhere"}))
    conn.write(wire.encode({"t": "bogus"}))  # a bad message ends the link, after the cut
    await assert_closed_by_peer(conn)
    conn.close()
    await until(lambda: not gateway.hub.is_available(exit_id))
    (warning,) = [r.getMessage() for r in caplog.records if "bad message" in r.getMessage()]
    assert warning.endswith("unexpected message 'bogus'")  # the cut before it was taken


# the wrapper's steps


async def test_gateway_side_cut_stops_writing_and_ends_after_the_agents_end(pair: Pair) -> None:
    near, far, far_recorder = pair
    stream, consumer, announced, settled = wrapped(near, confirm=True)
    stream.write(b"u" * 10)
    assert stream.peer_cut(4, "cap_reached")
    assert (stream.cut, stream.cut_reason) == (4, "cap_reached")
    assert consumer.paused == [True]  # the relay stops reading what would go up
    assert announced == [{"t": "end", "stream": "s1", "n": 10}]  # all it wrote, dropped or not
    stream.write(b"late")
    assert stream.written == 10  # nothing more goes out
    stream._flow(pause=False)  # the socket drained: the relay stays paused all the same
    assert consumer.paused == [True]

    far.write(b"down")
    stream.peer_end(4)  # the agent's end of what it relayed down
    await until(lambda: consumer.lost == [None])
    assert (consumer.data, consumer.eof) == (b"down", True)  # delivered, then the stream ends
    assert settled == []  # until the agent has read up to this side's end and says free
    stream.peer_free()
    assert settled == [near] and not near.is_closing()
    await until(lambda: len(far_recorder.data) == 10)
    assert far_recorder.data == b"u" * 10


@pytest.mark.parametrize("relayed", [11, -1])
async def test_gateway_side_cut_beyond_what_was_written_cuts_the_connection(
    pair: Pair,
    relayed: int,
) -> None:
    near, _, far_recorder = pair
    stream, _, _, settled = wrapped(near, confirm=True)
    stream.write(b"u" * 10)
    assert not stream.peer_cut(relayed, "cap_reached")
    assert settled == [None] and stream.cut is None
    await until(lambda: far_recorder.eof or far_recorder.lost != [])


async def test_gateway_side_second_cut_cuts_the_connection(pair: Pair) -> None:
    near, _, _ = pair
    stream, _, _, settled = wrapped(near, confirm=True)
    stream.write(b"u" * 10)
    assert stream.peer_cut(5, "outside_hours")
    assert not stream.peer_cut(5, "outside_hours")
    assert settled == [None]


async def test_cutting_side_reads_and_drops_up_to_the_peers_end(pair: Pair) -> None:
    near, far, _ = pair
    stream, consumer, announced, settled = wrapped(near, confirm=False, cuts=True)
    far.write(b"a" * 100)
    await until(lambda: len(consumer.data) == 100)
    assert stream.cut_here(100, "cap_reached", direction="up")
    stream.close()  # the cut: this side's end goes out at once, after the cut
    assert announced == [
        {"t": "cut", "stream": "s1", "up": 100, "why": "cap_reached"},
        {"t": "end", "stream": "s1", "n": 0},
    ]
    far.write(b"b" * 5000)  # what the peer had sent before it heard of the cut
    await until(lambda: stream.discarded == 5000)
    assert consumer.data == b"a" * 100  # dropped, not relayed
    assert settled == []
    stream.peer_end(5100)
    await until(lambda: settled == [near])  # clean: handed on for the next stream
    assert announced[-1] == {"t": "free", "stream": "s1"}
    assert not near.is_closing()


async def test_a_cut_is_not_told_where_it_was_not_agreed_or_cannot_be(pair: Pair) -> None:
    near, _, _ = pair
    stream, _, announced, _ = wrapped(near, confirm=True)  # an agent or node of the previous version
    assert not stream.cut_here(0, "allowance_used", direction="down")
    agreed, _, told, _ = wrapped(near, confirm=True, cuts=True)
    agreed.orphan()  # the control connection went: nothing can be told on it
    assert not agreed.cut_here(0, "allowance_used", direction="down")
    assert announced == [] and told == []


async def test_cutting_side_resets_past_the_discard_bound(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reuse, "MAX_DISCARD", 1000)
    near, far, far_recorder = pair
    stream, _, _, settled = wrapped(near, confirm=False, cuts=True)
    assert stream.cut_here(0, "cap_reached", direction="up")
    stream.close()
    far.write(os.urandom(2000))  # a peer that does not stop
    await until(lambda: settled == [None])
    await until(lambda: far_recorder.eof or far_recorder.lost != [])


async def test_without_a_cut_a_peer_speaking_after_the_close_is_still_cut(pair: Pair) -> None:
    near, far, _ = pair
    stream, _, _, settled = wrapped(near, confirm=False, cuts=True)
    stream.close()
    far.write(b"z")
    await until(lambda: settled == [None])
    assert stream.discarded == 0
