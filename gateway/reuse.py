"""Data connections that carry one stream after another.

A data connection used to carry one stream and close with it: TCP's own end of stream said where
the stream's bytes stopped. To carry the next stream on the same connection, without framing the
bytes in between (the relay stays a plain splice), the ends are said on the control connection:
when one direction of a stream ends, its writer announces how many bytes it wrote (``{"t": "end",
"stream": …, "n": …}``) and the reader, having counted that many, sees the end of stream there.

Once both directions have ended and the relay closed the stream, the connection is clean. The
agent then says so (``{"t": "free", "stream": …}``) and waits for the next dial on it; the gateway
parks it idle only once the agent said free — never before, so a dial cannot reach an agent still
counting the last stream's bytes. A side that closes the stream before the peer's end waits for
that end (``DRAIN_SECONDS`` at most) as long as nothing more comes: a byte after the close means
the peer still had something to say, and the connection is cut as it was before reuse, so
neither meter counts a tail the other never relayed.

A side that cuts a stream short stops reading what the other still sends: the agent at its
provider's cap or the end of its serving hours, the gateway when the deal's traffic allowance is
used up. With ``cut`` agreed at login, the cutting side says how much of the other's direction it
relayed (``{"t": "cut", "stream": …, "up": …}`` from the agent, ``"down"`` from the gateway)
before ending its own, and reads and drops the rest up to the other's end (``MAX_DISCARD`` bytes
at most). The other side stops writing at once, announces its end, and meters that direction as
the cutting side relayed it: both meters count the same bytes, the connection closes without a
reset that could lose bytes already relayed, and it may carry the next stream.

Anything else — the peer's TCP close, a lost connection, an abort, more bytes than announced, a
drain over its bounds — closes the data connection, as when connections were not reused. When the
control connection goes, the streams still running end the old way, by TCP (``orphan``). Each
side keeps counting the stream on its own, exactly as before: the wrapper only moves the ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

DRAIN_SECONDS = 5.0  # after a close, how long to wait for the peer's end of the stream
MAX_DISCARD = 32 * 1024 * 1024  # after its cut, the most a side reads and drops before it resets

Announce = Callable[[dict[str, Any]], None]
Settle = Callable[[asyncio.Transport | None], bool]


class _Intercept(asyncio.Protocol):
    """The protocol on the data connection while a stream runs on it."""

    __slots__ = ("_outer",)

    def __init__(self, outer: ReusedStream) -> None:
        self._outer = outer

    def data_received(self, data: bytes) -> None:
        self._outer._received(data)

    def eof_received(self) -> bool | None:
        return self._outer._tcp_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._outer._lost(exc)

    def pause_writing(self) -> None:
        self._outer._flow(pause=True)

    def resume_writing(self) -> None:
        self._outer._flow(pause=False)


class ReusedStream(asyncio.Transport):
    """One stream on a data connection that outlives it; the relay sees an ordinary transport.

    ``announce`` sends a message on the control connection. ``settle`` is called once: with the
    data connection when it is clean and may carry the next stream — it returns whether it kept
    it (replacing its protocol there and then) or closed it — or with None when the connection
    was closed instead. ``confirm``: wait for the peer's ``free`` before settling (the gateway);
    without it, this side sends ``free`` once it kept the connection (the agent). ``received``:
    bytes of the stream already read from the connection before this wrapper.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        stream: str,
        *,
        announce: Announce,
        settle: Settle,
        confirm: bool,
        received: int = 0,
        cuts: bool = False,
    ) -> None:
        super().__init__()
        self._transport = transport
        self.stream = stream
        self._announce = announce
        self._settle: Settle | None = settle
        self._confirm = confirm
        self.protocol: asyncio.Protocol | None = None
        self.received = received  # bytes of the stream read from the peer
        self.written = 0  # bytes of the stream written to the peer
        self._peer_end: int | None = None  # what the peer announced it wrote
        self._peer_ended = False  # its end of stream was delivered
        self._ended = False  # this side's end was announced
        self._freed = not confirm  # the peer is done with the connection
        self._closing = False  # the relay closed (or aborted) the stream
        self._released = False  # the connection went on to carry another stream
        self._orphaned = False  # no control connection: ends go by TCP
        self._told_lost = False
        self._paused = False  # reading paused by the relay
        self._started = False  # the connection's events come here (the dial's answer was read)
        self._timer: asyncio.TimerHandle | None = None
        self._cuts = cuts  # both ends agreed to say where a stream they cut stopped
        self.cut: int | None = None  # the peer cut the stream after relaying this many of our bytes
        self.cut_reason = ""  # … and why
        self._discarding = False  # this side cut it: the rest is read and dropped
        self.discarded = 0  # bytes read and dropped past this side's cut

    def start(self, pending: bytes = b"", eof: bool = False) -> None:
        """Take over the connection's events once the dial's answer was read off it, with what
        was read past that answer (``pending``, and whether the connection's end came too)."""
        self._transport.set_protocol(_Intercept(self))
        self._started = True
        if pending:
            self._received(pending)
        if eof:
            self._tcp_eof()
        elif self._peer_end is not None and self.received == self._peer_end:
            self._deliver_end()  # announced before the dial's answer was read

    # the transport, as the relay uses it
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError("a reused stream relays to a plain Protocol")
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[return-value]

    def is_closing(self) -> bool:
        return self._closing or self._released or self._transport.is_closing()

    def is_reading(self) -> bool:
        return not self._paused

    def pause_reading(self) -> None:
        if not self._paused and not self._closing:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self._closing:
            self._paused = False
            self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if not self._ended and not self._released:
            self.written += len(data)
            self._transport.write(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview[Any]]) -> None:
        if not self._ended and not self._released:
            chunks = list(chunks)
            self.written += sum(len(chunk) for chunk in chunks)
            self._transport.writelines(chunks)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._ended:
            return
        if self._orphaned:
            self._ended = True
            self._tcp_write_eof()
            return
        if self._settle is None:
            return
        self._ended = True
        self._announce({"t": "end", "stream": self.stream, "n": self.written})
        self._check()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        """End the stream (this side's end is announced if it was not) and, once the peer's end
        came, hand the connection on; a byte the peer still sends meanwhile cuts it instead."""
        if self._closing:
            return
        self._closing = True
        if self._settle is None:  # orphaned, or the peer closed it: it goes with the stream
            if not self._released:
                self._transport.close()
            return
        asyncio.get_running_loop().call_soon(self._tell_lost, None)
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        self.write_eof()
        self._check()
        if self._settle is not None:
            self._timer = asyncio.get_running_loop().call_later(DRAIN_SECONDS, self._break, False)

    def abort(self) -> None:
        self._closing = True
        if self._settle is not None:
            self._break(True)
        elif not self._released:
            self._transport.abort()

    # what the peer announces on the control connection
    def peer_end(self, count: int) -> None:
        """The peer wrote ``count`` bytes of the stream in all."""
        if self._peer_end is not None or count < self.received:
            self._break(True)  # announced twice, or fewer bytes than it already sent
            return
        self._peer_end = count
        if self.received == count:
            # As a callback of its own, like the connection's events: whatever the relay does
            # with the end stays out of the control connection's loop that read the message.
            asyncio.get_running_loop().call_soon(self._deliver_end)

    def peer_cut(self, relayed: int, reason: str) -> bool:
        """The peer cut the stream (``reason``: the outcome it records) having relayed
        ``relayed`` of the bytes this side wrote, and drops the rest: nothing more is written,
        this side's end is announced now, the relay stops reading what would be written, and
        the stream ends once the peer's own end has come. A second cut, or one beyond what was
        written, is not the protocol: the connection is cut (False)."""
        if self._settle is None:
            return False  # the stream's ends go by TCP already, or it is over
        if self.cut is not None or not 0 <= relayed <= self.written:
            self._break(True)
            return False
        self.cut, self.cut_reason = relayed, reason
        if not self._closing and self.protocol is not None:
            self.protocol.pause_writing()  # stays paused: see _flow
        self.write_eof()
        if self._peer_ended:
            self.close()
        return True

    def cut_here(self, relayed: int, reason: str, *, direction: str) -> bool:
        """This side cuts the stream having relayed ``relayed`` bytes of what the peer wrote
        (``direction``: ``up`` on the agent, ``down`` on the gateway). The peer is told, stops
        writing and announces its end, and what it sent meanwhile is read and dropped up to that
        end, instead of resetting the connection at the first byte after the close. False when
        the peer cannot be told (``cut`` not agreed at login, or the ends go by TCP already):
        the caller cuts the connection as before."""
        if not self._cuts or self._settle is None or self._closing:
            return False
        self._announce({"t": "cut", "stream": self.stream, direction: relayed, "why": reason})
        self._discarding = True
        return True

    def peer_free(self) -> None:
        """The agent has counted the whole stream and waits for the next dial."""
        self._freed = True
        self._check()

    def orphan(self) -> None:
        """The control connection is gone, or the stream is cut with bytes of the peer unread:
        this stream's ends go by TCP from now on, as on a connection that is not reused, and the
        connection closes with the stream."""
        settle, self._settle = self._settle, None
        if settle is None:
            return
        self._stop_timer()
        self._orphaned = True
        settle(None)
        if self._closing:
            self._transport.close()
        elif self._ended:  # announced, but perhaps never read: say it the TCP way too
            self._tcp_write_eof()

    def _tcp_write_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()
        else:
            self._transport.close()  # TLS: no half-close of its own

    # what the connection tells
    def _received(self, data: bytes) -> None:
        self.received += len(data)
        if self._peer_end is not None and self.received > self._peer_end and self._settle is not None:
            self._break(True)  # bytes past the end the peer announced: not this protocol
            return
        if self._closing:
            if self._settle is None:
                return
            if not self._discarding:
                self._break(True)  # more after a close: cut, as a closed socket would
                return
            self.discarded += len(data)
            if self.discarded > MAX_DISCARD:
                self._break(True)
            elif self._peer_end is not None and self.received == self._peer_end:
                self._deliver_end()
            return
        if self.protocol is not None:
            self.protocol.data_received(data)
        if self._peer_end is not None and self.received == self._peer_end:
            self._deliver_end()

    def _deliver_end(self) -> None:
        if self._peer_ended or not self._started:
            return  # not started: start() delivers it
        self._peer_ended = True
        if not self._closing and self.protocol is not None:
            try:
                keep_open = self.protocol.eof_received()
            except Exception as exc:  # what the event loop does with a failing protocol callback
                self._break(True)
                self._tell_lost(exc)
                return
            if not keep_open:
                self.close()
        if self.cut is not None and not self._closing:
            self.close()  # cut: the relay sees the stream end here, as if the peer had closed it
        self._check()

    def _tcp_eof(self) -> bool | None:
        # The peer closed the connection itself: the stream ends there and the connection with it.
        settle, self._settle = self._settle, None
        if settle is not None:
            self._stop_timer()
            settle(None)
        self._orphaned = True  # from now on this stream's own end goes by TCP too
        if self._closing:
            self._transport.close()
            return None
        if self._peer_ended:
            return True  # delivered already; the relay may still write its side
        if self.protocol is None:
            return None
        self._peer_ended = True
        return self.protocol.eof_received()

    def _lost(self, exc: Exception | None) -> None:
        settle, self._settle = self._settle, None
        if settle is not None:
            self._stop_timer()
            settle(None)
        self._tell_lost(exc)

    def _tell_lost(self, exc: Exception | None) -> None:
        if not self._told_lost and self.protocol is not None:
            self._told_lost = True
            self.protocol.connection_lost(exc)

    def _flow(self, *, pause: bool) -> None:
        if self._closing or self.protocol is None or self.cut is not None:
            return
        if pause:
            self.protocol.pause_writing()
        else:
            self.protocol.resume_writing()

    # ending
    def _check(self) -> None:
        if not (self._closing and self._ended and self._peer_ended and self._freed):
            return
        settle, self._settle = self._settle, None
        if settle is None:
            return
        self._stop_timer()
        self._released = True
        if settle(self._transport) and not self._confirm:
            self._announce({"t": "free", "stream": self.stream})

    def _break(self, abort: bool) -> None:
        settle, self._settle = self._settle, None
        if settle is None:
            return
        self._stop_timer()
        if abort:
            self._transport.abort()
        else:
            self._transport.close()
        settle(None)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
