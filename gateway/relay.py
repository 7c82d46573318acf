"""The byte relay: two transports spliced together, counting what crosses each way.

Once a tunnel is up, both transports are handed to a pair of ``_Side`` protocols that forward
``data_received`` straight to the other transport; flow control is asyncio's own
(``pause_writing`` on one side pauses reading on the other). No task, no copy beyond the
transport's, one attribute update per chunk for metering. The gateway and the provider agent
both relay through this module, so the two meters count the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpliceResult:
    """What crossed a splice. ``a_to_b`` counts bytes read from side A and written to side B."""

    a_to_b: int
    b_to_a: int
    opened_at: float
    closed_at: float
    # "a_closed" / "b_closed": both directions ended cleanly, A (or B) half-closed first;
    # "a_lost" / "b_lost": that side failed or went away mid-stream; "idle"; "aborted"
    outcome: str


class _Side(asyncio.Protocol):
    __slots__ = ("count", "eof", "lost", "peer", "splice", "transport")

    def __init__(self, splice: Splice, transport: asyncio.Transport) -> None:
        self.splice = splice
        self.transport = transport
        self.peer: _Side | None = None
        self.count = 0  # bytes read on this side and written to the peer
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.splice.first_eof is None:
            self.splice.first_eof = self
        peer = self.peer
        if peer is not None and not peer.lost:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                peer.transport.close()
        if peer is not None and peer.eof:
            self.splice._finish_clean()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.splice._side_lost(self, exc)

    def pause_writing(self) -> None:
        if self.peer is not None and not self.peer.lost:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.lost:
            self.peer.transport.resume_reading()


class Splice:
    """Relays between transports A and B until both directions end, then calls ``on_done`` once.

    ``a_data`` / ``b_data`` are bytes already read from A / B (during the handshake) that must be
    forwarded first; they are counted like the rest. ``idle_timeout`` closes a splice through
    which nothing moved for that long (checked by comparing counters, so the per-chunk path
    stays free of clock reads). ``cut_short`` is called once, before the other side is closed,
    when a side fails or goes away mid-stream (True: side A), so the other may be told where
    the stream stopped.
    """

    def __init__(
        self,
        a: asyncio.Transport,
        b: asyncio.Transport,
        *,
        on_done: Callable[[SpliceResult], None],
        a_data: bytes = b"",
        b_data: bytes = b"",
        a_eof: bool = False,
        b_eof: bool = False,
        idle_timeout: float = 300.0,
        opened_at: float | None = None,
        high_water: int = 1024 * 1024,
        cut_short: Callable[[bool], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_done: Callable[[SpliceResult], None] | None = on_done
        self._cut_short: Callable[[bool], None] | None = None  # set once the splice is built
        self._opened_at = time.time() if opened_at is None else opened_at
        self._idle_timeout = idle_timeout
        self.first_eof: _Side | None = None
        self.a = _Side(self, a)
        self.b = _Side(self, b)
        self.a.peer, self.b.peer = self.b, self.a
        for side in (self.a, self.b):
            side.transport.set_write_buffer_limits(high=high_water)
            side.transport.set_protocol(side)
            if side.transport.is_closing():
                side.lost = True
        if a_data:
            self.a.data_received(a_data)
        if b_data:
            self.b.data_received(b_data)
        self._timer: asyncio.TimerHandle | None = None
        self._last_total = -1
        if self.a.lost or self.b.lost:
            self._side_lost(self.a if self.a.lost else self.b, None)
            return
        if a_eof:
            self.a.eof_received()
        if b_eof:
            self.b.eof_received()
        if self._on_done is not None and idle_timeout > 0:
            self._timer = self._loop.call_later(idle_timeout, self._check_idle)
        # Not before: a side closed already at the start relayed nothing to tell of, and the
        # caller may not hold this splice yet.
        self._cut_short = cut_short

    @property
    def a_to_b(self) -> int:
        return self.a.count

    @property
    def b_to_a(self) -> int:
        return self.b.count

    def _check_idle(self) -> None:
        total = self.a.count + self.b.count
        if total == self._last_total:
            self._finish("idle")
            return
        self._last_total = total
        self._timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def _side_lost(self, side: _Side, exc: Exception | None) -> None:
        peer = side.peer
        if self._on_done is None:
            return
        if side.eof and peer is not None and peer.eof:
            self._finish_clean()
            return
        if peer is not None and not peer.lost:
            # Flush what the peer still has to send, then close it: a side that went away
            # without a clean EOF in both directions cut the stream short.
            if self._cut_short is not None and not (side.eof and exc is None):
                self._cut_short(side is self.a)
            peer.transport.close()
        if side.eof and exc is None:
            self._finish_clean()
        else:
            self._finish("a_lost" if side is self.a else "b_lost")

    def _finish_clean(self) -> None:
        self._finish("b_closed" if self.first_eof is self.b else "a_closed")

    def _finish(self, outcome: str) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        for side in (self.a, self.b):
            if not side.lost:
                side.transport.close()
        on_done(SpliceResult(self.a.count, self.b.count, self._opened_at, time.time(), outcome))

    def end(self, outcome: str) -> None:
        """Stop relaying: what each side already took is still delivered, then both close."""
        for side in (self.a, self.b):
            if not side.lost:
                side.transport.pause_reading()
        self._finish(outcome)

    def abort(self) -> None:
        """Cut both sides now (shutdown)."""
        for side in (self.a, self.b):
            if not side.lost:
                side.transport.abort()
        self._finish("aborted")
