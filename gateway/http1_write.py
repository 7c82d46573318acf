"""The HTTP/1.1 heads a forward proxy writes, without I/O: requests rewritten for the origin,
responses passed on to the client, and our own error responses.

Everything here takes parsed heads and returns bytes (or, for :func:`wants_close`, whether the
client's ``Connection`` asks to close). Hop-by-hop fields, those named in ``Connection`` and
``X-IPSX-*`` never go through.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from gateway.http1 import _TCHAR, RequestHead, ResponseHead

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)
# Naming these in Connection must not change how the next hop frames the message.
_NEVER_CONNECTION_STRIPPED = frozenset({"host", "content-length", "transfer-encoding"})


def _connection_tokens(headers: list[tuple[str, str]], names: tuple[str, ...] = ("connection",)) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() in names:
            tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def _forwarded_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    drop = HOP_BY_HOP | (_connection_tokens(headers) - _NEVER_CONNECTION_STRIPPED)
    return [
        (name, value)
        for name, value in headers
        if (lname := name.lower()) not in drop and not lname.startswith("x-ipsx-")
    ]


def origin_request_bytes(head: RequestHead, host: str, port: int, origin_target: str) -> bytes:
    """The request head to send to the origin, as HTTP/1.1 with ``origin_target``.

    Drops hop-by-hop headers, headers named in Connection (except framing ones) and ``X-IPSX-*``.
    The Host header (RFC 9112 §3.2.2) is the target's authority, in place of the client's first
    Host header, or appended when the client sent none. The head's framing must have been
    checked (``http1_body.request_body_framing``): its first Content-Length value is the one sent.
    """
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == 80 else f"{shown}:{port}"
    lines = [f"{head.method} {origin_target} HTTP/1.1"]
    host_written = length_written = False
    for name, value in _forwarded_headers(head.headers):
        lname = name.lower()
        if lname == "host":
            if host_written:
                continue
            host_written = True
            value = authority
        elif lname == "content-length":
            if length_written:
                continue
            length_written = True
            value = _one_length(value)
        lines.append(f"{name}: {value}")
    if not host_written:
        lines.append(f"Host: {authority}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _one_length(value: str) -> str:
    """The single value to send for a checked Content-Length: repeated identical values
    (``5, 5``, or the field twice) go on as one (RFC 9112 §6.3), so no later hop can read them
    differently."""
    return value.partition(",")[0].strip()


def _as_received(head: ResponseHead) -> bool:
    """Whether ``head`` may go to the client byte for byte: an HTTP/1.1 status line, no
    ``X-IPSX-*``, one framing field holding one value, and no hop-by-hop field but a
    ``Connection: keep-alive``, which says what the client's connection does anyway."""
    if not head.raw.startswith(b"HTTP/1.1 "):
        return False
    framing = 0
    for name, value in head.headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname != "connection" or value.lower() != "keep-alive":
                return False
        elif lname == "transfer-encoding":
            framing += 1
        elif lname == "content-length":
            framing += 2 if "," in value else 1
        elif lname.startswith("x-ipsx-"):
            return False
    return framing <= 1


def response_head_bytes(head: ResponseHead, *, close: bool, extra: bytes = b"") -> bytes:
    """The response head to send to the client, as HTTP/1.1, without hop-by-hop headers.

    Content-Length is dropped when Transfer-Encoding is present and otherwise sent once, with one
    value (RFC 9112 §6.3; the head's framing must have been checked by
    ``http1_body.response_body_framing``); ``close`` adds
    ``Connection: close``; ``extra`` is header lines of our own, each ending in CRLF. A head
    that needs none of that goes out as it came (the common case, and the cheapest).
    """
    if not close and _as_received(head):
        return head.raw + b"\r\n" + extra + b"\r\n"
    chunked = head.get("transfer-encoding") is not None
    length_written = False
    lines = [f"HTTP/1.1 {head.status} {head.reason}"]
    for name, value in _forwarded_headers(head.headers):
        if name.lower() == "content-length":
            if chunked or length_written:
                continue
            length_written = True
            value = _one_length(value)
        lines.append(f"{name}: {value}")
    if close:
        lines.append("Connection: close")
    lines.append("")
    return "\r\n".join(lines).encode("latin-1") + extra + b"\r\n"


_PHRASES = {status.value: status.phrase for status in HTTPStatus}
# Control characters (and DEL) become spaces in header values we build ourselves.
_CTL_TO_SPACE = {code: " " for code in [*range(0x20), 0x7F] if code != 0x09}


def error_response(
    status: int, reason: str, *, headers: Sequence[tuple[str, str]] = (), close: bool = True
) -> bytes:
    """A small text/plain response whose body is ``reason`` + newline.

    Extra ``headers`` values are made safe (control characters become spaces, non-latin-1
    characters '?'); a name that is not a token is our bug and raises ValueError.
    """
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status {status}")
    body = (reason + "\n").encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    for name, value in headers:
        if not name or not name.isascii() or name.encode("ascii").translate(None, _TCHAR):
            raise ValueError(f"invalid header name {name!r}")
        lines.append(f"{name}: {value.translate(_CTL_TO_SPACE).strip()}")
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1", "replace") + body


def wants_close(head: RequestHead) -> bool:
    """Whether the client asked to close after this exchange (``Connection``/``Proxy-Connection``)."""
    tokens = _connection_tokens(head.headers, ("connection", "proxy-connection"))
    if "close" in tokens:
        return True
    return head.version == "HTTP/1.0" and "keep-alive" not in tokens
