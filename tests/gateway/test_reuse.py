"""Data connections carried over from stream to stream (``gateway.reuse``), end to end.

A real ``TunnelHub`` and real ``AgentSession`` agents over loopback, local origins, Redis db 12
(the fixtures of ``test_tunnel``). Which data connection a stream rode is read off the gateway's
side of it (the agent's address and port), so reuse is seen from outside the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from billing.usage import AgentReport
from gateway.agent.session import AgentSession
from gateway.agent.settings import AgentSettings
from gateway.conn import Conn
from gateway.reuse import ReusedStream
from gateway.tunnel import exit_id_for
from gateway.tunnel_streams import ProviderLink
from tests.gateway.test_tunnel import (
    BIND,
    WAIT,
    Agent,
    Gateway,
    StartAgent,
    agent_starter,
    read_until_eof,
    running_gateway,
    ticket,
    until,
    usage_reports,
)
from tests.gateway.test_tunnel_websocket import agent_settings


@pytest.fixture
async def gateway(redis: Redis) -> AsyncIterator[Gateway]:
    async with running_gateway(redis) as gateway:
        yield gateway


@pytest.fixture
async def start_agent(gateway: Gateway) -> AsyncIterator[StartAgent]:
    async with agent_starter(gateway) as start:
        yield start


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def origin(handler: Handler) -> AsyncIterator[int]:
    """A local server running ``handler`` per connection; yields its port."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until the client's end of stream, then answers the SHA-256 of what it read and as
    many bytes as the client asked for in its first 8 bytes, and closes."""
    body = await reader.read(-1)
    size = int.from_bytes(body[:8], "big") if len(body) >= 8 else 0
    writer.write(hashlib.sha256(body).digest() + bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    await writer.drain()


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speaks first and closes at once, without reading (its end comes first)."""
    writer.write(b"220 hello\r\n")
    await writer.drain()


async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends without end until the client goes away."""
    block = os.urandom(64 * 1024)
    while True:
        writer.write(block)
        await writer.drain()


@pytest.fixture
async def digest_port() -> AsyncIterator[int]:
    async with origin(digest) as port:
        yield port


@pytest.fixture
async def greeter_port() -> AsyncIterator[int]:
    async with origin(greet) as port:
        yield port


@pytest.fixture
async def firehose_port() -> AsyncIterator[int]:
    async with origin(firehose) as port:
        yield port


@contextlib.asynccontextmanager
async def serving(gateway: Gateway, settings: AgentSettings) -> AsyncIterator[Agent]:
    """An agent with ``settings`` logged in to ``gateway`` and serving, its pool filled."""
    session = AgentSession(settings)
    await session.login()
    task = asyncio.create_task(session.serve())
    try:
        await until(lambda: bool(gateway.hub.links) and len(gateway.hub.links[0].idle) >= settings.pool_size)
        yield Agent(session, settings.account, exit_id_for(settings.account.address, BIND), task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await session.close()


def data_connection(conn: Conn) -> tuple[str, int]:
    """The agent's end (address, port) of the data connection a stream rides on."""
    assert conn.transport is not None
    host, port = conn.transport.get_extra_info("peername")[:2]
    return host, port


async def exchange(
    gateway: Gateway, agent: Agent, port: int, payload: bytes
) -> tuple[bytes, tuple[str, int]]:
    """One stream: send ``payload``, end the sending side, read the answer until its end."""
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", port)
    try:
        carrier = data_connection(conn)
        conn.write(payload)
        assert conn.transport is not None
        conn.transport.write_eof()
        return await read_until_eof(conn), carrier
    finally:
        conn.close()
        gateway.hub.stream_closed(agent.exit_id)


def asked(size: int, filler: bytes = b"") -> bytes:
    return size.to_bytes(8, "big") + filler


def answer(payload: bytes, size: int) -> bytes:
    return hashlib.sha256(payload).digest() + bytes(range(256)) * (size // 256) + b"x" * (size % 256)


async def test_streams_ride_the_same_data_connections(
    gateway: Gateway, start_agent: StartAgent, digest_port: int
) -> None:
    agent = await start_agent(pool_size=2)
    link = gateway.hub.links[0]
    assert link.reuse
    await until(lambda: len(link.idle) == 2)
    carriers = set()
    for index in range(20):
        payload = asked(index * 100, os.urandom(index))
        received, carrier = await exchange(gateway, agent, digest_port, payload)
        assert received == answer(payload, index * 100)
        carriers.add(carrier)
        await until(lambda: not link.reused)  # the agent said free: back in the pool
    # Twenty streams, one after the other, on the pool's two connections, not on twenty.
    assert len(carriers) == 2
    assert gateway.hub.reuses == 20  # ipsx_gateway_data_connections_reused_total
    assert agent.session.served == 20


async def test_each_stream_is_metered_exactly_on_a_reused_connection(
    gateway: Gateway, start_agent: StartAgent, digest_port: int
) -> None:
    agent = await start_agent(pool_size=1)
    await until(lambda: len(gateway.hub.links[0].idle) == 1)  # no extra ones opened on demand
    sizes = [(0, 0), (8, 1), (8, 70_000), (300_000, 5), (8, 0), (1_000_000, 1_000_000)]
    expected = {}
    for up_extra, down_size in sizes:
        payload = asked(down_size, os.urandom(max(0, up_extra - 8)))[: max(up_extra, 8) if up_extra else 0]
        conn = await gateway.hub.open_stream(
            ticket(agent.exit_id, stream := uuid.uuid4().hex), "127.0.0.1", digest_port
        )
        try:
            conn.write(payload)
            assert conn.transport is not None
            conn.transport.write_eof()
            received = await read_until_eof(conn)
        finally:
            conn.close()
            gateway.hub.stream_closed(agent.exit_id)
        size = int.from_bytes(payload[:8], "big") if len(payload) >= 8 else 0
        assert received == answer(payload, size)
        expected[stream] = (len(payload), len(received))
    await until(lambda: gateway.hub.reuses == len(sizes))  # every one went back to the pool
    await until(lambda: reports_for(gateway, set(expected)))
    reports = {
        report.event_id: report
        for report in await usage_reports(gateway.redis)
        if isinstance(report, AgentReport)
    }
    assert {stream: (reports[stream].bytes_up, reports[stream].bytes_down) for stream in expected} == expected
    assert {reports[stream].outcome for stream in expected} == {"gateway_closed"}


async def reports_for(gateway: Gateway, streams: set[str]) -> bool:
    return streams <= {report.event_id for report in await usage_reports(gateway.redis)}


async def test_origin_that_ends_first_then_the_next_stream(
    gateway: Gateway, start_agent: StartAgent, greeter_port: int, digest_port: int
) -> None:
    agent = await start_agent(pool_size=1)
    link = gateway.hub.links[0]
    await until(lambda: len(link.idle) == 1)  # a stream asked for before would have more opened
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", greeter_port)
    first = data_connection(conn)
    assert await read_until_eof(conn) == b"220 hello\r\n"  # the origin's end reached the client
    conn.close()
    gateway.hub.stream_closed(agent.exit_id)
    await until(lambda: not link.reused)
    assert first in idle_connections(link)  # back in the pool, not closed
    payload = asked(10, b"next")
    received, _ = await exchange(gateway, agent, digest_port, payload)
    assert received == answer(payload, 10)


async def test_client_writing_after_the_origin_closed(
    gateway: Gateway, start_agent: StartAgent, greeter_port: int, digest_port: int
) -> None:
    agent = await start_agent(pool_size=1)
    link = gateway.hub.links[0]
    for _ in range(3):
        conn = await gateway.hub.open_stream(
            ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", greeter_port
        )
        assert await read_until_eof(conn) == b"220 hello\r\n"
        conn.write(b"QUIT\r\n")  # to an origin that is gone: its connection resets
        conn.close()
        gateway.hub.stream_closed(agent.exit_id)
        await until(lambda: not link.reused)
    payload = asked(10, b"next")
    received, _ = await exchange(gateway, agent, digest_port, payload)
    assert received == answer(payload, 10)


def idle_connections(link: ProviderLink) -> list[tuple[str, int]]:
    return [data_connection(conn) for conn in link.idle]


async def test_concurrent_streams_keep_their_bytes_apart(
    gateway: Gateway, start_agent: StartAgent, digest_port: int
) -> None:
    agent = await start_agent(pool_size=4)

    carriers = set()

    async def one(index: int) -> None:
        for round_ in range(5):
            payload = asked(index * 1000 + round_, os.urandom(index * 997))
            received, carrier = await exchange(gateway, agent, digest_port, payload)
            assert received == answer(payload, index * 1000 + round_)
            carriers.add(carrier)

    async with asyncio.timeout(WAIT * 3):
        await asyncio.gather(*(one(index) for index in range(12)))
    assert agent.session.served == 60
    assert len(carriers) <= 48  # sixty streams, many on a connection an earlier one left


async def test_abandoned_download_closes_its_connection_not_the_next_stream(
    gateway: Gateway, start_agent: StartAgent, firehose_port: int, digest_port: int
) -> None:
    agent = await start_agent(pool_size=1)
    link = gateway.hub.links[0]
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", firehose_port)
    first = data_connection(conn)
    async with asyncio.timeout(WAIT):
        assert await conn.read()
    conn.close()  # the client leaves while the origin still sends: more than a drain reads
    gateway.hub.stream_closed(agent.exit_id)
    await until(lambda: not link.reused)
    payload = asked(3, b"after")
    received, second = await exchange(gateway, agent, digest_port, payload)
    assert received == answer(payload, 3)
    assert second != first  # the abandoned stream's connection was cut, not reused
    assert first not in idle_connections(link)


async def carriers_of(gateway: Gateway, agent: Agent, port: int, rounds: int) -> set[tuple[str, int]]:
    """Run ``rounds`` streams one after the other, each checked; the data connections they rode."""
    carriers = set()
    link = gateway.hub.links[0]
    for index in range(rounds):
        payload = asked(index * 30_000, os.urandom(index * 10_000))
        received, carrier = await exchange(gateway, agent, port, payload)
        assert received == answer(payload, index * 30_000)
        carriers.add(carrier)
        await until(lambda: not link.reused)
    return carriers


async def test_agent_without_reuse_opens_a_connection_per_stream(gateway: Gateway, digest_port: int) -> None:
    settings = replace(agent_settings(gateway, path=None), reuse_data=False)
    async with serving(gateway, settings) as agent:
        assert not gateway.hub.links[0].reuse
        assert len(await carriers_of(gateway, agent, digest_port, 6)) == 6


async def test_streams_ride_the_same_websocket_data_connections(gateway: Gateway, digest_port: int) -> None:
    async with serving(gateway, agent_settings(gateway, path="/")) as agent:
        assert gateway.hub.links[0].reuse
        assert len(await carriers_of(gateway, agent, digest_port, 6)) == 2


async def test_reused_stream_over_tls_half_closes(
    tls_gateway: Gateway, certificate: tuple[Path, Path], digest_port: int
) -> None:
    # TLS has no half-close of its own: each stream's client ends its sending side before the
    # origin answers, and the announced end stands for it.
    settings = agent_settings(tls_gateway, path=None, tls=True, ca_file=str(certificate[0]))
    async with serving(tls_gateway, settings) as agent:
        assert len(await carriers_of(tls_gateway, agent, digest_port, 4)) == 2


async def test_streams_running_when_the_link_drops_end_by_tcp(
    gateway: Gateway, start_agent: StartAgent, digest_port: int
) -> None:
    agent = await start_agent(pool_size=1)
    link = gateway.hub.links[0]
    conn = await gateway.hub.open_stream(ticket(agent.exit_id, uuid.uuid4().hex), "127.0.0.1", digest_port)
    payload = asked(5000, os.urandom(1000))
    conn.write(payload[:500])
    await gateway.hub._drop(link, "test")  # the control connection goes: no more announced ends
    conn.write(payload[500:])
    assert conn.transport is not None
    conn.transport.write_eof()
    assert await read_until_eof(conn) == answer(payload, 5000)
    conn.close()


# the wrapper against a real connection pair


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = b""
        self.eof = False
        self.lost: list[Exception | None] = []
        self.paused: list[bool] = []  # flow-control calls: True for pause_writing, False for resume

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused.append(True)

    def resume_writing(self) -> None:
        self.paused.append(False)


Pair = tuple[asyncio.Transport, asyncio.Transport, Recorder]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A loopback connection: the near transport (to wrap) and the far one with its recorder."""
    loop = asyncio.get_running_loop()
    accepted: list[Recorder] = []

    def factory() -> Recorder:
        accepted.append(Recorder())
        return accepted[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    near, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", server.sockets[0].getsockname()[1])
    await until(lambda: bool(accepted) and accepted[0].transport is not None)
    far = accepted[0].transport
    assert far is not None
    yield near, far, accepted[0]
    near.close()
    far.close()
    server.close()


Announced = list[dict[str, Any]]
Settled = list[asyncio.Transport | None]


def wrapped(
    near: asyncio.Transport, *, confirm: bool, cuts: bool = False
) -> tuple[ReusedStream, Recorder, Announced, Settled]:
    announced: Announced = []
    settled: list[asyncio.Transport | None] = []

    def settle(transport: asyncio.Transport | None) -> bool:
        settled.append(transport)
        return transport is not None

    stream = ReusedStream(near, "s1", announce=announced.append, settle=settle, confirm=confirm, cuts=cuts)
    consumer = Recorder()
    stream.set_protocol(consumer)
    stream.start()
    return stream, consumer, announced, settled


async def test_wrapper_ends_at_the_announced_count_and_hands_the_connection_on(pair: Pair) -> None:
    near, far, _ = pair
    stream, consumer, announced, settled = wrapped(near, confirm=False)
    far.write(b"hello")
    stream.peer_end(5)
    await until(lambda: consumer.eof)
    assert consumer.data == b"hello"
    stream.write(b"abc")
    stream.write_eof()
    assert announced == [{"t": "end", "stream": "s1", "n": 3}]
    stream.close()
    assert settled == [near]  # clean: handed on, not closed
    assert announced[-1] == {"t": "free", "stream": "s1"}
    assert not near.is_closing()
    await until(lambda: consumer.lost == [None])
    stream.write(b"late")  # after the hand-over nothing more goes out on it
    assert stream.written == 3


async def test_wrapper_waits_for_the_peers_free_when_confirming(pair: Pair) -> None:
    near, _, _ = pair
    stream, _, announced, settled = wrapped(near, confirm=True)
    stream.peer_end(0)
    await asyncio.sleep(0)
    stream.write_eof()
    stream.close()
    assert settled == []
    stream.peer_free()
    assert settled == [near]
    assert announced == [{"t": "end", "stream": "s1", "n": 0}]  # the gateway never says free


@pytest.mark.parametrize("early", [True, False])
async def test_wrapper_cuts_bytes_past_the_announced_end(pair: Pair, early: bool) -> None:
    near, far, far_recorder = pair
    stream, consumer, _, settled = wrapped(near, confirm=True)
    if early:
        stream.peer_end(3)
        far.write(b"12345")
    else:
        far.write(b"12345")
        await until(lambda: consumer.data == b"12345")
        stream.peer_end(3)  # fewer than it already sent
    await until(lambda: settled == [None])
    await until(lambda: len(consumer.lost) == 1)
    await until(lambda: far_recorder.lost != [] or far_recorder.eof)  # the connection went


async def test_wrapper_cuts_a_connection_that_speaks_after_its_close(pair: Pair) -> None:
    near, far, far_recorder = pair
    stream, consumer, announced, settled = wrapped(near, confirm=True)
    stream.close()  # before the peer's end: it may still end cleanly, if it says nothing more
    assert announced == [{"t": "end", "stream": "s1", "n": 0}]
    far.write(b"z")  # it had more to say: cut, as a closed socket would
    await until(lambda: settled == [None])
    await until(lambda: far_recorder.eof or far_recorder.lost != [])  # the connection went
    assert consumer.data == b""


async def test_wrapper_delivers_an_end_announced_before_it_started(pair: Pair) -> None:
    near, _, _ = pair
    announced: Announced = []
    stream = ReusedStream(near, "s1", announce=announced.append, settle=lambda t: True, confirm=True)
    stream.peer_end(0)  # the control connection was read before the dial's answer
    await asyncio.sleep(0.01)
    consumer = Recorder()
    stream.set_protocol(consumer)
    stream.start()
    assert consumer.eof


async def test_wrapper_orphaned_after_announcing_its_end_sends_a_fin(pair: Pair) -> None:
    near, _, far_recorder = pair
    stream, _, announced, settled = wrapped(near, confirm=True)
    stream.write(b"last")
    stream.write_eof()
    assert announced == [{"t": "end", "stream": "s1", "n": 4}]
    stream.orphan()  # the control connection went: the announcement may never have been read
    assert settled == [None]
    await until(lambda: far_recorder.eof)
    assert far_recorder.data == b"last"


async def test_wrapper_after_the_peers_fin_ends_its_own_side_by_tcp(pair: Pair) -> None:
    near, far, far_recorder = pair
    stream, consumer, announced, settled = wrapped(near, confirm=True)
    far.write(b"bye")
    far.write_eof()  # the peer lost its control connection and ends the TCP way
    await until(lambda: consumer.eof)
    assert consumer.data == b"bye"
    assert settled == [None]
    stream.write(b"reply")  # the stream's other direction goes on
    stream.write_eof()
    assert announced == []  # nothing announced: a FIN instead
    await until(lambda: far_recorder.eof)
    assert far_recorder.data == b"reply"
