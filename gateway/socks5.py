"""SOCKS5 server side without I/O: RFC 1928 CONNECT with RFC 1929 username/password only.

Drive it like h11: ``receive_data(bytes)``, then ``next_event()`` until ``NEED_DATA``. Bytes the core
answers on its own (the method selection) come out of ``data_to_send()``; the answers that need a
decision (``send_auth_result``, ``send_reply``) return their bytes. Every state change goes through
``_TRANSITIONS``. A client's protocol error raises :class:`Socks5Error` carrying the bytes to send
before closing; calling a method in the wrong state is the caller's bug and raises RuntimeError.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.http1 import normalize_host


class Socks5Error(Exception):
    """The client broke SOCKS5 or was refused: send ``reply`` (may be empty), then close."""

    def __init__(self, reply: bytes, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class ReplyCode(enum.IntEnum):
    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """RFC 1929 credentials; answer with ``send_auth_result``."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A CONNECT to ``host:port``; answer with ``send_reply``.

    ``host`` is a lower-cased DNS name, dotted-quad IPv4, or compressed IPv6 without brackets;
    ``address_type`` is the ATYP the client used (1 IPv4, 3 domain, 4 IPv6).
    """

    host: str
    port: int
    address_type: int


Event = AuthRequest | ConnectRequest | Literal[NeedData.NEED_DATA]


class _State(enum.Enum):
    GREETING = enum.auto()
    AUTH = enum.auto()
    AUTH_PENDING = enum.auto()  # AuthRequest returned, awaiting send_auth_result
    REQUEST = enum.auto()
    REPLY_PENDING = enum.auto()  # ConnectRequest returned, awaiting send_reply
    ESTABLISHED = enum.auto()
    CLOSED = enum.auto()


class _Input(enum.Enum):
    GREETING_OK = enum.auto()
    AUTH_RECEIVED = enum.auto()
    AUTH_ACCEPTED = enum.auto()
    AUTH_REJECTED = enum.auto()
    CONNECT_RECEIVED = enum.auto()
    REPLY_SUCCEEDED = enum.auto()
    REPLY_FAILED = enum.auto()
    PROTOCOL_ERROR = enum.auto()


_TRANSITIONS: Final[dict[tuple[_State, _Input], _State]] = {
    (_State.GREETING, _Input.GREETING_OK): _State.AUTH,
    (_State.AUTH, _Input.AUTH_RECEIVED): _State.AUTH_PENDING,
    (_State.AUTH_PENDING, _Input.AUTH_ACCEPTED): _State.REQUEST,
    (_State.AUTH_PENDING, _Input.AUTH_REJECTED): _State.CLOSED,
    (_State.REQUEST, _Input.CONNECT_RECEIVED): _State.REPLY_PENDING,
    (_State.REPLY_PENDING, _Input.REPLY_SUCCEEDED): _State.ESTABLISHED,
    (_State.REPLY_PENDING, _Input.REPLY_FAILED): _State.CLOSED,
    (_State.GREETING, _Input.PROTOCOL_ERROR): _State.CLOSED,
    (_State.AUTH, _Input.PROTOCOL_ERROR): _State.CLOSED,
    (_State.AUTH_PENDING, _Input.PROTOCOL_ERROR): _State.CLOSED,
    (_State.REQUEST, _Input.PROTOCOL_ERROR): _State.CLOSED,
    (_State.REPLY_PENDING, _Input.PROTOCOL_ERROR): _State.CLOSED,
}

_METHOD_USERPASS = 0x02
_CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
_AUTH_OK = b"\x01\x00"
_AUTH_FAILED = b"\x01\x01"


def _error_reply(code: ReplyCode) -> bytes:
    return bytes((5, code, 0, ATYP_IPV4)) + bytes(6)


def _refuse(code: ReplyCode, reason: str) -> Socks5Error:
    return Socks5Error(_error_reply(code), reason)


class Socks5Server:
    """One client connection's SOCKS5 handshake, from greeting to the CONNECT reply."""

    __slots__ = ("_buf", "_max_buffer", "_out", "_state")

    def __init__(self, *, max_buffer: int = 65536) -> None:
        self._state = _State.GREETING
        self._buf = bytearray()
        self._out = bytearray()
        self._max_buffer = max_buffer

    def _apply(self, event: _Input) -> None:
        new = _TRANSITIONS.get((self._state, event))
        if new is None:
            raise RuntimeError(f"SOCKS5: {event.name} not allowed in state {self._state.name}")
        self._state = new

    @property
    def trailing(self) -> bytes:
        """Bytes the client sent after its CONNECT request (early data), to forward upstream."""
        if self._state not in (_State.REPLY_PENDING, _State.ESTABLISHED):
            return b""
        return bytes(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the client. Raises Socks5Error when the client floods the handshake."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.ESTABLISHED:
            raise RuntimeError("SOCKS5: the handshake is over; relay the client's bytes directly")
        self._buf += data
        if len(self._buf) > self._max_buffer:
            self._apply(_Input.PROTOCOL_ERROR)
            raise Socks5Error(b"", "too much data before the handshake completed")

    def data_to_send(self) -> bytes:
        """Drain the bytes the core produced on its own (the method-selection reply)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event:
        """The next request from the client, or NEED_DATA (also while a decision is pending).

        Raises Socks5Error on a protocol error, after which the connection is closed.
        """
        try:
            if self._state is _State.GREETING and not self._greeting():
                return NEED_DATA
            if self._state is _State.AUTH:
                return self._auth()
            if self._state is _State.REQUEST:
                return self._request()
        except Socks5Error:
            self._apply(_Input.PROTOCOL_ERROR)
            raise
        if self._state is _State.CLOSED:
            raise RuntimeError("SOCKS5: the connection is closed")
        return NEED_DATA

    def send_auth_result(self, ok: bool) -> bytes:
        """The RFC 1929 reply to the AuthRequest; after a failure, send it and close."""
        self._apply(_Input.AUTH_ACCEPTED if ok else _Input.AUTH_REJECTED)
        return _AUTH_OK if ok else _AUTH_FAILED

    def send_reply(self, code: ReplyCode, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
        """The reply to the ConnectRequest; any code but SUCCEEDED means send it and close.

        ``bind_host`` must be an IPv4 or IPv6 literal (ValueError otherwise: our bug).
        """
        address = ipaddress.ip_address(bind_host)
        if not 0 <= bind_port <= 65535:
            raise ValueError(f"invalid bind port {bind_port}")
        self._apply(_Input.REPLY_SUCCEEDED if code == ReplyCode.SUCCEEDED else _Input.REPLY_FAILED)
        atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
        return bytes((5, code, 0, atyp)) + address.packed + bind_port.to_bytes(2, "big")

    def _greeting(self) -> bool:
        buf = self._buf
        if buf and buf[0] != 5:
            raise Socks5Error(b"", "not a SOCKS5 client")
        if len(buf) < 2:
            return False
        count = buf[1]
        if count == 0:
            raise Socks5Error(b"\x05\xff", "no authentication methods offered")
        if len(buf) < 2 + count:
            return False
        methods = buf[2 : 2 + count]
        del buf[: 2 + count]
        if _METHOD_USERPASS not in methods:
            raise Socks5Error(b"\x05\xff", "username/password authentication required")
        self._out += b"\x05\x02"
        self._apply(_Input.GREETING_OK)
        return True

    def _auth(self) -> AuthRequest | Literal[NeedData.NEED_DATA]:
        buf = self._buf
        if buf and buf[0] != 1:
            raise Socks5Error(_AUTH_FAILED, "bad username/password sub-negotiation version")
        if len(buf) < 2:
            return NEED_DATA
        ulen = buf[1]
        if ulen == 0:
            raise Socks5Error(_AUTH_FAILED, "empty username")
        if len(buf) < 3 + ulen:
            return NEED_DATA
        plen = buf[2 + ulen]
        if plen == 0:
            raise Socks5Error(_AUTH_FAILED, "empty password")
        if len(buf) < 3 + ulen + plen:
            return NEED_DATA
        raw_user, raw_password = bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : 3 + ulen + plen])
        del buf[: 3 + ulen + plen]
        try:
            event = AuthRequest(raw_user.decode("utf-8"), raw_password.decode("utf-8"))
        except UnicodeDecodeError:
            raise Socks5Error(_AUTH_FAILED, "credentials are not UTF-8") from None
        self._apply(_Input.AUTH_RECEIVED)
        return event

    def _request(self) -> ConnectRequest | Literal[NeedData.NEED_DATA]:
        buf = self._buf
        if buf and buf[0] != 5:
            raise _refuse(ReplyCode.GENERAL_FAILURE, "bad request version")
        if len(buf) > 1 and buf[1] != _CMD_CONNECT:
            raise _refuse(ReplyCode.COMMAND_NOT_SUPPORTED, "only CONNECT is supported")
        if len(buf) > 2 and buf[2] != 0:
            raise _refuse(ReplyCode.GENERAL_FAILURE, "reserved byte not zero")
        if len(buf) < 4:
            return NEED_DATA
        atyp = buf[3]
        if atyp not in (ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6):
            raise _refuse(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED, "unknown address type")
        if len(buf) < 5:  # a domain's length byte
            return NEED_DATA
        size = 4 if atyp == ATYP_IPV4 else 16 if atyp == ATYP_IPV6 else 1 + buf[4]
        if size == 1:
            raise _refuse(ReplyCode.GENERAL_FAILURE, "empty domain name")
        end = 4 + size + 2
        if len(buf) < end:
            return NEED_DATA
        raw = bytes(buf[4 : 4 + size])
        port = int.from_bytes(buf[4 + size : end], "big")
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(raw))
        elif atyp == ATYP_IPV6:
            host = ipaddress.IPv6Address(raw).compressed
        else:
            name = raw[1:]
            if not name.isascii() or not name.decode("ascii").isprintable():
                raise _refuse(ReplyCode.GENERAL_FAILURE, "domain name is not printable ASCII")
            checked = normalize_host(name.decode("ascii"))
            if checked is None:
                raise _refuse(ReplyCode.GENERAL_FAILURE, "invalid domain name")
            host = checked
        if port == 0:
            raise _refuse(ReplyCode.GENERAL_FAILURE, "port 0")
        del buf[:end]
        self._apply(_Input.CONNECT_RECEIVED)
        return ConnectRequest(host, port, atyp)
