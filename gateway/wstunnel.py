"""The provider tunnel over WebSocket (``ws://`` and ``wss://``), for agents that can only reach the web.

Offices, hotels and some carriers let out nothing but web traffic, often through a TLS-terminating
load balancer. An agent there dials the gateway's tunnel port as a WebSocket client: every
connection it opens, control or data, starts with an HTTP/1.1 Upgrade and then carries the very
byte stream of the native tunnel, one binary message per write. The gateway takes both kinds on
the same port and tells them apart by the first byte (``G`` of ``GET`` against the ``{`` of the
native protocol's first line), so ``wss://`` is the TLS tunnel port with a WebSocket handshake.

``WsTransport`` presents the message stream as an ordinary ``asyncio.Transport``: ``Conn``, the
tunnel hub and the splice run on it unchanged, and both meters count the stream's bytes, not the
framing. The handshake, framing and masking are the ``websockets`` library's sans-I/O protocol
(masking in its C extension). WebSocket has no half-close; an empty binary message stands for it
(the stream never sends one otherwise: ``write(b"")`` sends nothing), so a requester that shuts
its sending side is heard as EOF at the destination, as over plain TCP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, Side, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from gateway.conn import Conn

log = logging.getLogger("ipsx.gateway.ws")

# websockets logs every opened connection at INFO; an agent opens one per stream.
_LIBRARY_LOG = logging.getLogger("ipsx.gateway.ws.frames")
_LIBRARY_LOG.setLevel(logging.WARNING)

PATHS = frozenset({"/", "/tunnel"})  # where the gateway takes the upgrade
MAX_MESSAGE = 1024 * 1024  # largest message taken from the peer (a write is split below this)
_CHUNK = 256 * 1024  # largest message written: one read of the relay, at most
MAX_HANDSHAKE = 16 * 1024  # bytes of upgrade request or response read before giving up
SERVER = "ipsx-gateway"
_REFUSALS = {
    400: "expected a WebSocket upgrade request or the tunnel protocol\n",
    408: "the WebSocket handshake took too long\n",
    431: "the WebSocket upgrade request is too long\n",
}
_BINARY, _CONT, _TEXT, _CLOSE = Opcode.BINARY, Opcode.CONT, Opcode.TEXT, Opcode.CLOSE


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
        if self._closing or self._eof_sent or not data:
            return
        ws = self._wire.ws
        if len(data) <= _CHUNK:
            ws.send_binary(bytes(data))
        else:
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                ws.send_binary(bytes(view[start : start + _CHUNK]))
        self._wire.flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_sent:
            return
        self._eof_sent = True
        self._wire.ws.send_binary(b"")
        self._wire.flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wire.close_stream()

    def abort(self) -> None:
        self._closing = True
        self._wire.raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._wire.raw.is_closing()

    def pause_reading(self) -> None:
        self._wire.raw.pause_reading()

    def resume_reading(self) -> None:
        self._wire.raw.resume_reading()

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
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol


class _Wire(asyncio.Protocol):
    """The protocol on the real transport: runs the handshake, then (un)frames for ``WsTransport``."""

    def __init__(
        self,
        ws: ServerProtocol | ClientProtocol,
        raw: asyncio.Transport,
        on_handshake: Callable[[_Wire, Request | Response | None], None],
        timeout: float,
    ) -> None:
        self.ws = ws
        self.raw = raw
        self.stream: WsTransport | None = None
        self._on_handshake: Callable[[_Wire, Request | Response | None], None] | None = on_handshake
        self._handshake_bytes = 0
        self._held = bytearray()  # a server's handshake bytes, until the request is complete
        # Why a handshake ended without its request or response: the HTTP status a server answers
        # (408 too slow, 431 too long, 400 not an upgrade request); 0 when the connection is gone.
        self.failure = 0
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            timeout, self._handshake_over, None, 408
        )
        raw.set_protocol(self)

    def open(self, protocol: asyncio.Protocol) -> WsTransport:
        """The handshake succeeded: from now on messages go to ``protocol`` through a WsTransport."""
        stream = self.stream = WsTransport(self)
        stream.set_protocol(protocol)
        protocol.connection_made(stream)
        return stream

    def flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk is SEND_EOF or not chunk:
                if not self.raw.is_closing():
                    self.raw.close()  # the closing handshake or a refusal is complete
                return
            self.raw.write(chunk)

    def close_stream(self) -> None:
        """Close with status 1000 and let the transport flush it, then close the connection."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self.flush()
        self.raw.close()

    def _handshake_over(self, event: Request | Response | None, failure: int = 0) -> None:
        if self._on_handshake is not None:
            self.failure = failure
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        callback, self._on_handshake = self._on_handshake, None
        if callback is not None:
            callback(self, event)

    # asyncio callbacks
    def data_received(self, data: bytes) -> None:
        if self._on_handshake is not None:
            self._handshake_bytes += len(data)
            if self._handshake_bytes > MAX_HANDSHAKE:
                self._handshake_over(None, 431)
                self.raw.close()
                return
            if self.ws.side is Side.SERVER:
                # The library parses on into frames after the request, before it is answered:
                # give it the request alone, and what came after it once the stream is open.
                self._held += data
                end = self._held.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, after = bytes(self._held[: end + 4]), bytes(self._held[end + 4 :])
                self._held.clear()
                self._receive(head)
                if after and self.stream is not None:
                    self._receive(after)
                return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        if not events and ws.handshake_exc is not None:
            self._handshake_over(None, 400)  # not an HTTP request (or response) at all
        self.flush()
        for event in events:
            if type(event) is Frame:
                self._frame(event)
            else:  # the handshake's request (server) or response (client)
                self._handshake_over(event)  # type: ignore[arg-type]
        if ws.state is State.CLOSED and not self.raw.is_closing():
            self.raw.close()

    def _frame(self, frame: Frame) -> None:
        stream = self.stream
        if stream is None:
            return
        protocol = stream._protocol
        if protocol is None:
            return
        opcode = frame.opcode
        if opcode is _BINARY or opcode is _CONT:
            if frame.data:
                protocol.data_received(bytes(frame.data))  # no copy: parsed frames hold bytes
            elif opcode is _BINARY and frame.fin:
                protocol.eof_received()
        elif opcode is _TEXT:
            self.ws.fail(1003, "binary messages only")
            self.flush()
            self.raw.close()
        # close: the library answered it (flushed above) and the connection closes; ping/pong: done

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self.flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_over(None)
        stream = self.stream
        if stream is not None and stream._protocol is not None:
            stream._closing = True
            stream._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.stream is not None and self.stream._protocol is not None:
            self.stream._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self.stream is not None and self.stream._protocol is not None:
            self.stream._protocol.resume_writing()


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
    with its HTTP error and closed; one that does not complete within ``timeout`` is dropped."""

    def handshake(wire: _Wire, event: Request | Response | None) -> None:
        ws = wire.ws
        assert isinstance(ws, ServerProtocol)
        if not isinstance(event, Request):
            if wire.failure:
                refusal = ws.reject(wire.failure, _REFUSALS[wire.failure])
                refusal.headers["Server"] = SERVER
                wire.raw.write(refusal.serialize())
                log.info("tunnel connection refused: %d %s", wire.failure, _REFUSALS[wire.failure].strip())
            wire.raw.close()
            return
        if event.path.partition("?")[0] not in PATHS:
            response = ws.reject(404, "no tunnel here\n")
        else:
            response = ws.accept(event)
        response.headers["Server"] = SERVER
        ws.send_response(response)
        wire.flush()
        if response.status_code != 101:
            why = ws.handshake_exc or event.path[:80]
            log.info("tunnel websocket refused: %d %s", response.status_code, why)
            return
        wire.open(protocol_factory())

    ws = ServerProtocol(max_size=MAX_MESSAGE, logger=_LIBRARY_LOG)
    wire = _Wire(ws, transport, handshake, timeout)
    if received:
        wire.data_received(received)


# the agent's side
async def connect(conn: Conn, url: str, *, within: float, user_agent: str = "ipsx-agent") -> Conn:
    """Upgrade ``conn`` (TCP or TLS, just connected to the gateway) to a WebSocket at ``url``
    (``ws://HOST:PORT/PATH`` or ``wss://…``); returns a ``Conn`` reading and writing the stream.

    Raises HandshakeFailed (the gateway refused or did not answer) or TimeoutError.
    """
    transport, unread, eof = conn.detach()
    if eof:
        transport.close()
        raise HandshakeFailed("the gateway closed the connection")
    ws = ClientProtocol(parse_uri(url), max_size=MAX_MESSAGE, logger=_LIBRARY_LOG)
    done: asyncio.Future[Conn] = asyncio.get_running_loop().create_future()

    def handshake(wire: _Wire, event: Request | Response | None) -> None:
        if done.done():
            return
        if isinstance(event, Response) and ws.state is State.OPEN:
            done.set_result(stream_conn)
            wire.open(stream_conn)
            return
        wire.raw.close()
        if isinstance(event, Response):
            answer = f"{event.status_code} {event.reason_phrase}"
            done.set_exception(HandshakeFailed(f"the gateway answered {answer}"))
        elif wire.failure == 408:
            done.set_exception(TimeoutError())
        else:
            done.set_exception(HandshakeFailed(str(ws.handshake_exc or "no WebSocket handshake answer")))

    stream_conn = Conn()
    wire = _Wire(ws, transport, handshake, within)
    request = ws.connect()
    request.headers["User-Agent"] = user_agent
    ws.send_request(request)
    wire.flush()
    if unread:
        wire.data_received(unread)
    try:
        return await done
    except BaseException:
        transport.abort()
        raise


def upgrade_request(path: str = "/", host: str = "gw") -> bytes:
    """A client's upgrade request, as bytes (for tests and probes that speak raw sockets)."""
    ws = ClientProtocol(parse_uri(f"ws://{host}{path}"), logger=_LIBRARY_LOG)
    request = ws.connect()
    return request.serialize()
