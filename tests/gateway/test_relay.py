"""Functional tests of ``Conn`` and ``Splice`` over real TCP connections on 127.0.0.1.

Each side of a splice is a ``Conn`` connected to a local stream server; the test plays the two
far ends ("alice" behind side A, "bob" behind side B) with asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from gateway.conn import Conn, ConnectionClosed
from gateway.relay import Splice, SpliceResult

MB = 1024 * 1024
WAIT = 10.0  # seconds before a wait for an event is given up (a failure, not a measurement)


@dataclass
class Peer:
    """The far end of one connection, as asyncio streams."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def send(self, data: bytes, *, eof: bool = False) -> None:
        self.writer.write(data)
        if eof:
            self.writer.write_eof()

    async def read_all(self) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.reader.read()

    async def read_exactly(self, size: int) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.reader.readexactly(size)

    def reset(self) -> None:
        """Abort with an RST rather than a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Connect = Callable[[], Awaitable[tuple[Conn, Peer]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens ``Conn`` connections to a local server; returns each with its far end."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[Peer] = asyncio.Queue()

    async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(Peer(reader, writer))

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opened: list[tuple[Conn, Peer]] = []

    async def connect_one() -> tuple[Conn, Peer]:
        _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
        async with asyncio.timeout(WAIT):
            peer = await accepted.get()
        opened.append((conn, peer))
        return conn, peer

    yield connect_one
    for conn, peer in opened:
        conn.close()
        peer.writer.close()
        with contextlib.suppress(ConnectionError):
            await peer.writer.wait_closed()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.01)  # let the closed transports run connection_lost


class Done:
    """An ``on_done`` callback that records every call."""

    def __init__(self) -> None:
        self.results: list[SpliceResult] = []
        self._called = asyncio.Event()

    def __call__(self, result: SpliceResult) -> None:
        self.results.append(result)
        self._called.set()

    async def wait(self, splice: Splice) -> SpliceResult:
        """The result, once both transports are gone (so no later call can still come)."""
        async with asyncio.timeout(WAIT):
            await self._called.wait()
        await until(lambda: splice.a.lost and splice.b.lost)
        assert len(self.results) == 1
        return self.results[0]


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds (for state that no callback announces)."""
    async with asyncio.timeout(WAIT):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


def small_buffers(*sockets: socket.socket, size: int = 32 * 1024) -> None:
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


async def spliced(connect: Connect, done: Done, **options: object) -> tuple[Splice, Peer, Peer]:
    conn_a, alice = await connect()
    conn_b, bob = await connect()
    a, a_data, a_eof = conn_a.detach()
    b, b_data, b_eof = conn_b.detach()
    assert (a_data, a_eof, b_data, b_eof) == (b"", False, b"", False)
    splice = Splice(a, b, on_done=done, **options)  # type: ignore[arg-type]
    return splice, alice, bob


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Splice


async def test_splice_relays_both_ways_exactly(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done)
    up, down = os.urandom(5 * MB), os.urandom(1 * MB)

    async def alice_side() -> bytes:
        alice.send(up, eof=True)
        return await alice.read_all()

    async def bob_side() -> bytes:
        received = await bob.read_all()  # until alice's EOF came through
        bob.send(down, eof=True)
        return received

    alice_got, bob_got = await asyncio.gather(alice_side(), bob_side())
    assert sha256(bob_got) == sha256(up)
    assert sha256(alice_got) == sha256(down)
    result = await done.wait(splice)
    assert (result.a_to_b, result.b_to_a) == (len(up), len(down))
    assert (splice.a_to_b, splice.b_to_a) == (len(up), len(down))
    assert result.outcome == "a_closed"
    assert result.opened_at <= result.closed_at


async def test_splice_half_close_a_first(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done)
    alice.send(b"request", eof=True)
    assert await bob.read_all() == b"request"  # the EOF reached bob
    assert done.results == []  # B may still answer
    bob.send(b"the response")
    assert await bob.read_exactly(0) == b""
    assert await alice.read_exactly(12) == b"the response"
    bob.send(b"!", eof=True)
    assert await alice.read_all() == b"!"
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("a_closed", 7, 13)


async def test_splice_half_close_b_first(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done)
    bob.send(b"banner", eof=True)
    assert await alice.read_all() == b"banner"
    assert done.results == []
    alice.send(b"late words", eof=True)
    assert await bob.read_all() == b"late words"
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("b_closed", 10, 6)


async def test_splice_a_reset_mid_stream(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done)
    chunk = os.urandom(100_000)
    alice.send(chunk)
    assert await bob.read_exactly(len(chunk)) == chunk
    bob.send(b"partial answer")
    assert await alice.read_exactly(14) == b"partial answer"
    alice.reset()
    assert await bob.read_all() == b""  # B was closed: bob sees the end of the stream
    result = await done.wait(splice)
    assert result.outcome == "a_lost"
    assert (result.a_to_b, result.b_to_a) == (len(chunk), 14)


async def test_splice_b_reset_mid_stream(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done)
    alice.send(b"GET / HTTP/1.1\r\n\r\n")
    assert await bob.read_exactly(18) == b"GET / HTTP/1.1\r\n\r\n"
    bob.send(b"HTTP/1.1 200 OK\r\n")
    assert await alice.read_exactly(17) == b"HTTP/1.1 200 OK\r\n"
    bob.reset()
    assert await alice.read_all() == b""
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("b_lost", 18, 17)


@pytest.mark.parametrize("lost", ["a", "b"])
async def test_splice_tells_who_cut_the_stream_short_before_closing_the_other(
    connect: Connect, lost: str
) -> None:
    done = Done()
    told: list[tuple[bool, int, bool]] = []  # (side A?, bytes B had relayed, the other still open?)
    splice: Splice | None = None

    def cut_short(side_a: bool) -> None:
        assert splice is not None
        other = splice.b if side_a else splice.a
        told.append((side_a, splice.b_to_a, not other.transport.is_closing()))

    splice, alice, bob = await spliced(connect, done, cut_short=cut_short)
    bob.send(b"partial answer")
    assert await alice.read_exactly(14) == b"partial answer"
    (alice if lost == "a" else bob).reset()
    result = await done.wait(splice)
    assert result.outcome == f"{lost}_lost"
    assert told == [(lost == "a", 14, True)]  # once, while the other side could still be told


async def test_splice_does_not_call_cut_short_on_a_clean_end(connect: Connect) -> None:
    done = Done()
    told: list[bool] = []
    splice, alice, bob = await spliced(connect, done, cut_short=told.append)
    alice.send(b"request", eof=True)
    assert await bob.read_all() == b"request"
    bob.send(b"answer", eof=True)
    assert await alice.read_all() == b"answer"
    assert (await done.wait(splice)).outcome == "a_closed"
    assert told == []


async def test_splice_a_reset_after_half_close(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done)
    alice.send(b"upload", eof=True)
    assert await bob.read_all() == b"upload"
    alice.reset()  # gone before B finished: the stream is cut short
    # A no longer reads after its EOF; the reset shows when the answer is written to it.
    bob.send(b"answer")
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("a_lost", 6, 6)
    assert await bob.read_all() == b""


async def test_splice_pre_read_data(connect: Connect) -> None:
    conn_a, alice = await connect()
    conn_b, bob = await connect()
    alice.send(b"CONNECT x:443\nearly-a")
    bob.send(b"early-b")
    async with asyncio.timeout(WAIT):
        assert await conn_a.read_line(1024) == b"CONNECT x:443"
        rest_a = b""
        while len(rest_a) < 7:
            rest_a += await conn_a.read()
        conn_a.unread(rest_a)
        rest_b = b""
        while len(rest_b) < 7:
            rest_b += await conn_b.read()
        conn_b.unread(rest_b)
    a, a_data, a_eof = conn_a.detach()
    b, b_data, b_eof = conn_b.detach()
    assert (a_data, a_eof, b_data, b_eof) == (b"early-a", False, b"early-b", False)
    done = Done()
    splice = Splice(a, b, on_done=done, a_data=b"hs-" + a_data, b_data=b_data)
    alice.send(b"+more", eof=True)
    assert await bob.read_all() == b"hs-early-a+more"
    bob.send(b"+reply", eof=True)
    assert await alice.read_all() == b"early-b+reply"
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("a_closed", 15, 13)


async def test_splice_pre_read_eof(connect: Connect) -> None:
    conn_a, alice = await connect()
    conn_b, bob = await connect()
    alice.send(b"whole request", eof=True)
    received = b""
    async with asyncio.timeout(WAIT):
        while chunk := await conn_a.read():
            received += chunk
    assert conn_a.at_eof
    conn_a.unread(received)
    a, a_data, a_eof = conn_a.detach()
    b, _, _ = conn_b.detach()
    assert (a_data, a_eof) == (b"whole request", True)
    done = Done()
    splice = Splice(a, b, on_done=done, a_data=a_data, a_eof=a_eof)
    assert await bob.read_all() == b"whole request"
    bob.send(b"answer", eof=True)
    assert await alice.read_all() == b"answer"
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("a_closed", 13, 6)


async def test_splice_idle_timeout(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done, idle_timeout=0.3)
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("idle", 0, 0)
    assert await alice.read_all() == b""
    assert await bob.read_all() == b""


async def test_splice_idle_timeout_after_traffic(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done, idle_timeout=0.3)
    alice.send(b"ping")
    assert await bob.read_exactly(4) == b"ping"
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("idle", 4, 0)


async def test_splice_abort(connect: Connect) -> None:
    done = Done()
    splice, alice, bob = await spliced(connect, done)
    alice.send(b"x")
    assert await bob.read_exactly(1) == b"x"
    splice.abort()
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b) == ("aborted", 1)
    splice.abort()  # a second abort changes nothing
    assert len(done.results) == 1


async def test_splice_end_delivers_what_was_taken_then_closes(connect: Connect) -> None:
    conn_a, alice = await connect()
    conn_b, bob = await connect()
    small_buffers(conn_b.transport.get_extra_info("socket"), bob.writer.get_extra_info("socket"))  # type: ignore[union-attr]
    a, _, _ = conn_a.detach()
    b, _, _ = conn_b.detach()
    done = Done()
    splice = Splice(a, b, on_done=done, high_water=64 * 1024)
    payload = os.urandom(2 * MB)
    alice.send(payload)  # bob reads nothing for now: part of it waits in B's write buffer
    await until(lambda: b.get_write_buffer_size() > 0)
    splice.end("allowance_used")
    taken = splice.a_to_b
    assert 0 < taken < len(payload)
    received = await bob.read_all()  # every byte taken from A, then EOF, not a reset
    assert received == payload[:taken]
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b) == ("allowance_used", taken)
    splice.end("allowance_used")  # a second end changes nothing
    assert len(done.results) == 1


async def test_splice_flow_control(connect: Connect) -> None:
    conn_a, alice = await connect()
    conn_b, bob = await connect()
    high = 64 * 1024
    small_buffers(
        alice.writer.get_extra_info("socket"),
        conn_a.transport.get_extra_info("socket"),  # type: ignore[union-attr]
        conn_b.transport.get_extra_info("socket"),  # type: ignore[union-attr]
        bob.writer.get_extra_info("socket"),
    )
    a, _, _ = conn_a.detach()
    b, _, _ = conn_b.detach()
    done = Done()
    splice = Splice(a, b, on_done=done, high_water=high)
    payload = os.urandom(8 * MB)
    alice.send(payload, eof=True)  # bob reads nothing for now

    # B's buffer fills above the high-water mark, so reading from A stops...
    await until(lambda: not a.is_reading())
    assert b.get_write_buffer_size() > high
    assert b.get_write_buffer_size() <= high + 256 * 1024  # one read past the mark at most
    # ...and stays stopped while bob does not read: A is read only as fast as B is written, so
    # neither B's buffer nor the count of bytes taken from A grows towards the payload's size.
    for _ in range(20):
        await asyncio.sleep(0.01)
        assert b.get_write_buffer_size() <= high + 256 * 1024
        assert splice.a_to_b < 2 * MB
    # The back-pressure reaches the sender, whose own buffer holds the rest.
    assert alice.writer.transport.get_write_buffer_size() > 0

    received = await bob.read_all()
    assert len(received) == len(payload)
    assert sha256(received) == sha256(payload)
    bob.send(b"", eof=True)
    assert await alice.read_all() == b""
    result = await done.wait(splice)
    assert (result.outcome, result.a_to_b, result.b_to_a) == ("a_closed", len(payload), 0)


async def test_splice_closing_transport(connect: Connect) -> None:
    conn_a, _alice = await connect()
    conn_b, bob = await connect()
    a, _, _ = conn_a.detach()
    b, _, _ = conn_b.detach()
    a.close()  # A is already going away when the splice starts
    done = Done()
    splice = Splice(a, b, on_done=done, b_data=b"hello")
    result = await done.wait(splice)
    assert result.outcome == "a_lost"
    assert await bob.read_all() == b""


# Conn


async def test_conn_read(connect: Connect) -> None:
    conn, peer = await connect()
    peer.send(b"hello")
    async with asyncio.timeout(WAIT):
        data = b""
        while len(data) < 5:
            data += await conn.read()
        assert data == b"hello"
        waiting = asyncio.ensure_future(conn.read())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing buffered: read() waits
        peer.send(b" world", eof=True)
        data = await waiting
        while chunk := await conn.read():
            data += chunk
    assert data == b" world"
    assert conn.at_eof
    assert await conn.read() == b""


async def test_conn_read_line(connect: Connect) -> None:
    conn, peer = await connect()
    peer.send(b"one\ntwo\nthr")
    async with asyncio.timeout(WAIT):
        assert await conn.read_line(100) == b"one"
        assert await conn.read_line(100) == b"two"
        waiting = asyncio.ensure_future(conn.read_line(100))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        peer.send(b"ee\n\n")
        assert await waiting == b"three"
        assert await conn.read_line(100) == b""


async def test_conn_read_line_limit(connect: Connect) -> None:
    conn, peer = await connect()
    peer.send(b"x" * 200)
    async with asyncio.timeout(WAIT):
        with pytest.raises(ValueError, match="line too long"):
            await conn.read_line(100)


async def test_conn_read_line_at_limit(connect: Connect) -> None:
    conn, peer = await connect()
    peer.send(b"y" * 100 + b"\n")
    async with asyncio.timeout(WAIT):
        assert await conn.read_line(100) == b"y" * 100


async def test_conn_read_line_limit_with_newline(connect: Connect) -> None:
    # The limit holds for a too-long line whose newline arrived in the same chunk, too.
    conn, peer = await connect()
    peer.send(b"z" * 200 + b"\n")
    async with asyncio.timeout(WAIT):
        data = await conn.read()
        while not data.endswith(b"\n"):
            data += await conn.read()
        conn.unread(data)
        with pytest.raises(ValueError, match="line too long"):
            await conn.read_line(100)


async def test_conn_read_line_eof(connect: Connect) -> None:
    conn, peer = await connect()
    peer.send(b"no newline", eof=True)
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionClosed):
            await conn.read_line(100)


async def test_conn_read_line_lost(connect: Connect) -> None:
    conn, peer = await connect()
    waiting = asyncio.ensure_future(conn.read_line(100))
    await asyncio.sleep(0.01)
    peer.reset()
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionClosed):
            await waiting
    assert conn.closed
    assert conn.at_eof


async def test_conn_unread(connect: Connect) -> None:
    conn, peer = await connect()
    peer.send(b"body\n")
    async with asyncio.timeout(WAIT):
        conn.unread(b"")
        conn.unread(b"head ")
        conn.unread(b">> ")
        assert await conn.read_line(100) == b">> head body"


async def test_conn_detach(connect: Connect) -> None:
    conn, peer = await connect()
    peer.send(b"line\nleftover")
    async with asyncio.timeout(WAIT):
        assert await conn.read_line(100) == b"line"
        rest = b""
        while len(rest) < 8:
            rest += await conn.read()
    conn.unread(rest)
    transport, data, eof = conn.detach()
    assert (data, eof) == (b"leftover", False)
    assert transport is conn.transport
    assert conn.detach()[1] == b""  # the bytes were handed over once


async def test_conn_detach_not_connected() -> None:
    with pytest.raises(ConnectionClosed):
        Conn().detach()


async def test_conn_pauses_reading_when_unread(connect: Connect) -> None:
    conn, peer = await connect()
    payload = os.urandom(2 * MB)
    peer.send(payload, eof=True)
    assert conn.transport is not None
    transport = conn.transport
    await until(lambda: not transport.is_reading())  # 256 KiB buffered and nobody reads
    received = b""
    async with asyncio.timeout(WAIT):
        while chunk := await conn.read():
            received += chunk
    assert sha256(received) == sha256(payload)


async def test_conn_drop_buffered_forgets_what_was_not_taken_and_reads_on(connect: Connect) -> None:
    conn, peer = await connect()
    assert conn.transport is not None
    transport = conn.transport
    peer.send(os.urandom(2 * MB))
    await until(lambda: not transport.is_reading())  # a full buffer paused reading
    dropped = conn.drop_buffered()
    assert dropped >= 256 * 1024
    await until(lambda: transport.is_reading())  # room again: reading goes on
    peer.send(b"next", eof=True)
    received = b""
    async with asyncio.timeout(WAIT):
        while chunk := await conn.read():
            received += chunk
    assert received.endswith(b"next") and dropped + len(received) == 2 * MB + 4


async def test_conn_drain(connect: Connect) -> None:
    conn, peer = await connect()
    assert conn.transport is not None
    transport = conn.transport
    small_buffers(transport.get_extra_info("socket"), peer.writer.get_extra_info("socket"))
    transport.set_write_buffer_limits(high=64 * 1024)
    await conn.drain()  # nothing buffered: returns at once
    payload = os.urandom(4 * MB)
    conn.write(payload)
    assert transport.get_write_buffer_size() > 64 * 1024
    draining = asyncio.ensure_future(conn.drain())
    await asyncio.sleep(0.05)
    assert not draining.done()  # the peer reads nothing: the buffer stays above the mark
    received = await peer.read_exactly(len(payload))
    async with asyncio.timeout(WAIT):
        await draining
    assert transport.get_write_buffer_size() <= 64 * 1024
    assert sha256(received) == sha256(payload)


async def test_conn_drain_ends_when_closed(connect: Connect) -> None:
    conn, peer = await connect()
    assert conn.transport is not None
    small_buffers(conn.transport.get_extra_info("socket"), peer.writer.get_extra_info("socket"))
    conn.transport.set_write_buffer_limits(high=64 * 1024)
    conn.write(os.urandom(4 * MB))
    draining = asyncio.ensure_future(conn.drain())
    await asyncio.sleep(0.01)
    assert not draining.done()
    conn.abort()
    async with asyncio.timeout(WAIT):
        await draining
    assert conn.closed
    with pytest.raises(ConnectionClosed):
        await conn.drain()
    conn.write(b"ignored after close")  # no error once closed


async def test_conn_read_line_resumes_a_reader_paused_by_a_burst(connect: Connect) -> None:
    # A burst of lines larger than the buffer's pause mark arrives while nobody reads (a control
    # connection whose task was busy): the transport pauses, and reading the lines one by one
    # must start it again, or the lines behind the burst would never come.
    conn, peer = await connect()
    lines = [b"%06d " % n + b"r" * 500 for n in range(2000)]  # about 1 MB
    peer.send(b"\n".join(lines) + b"\n")
    await until(lambda: conn.transport is not None and not conn.transport.is_reading())
    async with asyncio.timeout(WAIT):
        for line in lines:
            assert await conn.read_line(1000) == line
        peer.send(b"after the burst\n")
        assert await conn.read_line(1000) == b"after the burst"
