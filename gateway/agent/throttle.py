"""Transports seen through a stream's gate, so the shared splice (``gateway.relay``) can relay a
stream that has caps or rate limits without knowing about them.

``GatedTransport`` wraps one side of a stream. The splice installs its protocol on it as on any
transport; the wrapper puts itself between the real transport and that protocol, so every chunk
read is first admitted by the gate: counted, cut at the cap, and followed by a pause of reading
when the rate limit says so. The splice's own flow control (pausing reading while the other side
cannot write) and the rate limit's pause are kept apart, so neither resumes what the other paused.

A stream cut at its cap ends like one the destination closed: the gateway's side gets every byte
already relayed, then an end of stream (``write_eof``), and is closed once they are written out
(aborted if that takes ``LINGER`` seconds). Its reading stays paused from the cut on: what the
gateway still sends is never read, so TCP's backpressure stops the gateway after about a socket
buffer — reading and discarding it would let the gateway relay (and meter) at full speed bytes
the agent never counts, past the provider's cap. On a reused data connection whose gateway agreed
to ``cut`` the agent tells the gateway where it stopped instead, and the gateway stops writing:
then what was in flight is read and dropped below this wrapper (``gateway.reuse``), up to the
gateway's end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.agent.governor import StreamGate

LINGER = 5.0  # seconds a cut stream's gateway side has to write out what was relayed before it


class _Intercept(asyncio.Protocol):
    """The protocol on the real transport: hands everything to the wrapper's protocol."""

    __slots__ = ("_outer",)

    def __init__(self, outer: GatedTransport) -> None:
        self._outer = outer

    def data_received(self, data: bytes) -> None:
        self._outer._received(data)

    def eof_received(self) -> bool | None:
        return self._outer._eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._outer._lost(exc)

    def pause_writing(self) -> None:
        if self._outer.protocol is not None:
            self._outer.protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._outer.protocol is not None:
            self._outer.protocol.resume_writing()


class GatedTransport(asyncio.Transport):
    """``transport`` with reads admitted by ``gate``; ``up`` if it is the gateway's side (what
    it reads goes up to the destination). ``linger``: close it gently after a cut."""

    def __init__(self, transport: asyncio.Transport, gate: StreamGate, *, up: bool, linger: bool) -> None:
        super().__init__()
        self._transport = transport
        self._gate = gate
        self._up = up
        self._linger = linger
        self.protocol: asyncio.Protocol | None = None
        self._flow_paused = False  # paused by the splice (the other side cannot take more)
        self._throttled = False  # paused by the rate limit
        self._reading = True
        self._draining = False  # cut: never reading again, closing once the bytes relayed are out
        self._timer: asyncio.TimerHandle | None = None

    # what the splice calls
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError("a gated transport relays to a plain Protocol")
        self.protocol = protocol
        self._transport.set_protocol(_Intercept(self))

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[return-value]

    def is_closing(self) -> bool:
        return self._transport.is_closing() or self._draining

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._flow_paused = True
        self._apply()

    def resume_reading(self) -> None:
        self._flow_paused = False
        self._apply()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if not self._draining:
            self._transport.write(data)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        if not self._draining:
            self._transport.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        if self._draining or self._transport.is_closing():
            return
        if not (self._linger and self._gate.exhausted):
            self._transport.close()
            return
        # Cut at the cap: reading stays paused; an end of stream after the bytes relayed, and the
        # close once they are out (the transport's own close waits for its write buffer).
        self._draining = True
        self._apply()
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._transport.close()
        self._timer = asyncio.get_running_loop().call_later(LINGER, self._transport.abort)

    def abort(self) -> None:
        self._transport.abort()

    # what the real transport tells
    def _received(self, data: bytes) -> None:
        if self._draining or self.protocol is None:
            return
        allowed, delay = self._gate.admit(len(data), self._up)
        if allowed:
            self.protocol.data_received(data if allowed == len(data) else data[:allowed])
        if self._gate.exhausted:
            self._gate.cut()
        elif delay > 0 and not self._throttled:
            self._throttled = True
            self._apply()
            asyncio.get_running_loop().call_later(delay, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        self._apply()

    def _eof(self) -> bool | None:
        if self._draining:
            return None
        return None if self.protocol is None else self.protocol.eof_received()

    def _lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.protocol is not None:
            self.protocol.connection_lost(exc)

    def _apply(self) -> None:
        reading = not (self._draining or self._flow_paused or self._throttled)
        if reading == self._reading or self._transport.is_closing():
            return
        self._reading = reading
        if reading:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()
