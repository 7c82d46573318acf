"""The WebSocket upgrade handshake of the provider tunnel (RFC 6455 §4), without I/O.

An agent at ``--gateway ws://…`` or ``wss://…`` upgrades every connection it opens, one per
stream, so the handshake is on the hot path; it is written here, on the gateway's own HTTP/1.1
head reader (``gateway.http1``: its limits, its errors), rather than left to the ``websockets``
library, whose sans-I/O handshake costs 3.5 times the CPU (``loadtests/bench_ws_handshake.py``).
``gateway.wstunnel`` runs it on the connections; the tests check it both ways against the library.

The gateway (:func:`check_upgrade`, :func:`switching`, :func:`refusal`) takes a ``GET`` on
HTTP/1.1 to one of :data:`PATHS` with one ``Host``, ``Upgrade: websocket``, ``Connection:
Upgrade``, ``Sec-WebSocket-Version: 13`` and one 16-byte ``Sec-WebSocket-Key``, and no body;
it agrees to no extension or subprotocol. The agent (:func:`upgrade_request`,
:func:`check_answer`) asks for none and refuses an answer that picks one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from http import HTTPStatus
from urllib.parse import quote, urlsplit

from gateway.http1 import Limits, RequestHead, ResponseHead

PATHS = frozenset({"/", "/tunnel"})  # where the gateway takes the upgrade
MAX_HANDSHAKE = 16 * 1024  # bytes of upgrade request or response read before giving up
LIMITS = Limits(max_request_line=4096, max_header_bytes=MAX_HANDSHAKE, max_headers=64)
SERVER = "ipsx-gateway"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
REFUSALS = {  # the body of each refusal
    400: "expected a WebSocket upgrade request or the tunnel protocol\n",
    404: "no tunnel here\n",
    408: "the WebSocket handshake took too long\n",
    414: "the WebSocket upgrade request line is too long\n",
    426: "this port takes a WebSocket upgrade (version 13) or the tunnel protocol\n",
    431: "the WebSocket upgrade request is too long\n",
    505: "a WebSocket upgrade is an HTTP/1.1 request\n",
}
_UPGRADE = "Upgrade: websocket\r\n"  # what a 426 names as the protocol to upgrade to (RFC 9110 §15.5.22)
# What a path or query may hold unquoted in the request line (RFC 3986's pchar, "/" and "?").
_PATH_SAFE = "/?:@!$&'()*+,;=-._~%"


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")  # noqa: S324


def _tokens(head: RequestHead | ResponseHead, name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` header, lower-cased."""
    return {token.strip().lower() for value in head.get_all(name) for token in value.split(",")}


# the gateway's side
def check_upgrade(head: RequestHead) -> tuple[int, str, str] | str:
    """The key of a valid upgrade request to a tunnel path; else the refusal: status, why (for the
    log, short and printable), extra header lines."""
    if head.method != "GET":
        return 400, f"method {head.method[:16]!r}", ""
    if head.version != "HTTP/1.1":
        return 505, head.version, ""
    if head.target.partition("?")[0] not in PATHS:
        return 404, f"path {head.target[:80]!r}", ""
    if len(head.get_all("Host")) != 1:
        return 400, "not one Host header", ""
    if head.get_all("Content-Length") or head.get_all("Transfer-Encoding"):
        return 400, "an upgrade request with a body", ""  # its bytes would be read as frames
    if "websocket" not in _tokens(head, "Upgrade") or "upgrade" not in _tokens(head, "Connection"):
        return 426, "not an upgrade to websocket", _UPGRADE
    if head.get_all("Sec-WebSocket-Version") != ["13"]:
        return 426, "not WebSocket version 13", _UPGRADE + "Sec-WebSocket-Version: 13\r\n"
    keys = head.get_all("Sec-WebSocket-Key")
    try:
        valid = len(keys) == 1 and keys[0].isascii() and len(base64.b64decode(keys[0], validate=True)) == 16
    except binascii.Error:
        valid = False
    if not valid:
        return 400, "no valid Sec-WebSocket-Key", ""
    return keys[0]


def switching(key: str) -> bytes:
    """The gateway's 101 answer to an upgrade request with ``key``."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: "
        + accept_value(key).encode("ascii")
        + b"\r\nServer: "
        + SERVER.encode("ascii")
        + b"\r\n\r\n"
    )


def refusal(status: int, extra: str = "") -> bytes:
    """The gateway's HTTP error answering a handshake (``extra``: more header lines); the
    connection closes after it."""
    body = REFUSALS[status].encode()
    connection = "Upgrade, close" if extra.startswith(_UPGRADE) else "close"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nServer: {SERVER}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {connection}\r\n{extra}\r\n"
    )
    return head.encode() + body


# the agent's side
def upgrade_request(url: str, key: str, user_agent: str) -> bytes:
    """The agent's upgrade request to ``url`` (``ws://HOST[:PORT][/PATH]`` or ``wss://…``), with
    ``key`` (16 random bytes, base64). Credentials in the URL are never sent; the path is quoted
    and a non-ASCII host name IDNA-encoded. Raises ValueError for what is no such URL."""
    before, after = _request_around_key(url, user_agent)
    return before + key.encode("ascii") + after


@functools.lru_cache(maxsize=64)  # an agent dials one URL: parsed once, not once per stream
def _request_around_key(url: str, user_agent: str) -> tuple[bytes, bytes]:
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("ws", "wss") or not host:
        raise ValueError(f"not a ws:// or wss:// URL: {url[:80]!r}")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # raises UnicodeError, a ValueError
    authority = f"[{host}]" if ":" in host else host
    if parts.port is not None:  # raises ValueError for a port out of range
        authority += f":{parts.port}"
    target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_PATH_SAFE)
    before = f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    after = f"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: {user_agent}\r\n\r\n"
    return (before + "Sec-WebSocket-Key: ").encode("ascii"), after.encode("ascii")


def check_answer(head: ResponseHead, key: str) -> str | None:
    """Why the gateway's answer does not open the WebSocket (printable: the peer's reason phrase
    is quoted); None when it does."""
    if head.status != 101:
        return f"the gateway answered {head.status} {head.reason[:80]!r}"
    if "websocket" not in _tokens(head, "Upgrade") or "upgrade" not in _tokens(head, "Connection"):
        return "the gateway's 101 answer is not an upgrade to websocket"
    if head.get_all("Sec-WebSocket-Accept") != [accept_value(key)]:
        return "the gateway's Sec-WebSocket-Accept does not match the key sent"
    if head.get_all("Sec-WebSocket-Extensions") or head.get_all("Sec-WebSocket-Protocol"):
        return "the gateway chose an extension or subprotocol the agent did not offer"
    return None
