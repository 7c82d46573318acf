"""A buffered connection protocol for the handshake phase, handed over to a splice afterwards.

asyncio's streams keep received bytes in a private buffer, so a connection that starts as a
stream cannot be handed to a raw ``asyncio.Protocol`` without reaching into it. ``Conn`` is the
small part of a stream we need: ``read()`` for the handshake and ``detach()`` to take the
transport and whatever was read but not consumed, at one point in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

# Pause reading when this much is buffered and nobody reads: a handshake never needs more.
_PAUSE_AT = 256 * 1024


class ConnectionClosed(ConnectionError):
    """The peer closed the connection, or it was lost, while we were reading."""


def time_out(waiter: asyncio.Future[None]) -> None:
    """Fail ``waiter`` with TimeoutError unless it is already done (a timer callback)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Conn(asyncio.Protocol):
    """A connection read with ``await read()`` until ``detach()`` hands its transport on."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_deadline",
        "_drain_waiter",
        "_eof",
        "_exc",
        "_expired",
        "_paused",
        "_waiter",
        "_write_paused",
        "transport",
    )

    @classmethod
    def taking_over(cls, transport: asyncio.Transport) -> Conn:
        """A Conn reading ``transport`` from now on (one a relay handed back, still open)."""
        conn = cls()
        transport.set_protocol(conn)
        conn.connection_made(transport)
        return conn

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._closed = False
        self._paused = False
        self._exc: BaseException | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._expired = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # keep the write side open: the peer may only have half-closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._exc = exc
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._closed:
            drain = self._drain_waiter
            if drain is not None and not drain.done():
                drain.set_result(None)

    # the reading side, for handshakes
    @property
    def at_eof(self) -> bool:
        return (self._eof or self._closed) and not self._buffer

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writing_paused(self) -> bool:
        """Whether the transport's write buffer is above its high-water mark (the peer lags)."""
        return self._write_paused

    # deadlines: one timer per connection phase, cheaper than asyncio.timeout() per await
    def set_deadline(self, seconds: float) -> None:
        """From now on, waiting reads raise TimeoutError once ``seconds`` have passed."""
        self.clear_deadline()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._deadline_passed)

    def clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._expired = False

    def _deadline_passed(self) -> None:
        self._deadline = None
        self._expired = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    async def _wait(self, within: float | None) -> None:
        if self._expired:
            raise TimeoutError()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if within is None else loop.call_later(within, time_out, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def read(self, within: float | None = None) -> bytes:
        """All buffered bytes, waiting for some if none are there; ``b""`` at end of stream.

        Raises TimeoutError if ``within`` seconds pass with nothing to read (a timer is armed
        only when there is something to wait for), or when the deadline has passed.
        """
        while not self._buffer:
            if self._eof or self._closed:
                return b""
            await self._wait(within)
        data = bytes(self._buffer)
        self._buffer.clear()
        self._resume()
        return data

    def _resume(self) -> None:
        """Read from the transport again if a full buffer paused it and there is room now."""
        if self._paused and len(self._buffer) <= _PAUSE_AT // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def peek(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes, left in the buffer."""
        return bytes(self._buffer[:size])

    def take_line(self, limit: int) -> bytes | None:
        """A buffered ``\\n``-terminated line (without it), or None if none is complete yet.

        Raises ValueError when the line is, or is bound to be, longer than ``limit``.
        """
        end = self._buffer.find(b"\n")
        if end > limit or (end < 0 and len(self._buffer) > limit):
            raise ValueError("line too long")
        if end < 0:
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if self._paused:
            self._resume()  # a reader of lines empties the buffer too
        return line

    async def read_line(self, limit: int) -> bytes:
        """One ``\\n``-terminated line (without it); raises ConnectionClosed or ValueError if too long."""
        while True:
            line = self.take_line(limit)
            if line is not None:
                return line
            if self._eof or self._closed:
                raise ConnectionClosed("connection closed")
            await self._wait(None)

    def drop_buffered(self) -> int:
        """Forget the bytes read and not yet taken (a stream cut short: they are not relayed);
        how many there were."""
        dropped = len(self._buffer)
        self._buffer.clear()
        self._resume()
        return dropped

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the buffer (what a parser read past its message)."""
        if data:
            self._buffer[:0] = data

    # the writing side
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def write_both(self, first: bytes, second: bytes) -> None:
        """Two buffers in one system call (``writelines`` is a single ``writev`` under uvloop)."""
        if self.transport is not None and not self._closed:
            self.transport.writelines((first, second))

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._closed:
            raise ConnectionClosed("connection closed")
        while self._write_paused and not self._closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def detach(self) -> tuple[asyncio.Transport, bytes, bool]:
        """Hand over the transport: returns it, the unread bytes, and whether EOF was already seen.

        The caller must ``set_protocol`` on the transport right away, in the same callback.
        """
        if self.transport is None:
            raise ConnectionClosed("not connected")
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        return self.transport, data, self._eof


Handler = Callable[[Conn], Coroutine[Any, Any, None]]


class _Accepted(Conn):
    """A server-side Conn that starts its handler task as soon as it is connected."""

    __slots__ = ("_handler", "_tasks")

    def __init__(self, handler: Handler, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__()
        self._handler = handler
        self._tasks = tasks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task: asyncio.Task[None] = asyncio.ensure_future(self._handler(self))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Listener:
    """A TCP listener running ``handler(conn)`` as one task per accepted connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 2048) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Accepted(self._handler, self.tasks), host, port, backlog=backlog, reuse_port=reuse_port
        )
        return int(self.server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def close(self) -> None:
        """Stop accepting and cancel the handlers still running."""
        self.stop_accepting()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
