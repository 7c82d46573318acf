"""The provider tunnel over WebSocket (``ws://`` and ``wss://``), for agents that can only reach the web.

Offices, hotels and some carriers let out nothing but web traffic, often through a TLS-terminating
load balancer. An agent there dials the gateway's tunnel port as a WebSocket client: every
connection it opens, control or data, starts with an HTTP/1.1 Upgrade and then carries the very
byte stream of the native tunnel, one binary message per write. The gateway takes both kinds on
the same port and tells them apart by the first byte (``G`` of ``GET`` against the ``{`` of the
native protocol's first line), so ``wss://`` is the TLS tunnel port with a WebSocket handshake.

``WsTransport`` presents the message stream as an ordinary ``asyncio.Transport``: ``Conn``, the
tunnel hub and the splice run on it unchanged, and both meters count the stream's bytes, not the
framing. WebSocket has no half-close; an empty binary message stands for it (the stream never
sends one otherwise: ``write(b"")`` sends nothing), so a requester that shuts its sending side is
heard as EOF at the destination, as over plain TCP.

Both the handshake and the frames are on the hot path (an agent upgrades every data connection,
one per stream), so both are written here rather than left to the ``websockets`` library: the
handshake in ``gateway.ws_handshake``, the frames below. The library's frame reader parses
through generators and copies each frame whole, which cost this tunnel a third of its keep-alive
throughput in the benchmark (``loadtests/RESULTS.md``); here a frame is one ``writev`` of header
and payload, and a payload is handed on chunk by chunk as it arrives, unmasked by the library's C
``apply_mask``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

from gateway import ws_handshake
from gateway.conn import Conn
from gateway.http1 import (
    HeadReader,
    ProtocolError,
    RequestHead,
    ResponseHead,
    ResponseHeadReader,
    UpstreamProtocolError,
)
from gateway.ws_handshake import check_answer, check_upgrade, refusal, switching

try:
    from websockets.speedups import apply_mask  # the library's C masking
except ImportError:  # pragma: no cover - a build of websockets without its C extension
    from websockets.utils import apply_mask

log = logging.getLogger("ipsx.gateway.ws")

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset({_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG})
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED = 1000, 1002, 1003
_ECHOED = frozenset({1000, 1001})  # close codes echoed back; any other is answered with 1000


class HandshakeFailed(ConnectionError):
    """The WebSocket upgrade was refused, malformed or timed out."""


class WsTransport(asyncio.Transport):
    """A byte stream over one WebSocket connection, as a transport (see the module's docstring)."""

    def __init__(self, wire: _Wire) -> None:
        super().__init__()
        self._wire = wire
        self._protocol: asyncio.Protocol | None = None
        self._closing = False
        self._eof_sent = False

    # what Conn and Splice use
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing and not self._eof_sent and data:
            self._wire.send(_BINARY, data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_sent:
            return
        self._eof_sent = True
        self._wire.send(_BINARY, b"")  # an empty message: no more data this way

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._wire.fail(CLOSE_NORMAL)

    def abort(self) -> None:
        self._closing = True
        self._wire.raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._wire.raw.is_closing()

    def pause_reading(self) -> None:
        self._wire.pause_reading(stream=True)

    def resume_reading(self) -> None:
        self._wire.resume_reading(stream=True)

    def is_reading(self) -> bool:
        return self._wire.raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._wire.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._wire.raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._wire.raw.get_write_buffer_limits()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "websocket":
            return True
        return self._wire.raw.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError("a WebSocket stream carries bytes: it takes an asyncio.Protocol")
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        if self._protocol is None:
            raise RuntimeError("the WebSocket stream has no protocol yet")
        return self._protocol


class _Masks:
    """Masking keys for the agent's frames (and its handshakes' nonces), drawn from the OS's random
    source a page at a time (one ``getrandom`` per 1,024 frames instead of one per frame)."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self, size: int = 4) -> bytes:
        if self._at + size > len(self._pool):
            self._pool, self._at = os.urandom(4096), 0
        key = self._pool[self._at : self._at + size]
        self._at += size
        return key


_MASKS = _Masks()


Head = RequestHead | ResponseHead  # what a handshake reads: the agent's request, the gateway's answer


class _Wire(asyncio.Protocol):
    """The protocol on the real transport: the handshake's head, then the frames.

    The head is read by the gateway's HTTP/1.1 reader within ``ws_handshake.LIMITS`` and handed to
    ``on_handshake``, which answers or checks it. Frames are read as a stream: a data frame's
    payload goes to the stream's protocol chunk by chunk as it arrives (unmasked in C), so no
    frame is ever buffered whole and a frame's size needs no limit. Control frames (125 bytes at
    most) are answered here: ping with pong, close with close. A ping that comes while the write
    buffer is above its high-water mark (the peer is not reading) pauses reading: its pong, for
    the latest ping only (RFC 6455 §5.5.3), goes out once the buffer has drained.
    """

    def __init__(
        self,
        raw: asyncio.Transport,
        on_handshake: Callable[[_Wire, Head | None], None],
        timeout: float,
        *,
        client: bool,
    ) -> None:
        self.raw = raw
        self.stream: WsTransport | None = None
        self._client = client  # masks what it sends; reads unmasked frames
        self._reader = ResponseHeadReader(ws_handshake.LIMITS) if client else HeadReader(ws_handshake.LIMITS)
        self._on_handshake: Callable[[_Wire, Head | None], None] | None = on_handshake
        # Why a handshake ended without its head: the HTTP status a server answers (408 too slow,
        # 431 too long, 400 not HTTP, ...), 502 for a client that read no HTTP answer; 0 when the
        # connection is gone.
        self.failure = 0
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            timeout, self._handshake_over, None, 408
        )
        # the frame being read
        self._head = bytearray()  # its header, while incomplete
        self._left = 0  # payload bytes still to come
        self._opcode = 0
        self._mask: bytes | None = None
        self._at = 0  # payload bytes read so far (where the mask stands)
        self._control = bytearray()  # a control frame's payload
        self._eof_frame = False  # the frame is an empty binary message: the peer's half-close
        self._closed = False  # a close frame was sent: nothing more goes out, nothing is read
        self._write_paused = False  # the raw transport's write buffer is above its high-water mark
        self._pong: bytes | None = None  # the pong owed for a ping read while writing was paused
        # Who wants reading paused: the stream's protocol, and this wire while a pong is owed.
        self._stream_paused = False
        self._pong_paused = False
        raw.set_protocol(self)

    def open(self, protocol: asyncio.Protocol) -> WsTransport:
        """The handshake succeeded: from now on the stream goes to ``protocol`` through a WsTransport."""
        stream = self.stream = WsTransport(self)
        stream.set_protocol(protocol)
        protocol.connection_made(stream)
        return stream

    def refuse(self, status: int, extra: str = "") -> None:
        """Answer the handshake with an HTTP error (``extra``: more header lines) and close."""
        self.raw.write(refusal(status, extra))
        self.raw.close()

    # writing frames
    def send(self, opcode: int, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self.raw.is_closing():
            return
        size = len(data)
        mask_bit = 0x80 if self._client else 0
        if size < 126:
            header = bytes((0x80 | opcode, mask_bit | size))
        elif size < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, size)
        if self._client:
            key = _MASKS.next()
            self.raw.writelines((header, key, apply_mask(bytes(data), key)))
        else:
            self.raw.writelines((header, data))

    def fail(self, code: int, reason: str = "") -> None:
        """Send a close frame with ``code`` (once) and close the connection once it is written."""
        if not self._closed and not self.raw.is_closing():
            self.send(_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
            self._closed = True
        self.raw.close()

    # flow control
    def pause_reading(self, *, stream: bool) -> None:
        if stream:
            self._stream_paused = True
        else:
            self._pong_paused = True
        self.raw.pause_reading()

    def resume_reading(self, *, stream: bool) -> None:
        if stream:
            self._stream_paused = False
        else:
            self._pong_paused = False
        if not self._stream_paused and not self._pong_paused:
            self.raw.resume_reading()

    # reading frames
    def _frames(self, data: bytes) -> None:
        at, size = 0, len(data)
        while at < size and not self._closed:
            if self._left:
                take = min(self._left, size - at)
                chunk = data if take == size else data[at : at + take]
                at += take
                self._payload(chunk)
                continue
            head = self._head
            need = 2 if len(head) < 2 else _header_size(head[1])
            if len(head) < need:
                take = min(need - len(head), size - at)
                head += data[at : at + take]
                at += take
                if len(head) == 2:
                    need = _header_size(head[1])
                if len(head) < need:
                    continue
            if not self._start(head):
                return
            head.clear()
            if not self._left:
                self._frame_done()

    def _start(self, head: bytearray) -> bool:
        """Take a frame's header; False (and the connection failed) if it breaks the protocol."""
        first, second = head[0], head[1]
        opcode, size = first & 0x0F, second & 0x7F
        if size == 126:
            size = int.from_bytes(head[2:4], "big")
        elif size == 127:
            size = int.from_bytes(head[2:10], "big")
        masked = bool(second & 0x80)
        if first & 0x70 or masked == self._client or size >= 1 << 63 or opcode not in _OPCODES:
            self.fail(CLOSE_PROTOCOL_ERROR, "bad frame")
            return False
        if opcode >= _CLOSE and (size > 125 or not first & 0x80):
            self.fail(CLOSE_PROTOCOL_ERROR, "bad control frame")
            return False
        if opcode == _TEXT:
            self.fail(CLOSE_UNSUPPORTED, "binary messages only")
            return False
        self._opcode, self._left, self._at = opcode, size, 0
        self._mask = bytes(head[-4:]) if masked else None
        self._eof_frame = opcode == _BINARY and size == 0 and bool(first & 0x80)
        return True

    def _payload(self, chunk: bytes) -> None:
        mask = self._mask
        if mask is not None:
            turn = self._at & 3
            chunk = apply_mask(chunk, mask[turn:] + mask[:turn] if turn else mask)
        self._left -= len(chunk)
        self._at += len(chunk)
        if self._opcode < _CLOSE:
            stream = self.stream
            if stream is not None and stream._protocol is not None:
                stream._protocol.data_received(chunk)
        else:
            self._control += chunk
        if not self._left:
            self._frame_done()

    def _frame_done(self) -> None:
        opcode = self._opcode
        if opcode < _CLOSE:
            if self._eof_frame and self.stream is not None and self.stream._protocol is not None:
                self._eof_frame = False
                self.stream._protocol.eof_received()
            return
        payload = bytes(self._control)
        self._control.clear()
        if opcode == _PING:
            if self._write_paused:
                self._pong = payload
                if not self._pong_paused:
                    self.pause_reading(stream=False)
            else:
                self.send(_PONG, payload)
        elif opcode == _CLOSE:  # echo the code and close: the stream sees connection_lost
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NORMAL
            self.fail(code if code in _ECHOED else CLOSE_NORMAL)

    def _handshake_over(self, head: Head | None, failure: int = 0) -> None:
        if self._on_handshake is not None:
            self.failure = failure
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        callback, self._on_handshake = self._on_handshake, None
        if callback is not None:
            callback(self, head)

    # asyncio callbacks
    def data_received(self, data: bytes) -> None:
        if self._on_handshake is None:
            if self.stream is not None:
                self._frames(data)
            return
        try:
            head = self._reader.feed(data)
        except ProtocolError as error:  # the gateway reading an agent's request
            self._handshake_over(None, error.status if error.status in ws_handshake.REFUSALS else 400)
            return
        except UpstreamProtocolError:  # the agent reading the gateway's answer
            self._handshake_over(None, 502)
            return
        if head is None:
            return
        self._handshake_over(head)
        after = self._reader.rest
        if after and self.stream is not None:
            self._frames(after)

    def eof_received(self) -> bool:
        return False  # without a close frame: the stream is lost (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_over(None)
        stream = self.stream
        if stream is not None and stream._protocol is not None:
            stream._closing = True
            stream._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.stream is not None and self.stream._protocol is not None:
            self.stream._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._pong is not None:
            pong, self._pong = self._pong, None
            self.send(_PONG, pong)
        if self._pong_paused:
            self.resume_reading(stream=False)
        if self.stream is not None and self.stream._protocol is not None:
            self.stream._protocol.resume_writing()


def _header_size(second: int) -> int:
    """A frame header's length in bytes, from its second byte."""
    size = second & 0x7F
    return 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if second & 0x80 else 0)


# the gateway's side
def looks_like_upgrade(first: bytes) -> bool:
    """Whether a tunnel connection's first bytes are an HTTP request rather than a native line."""
    return first[:1] == b"G"


def accept(
    transport: asyncio.Transport,
    received: bytes,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    timeout: float,
) -> None:
    """Take over ``transport`` (whose ``received`` bytes begin an upgrade request) and, once the
    handshake is done, give the stream to a new ``protocol_factory()``. A bad request is answered
    with its HTTP error and closed; one that does not complete within ``timeout`` gets 408."""

    def handshake(wire: _Wire, head: Head | None) -> None:
        if not isinstance(head, RequestHead):
            if wire.failure:
                log.info(
                    "tunnel connection refused: %d %s",
                    wire.failure,
                    ws_handshake.REFUSALS[wire.failure].strip(),
                )
                wire.refuse(wire.failure)
            else:
                wire.raw.close()
            return
        checked = check_upgrade(head)
        if not isinstance(checked, str):
            status, why, extra = checked
            log.info("tunnel websocket refused: %d %s", status, why)
            wire.refuse(status, extra)
            return
        wire.raw.write(switching(checked))
        wire.open(protocol_factory())

    wire = _Wire(transport, handshake, timeout, client=False)
    if received:
        wire.data_received(received)


# the agent's side
async def connect(conn: Conn, url: str, *, within: float, user_agent: str = "ipsx-agent") -> Conn:
    """Upgrade ``conn`` (TCP or TLS, just connected to the gateway) to a WebSocket at ``url``
    (``ws://HOST:PORT/PATH`` or ``wss://…``); returns a ``Conn`` reading and writing the stream.

    Raises HandshakeFailed (the gateway refused or did not answer), TimeoutError, or ValueError
    for a ``url`` that is no such URL (``conn`` is closed then too).
    """
    key = base64.b64encode(_MASKS.next(16)).decode("ascii")
    try:
        request = ws_handshake.upgrade_request(url, key, user_agent)
    except ValueError:
        conn.close()
        raise
    transport, unread, eof = conn.detach()
    if eof:
        transport.close()
        raise HandshakeFailed("the gateway closed the connection")
    done: asyncio.Future[Conn] = asyncio.get_running_loop().create_future()

    def handshake(wire: _Wire, head: Head | None) -> None:
        if done.done():
            return
        problem = None
        if isinstance(head, ResponseHead):
            problem = check_answer(head, key)
            if problem is None:
                done.set_result(stream_conn)
                wire.open(stream_conn)
                return
        wire.raw.close()
        if problem is not None:
            done.set_exception(HandshakeFailed(problem))
        elif wire.failure == 408:
            done.set_exception(TimeoutError())
        elif wire.failure == 502:
            done.set_exception(HandshakeFailed("the gateway's answer to the upgrade is not HTTP/1.1"))
        else:
            done.set_exception(HandshakeFailed("the gateway closed the connection during the handshake"))

    stream_conn = Conn()
    wire = _Wire(transport, handshake, within, client=True)
    transport.write(request)
    if unread:
        wire.data_received(unread)
    try:
        return await done
    except BaseException:
        transport.abort()
        raise


def upgrade_request(path: str = "/", host: str = "gw") -> bytes:
    """A client's upgrade request, as bytes (for tests and probes that speak raw sockets)."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    return ws_handshake.upgrade_request(f"ws://{host}{path}", key, "ipsx-probe")
