"""HTTP/1.1 for a forward proxy, without I/O: message heads, body framing, targets, rewritten heads.

Everything here takes bytes or parsed heads and returns parsed heads, counts or bytes. The client's
mistakes raise :class:`ProtocolError` (carrying the status to answer with); the origin's raise
:class:`UpstreamProtocolError` (answered with 502). Bodies are never re-encoded: :class:`BodyTracker`
only says how many bytes belong to the body, so the relay forwards them unchanged.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal, NoReturn


class ProtocolError(Exception):
    """The client broke HTTP/1.1: answer ``status`` with ``reason`` (safe to send) and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class UpstreamProtocolError(Exception):
    """The origin broke HTTP/1.1: answer 502 and close both sides."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Fail = Callable[[int, str], NoReturn]


def _client_fail(status: int, reason: str) -> NoReturn:
    raise ProtocolError(status, reason)


def _upstream_fail(status: int, reason: str) -> NoReturn:
    raise UpstreamProtocolError(reason)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what a peer may make us buffer; all in bytes except ``max_headers`` (fields)."""

    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_chunk_line: int = 4096
    max_trailer_bytes: int = 16384


DEFAULT_LIMITS = Limits()

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VCHAR = bytes(range(0x21, 0x7F))
_HEXDIG = b"0123456789abcdefABCDEF"
# Bytes allowed anywhere in a head (CR and LF only as CRLF, checked separately): no other CTL, no DEL.
_HEAD_BYTES = b"\t\r\n" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# Bytes allowed in a field value, a reason phrase or a chunk extension.
_TEXT_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_DNS_NAME = re.compile(r"[a-z0-9_-]{1,63}+(?:\.[a-z0-9_-]{1,63}+)*+\.?")
# A field section (control characters already refused): one regex pass per head, not per line.
_NAME_PATTERN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_FIELD_NAME = re.compile(_NAME_PATTERN)
_FIELDS = re.compile(rf"{_NAME_PATTERN}:[^\r\n]*+(?:\r\n{_NAME_PATTERN}:[^\r\n]*+)*+")


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for key, value in headers:
        if len(key) == len(lname) and key.lower() == lname:
            return value
    return None


def _get_all(headers: list[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [value for key, value in headers if len(key) == len(lname) and key.lower() == lname]


@dataclass(slots=True)
class RequestHead:
    """A parsed request head; header names as received, values stripped and latin-1 decoded."""

    method: str
    target: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None when absent."""
        return _get(self.headers, name)

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return _get_all(self.headers, name)


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head, like :class:`RequestHead`; ``raw`` is the head as received
    (without its final CRLFCRLF), when it was parsed from bytes."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def is_interim(self) -> bool:
        """A 1xx response other than 101: another head follows it."""
        return 100 <= self.status < 200 and self.status != 101

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None when absent."""
        return _get(self.headers, name)

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return _get_all(self.headers, name)


class _HeadBuffer:
    """Accumulates bytes until a whole head (up to CRLFCRLF) is there, enforcing the limits."""

    __slots__ = ("_buf", "_done", "_fail", "_line_end", "_scan", "_skipped", "limits", "rest")

    def __init__(self, limits: Limits, fail: Fail) -> None:
        self.limits = limits
        self.rest = b""
        self._fail = fail
        self._buf = bytearray()
        self._done = False
        self._scan = 0  # bytes of _buf already searched for the end of the head
        self._line_end = -1  # index of the start line's CRLF once seen
        self._skipped = 0  # empty lines skipped before the start line

    def reset(self) -> None:
        """Prepare for the next head; what followed the last head (``rest``) is buffered first.

        Call ``feed(b"")`` afterwards to parse a head that is already complete in ``rest``.
        """
        self._buf = bytearray(self.rest)
        self.rest = b""
        self._done = False
        self._scan = 0
        self._line_end = -1
        self._skipped = 0

    def _take(self, data: bytes) -> bytes | None:
        if self._done:
            raise RuntimeError("a head was already returned; call reset() before feeding more")
        if not self._buf and data[:1] not in (b"\r", b"\n"):
            # The common case, a whole head in one read: no copy into the buffer.
            end = data.find(b"\r\n\r\n")
            if end != -1:
                return self._complete(data[:end], data[end + 4 :])
        buf = self._buf
        buf += data
        if buf and buf[0] in b"\r\n":
            self._skip_empty_lines()
        end = buf.find(b"\r\n\r\n", max(self._scan - 3, 0))
        if end == -1:
            self._check_partial()
            self._scan = len(buf)
            return None
        self._buf = bytearray()
        return self._complete(bytes(buf[:end]), bytes(buf[end + 4 :]))

    def _complete(self, head: bytes, rest: bytes) -> bytes:
        self.rest = rest
        self._done = True
        line_end = head.find(b"\r\n")
        if (len(head) if line_end == -1 else line_end) > self.limits.max_request_line:
            self._fail(414, "request line too long")
        if len(head) + 4 > self.limits.max_header_bytes:
            self._fail(431, "header section too large")
        return head

    def _skip_empty_lines(self) -> None:
        # RFC 9112 §2.2: ignore empty lines (CRLF) before the start line; a lone CR may await its LF.
        buf = self._buf
        n = len(buf) - len(buf.lstrip(b"\r\n"))
        pairs = n // 2
        if buf[: pairs * 2] != b"\r\n" * pairs or (n % 2 and (buf[n - 1] != 0x0D or n != len(buf))):
            self._fail(400, "bare CR or LF before the start line")
        del buf[: pairs * 2]
        self._scan = 0
        self._skipped += pairs * 2
        if self._skipped > self.limits.max_request_line:
            self._fail(400, "too many empty lines before the start line")

    def _check_partial(self) -> None:
        buf, limits = self._buf, self.limits
        if self._line_end == -1:
            self._line_end = buf.find(b"\r\n", max(self._scan - 1, 0))
            if self._line_end == -1:
                if buf.find(b"\n", self._scan) != -1:
                    self._fail(400, "bare LF in the start line")
                pending = len(buf) - (1 if buf.endswith(b"\r") else 0)
                if pending > limits.max_request_line:
                    self._fail(414, "request line too long")
        if self._line_end > limits.max_request_line:
            self._fail(414, "request line too long")
        if len(buf) > limits.max_header_bytes:
            self._fail(431, "header section too large")
        # A head ended by bare LFs would otherwise sit here until the size limit.
        if buf.find(b"\n\n", max(self._scan - 1, 0)) != -1:
            self._fail(400, "bare LF in the header section")


def _split_head(head: bytes, limits: Limits, fail: Fail) -> tuple[bytes, list[tuple[str, str]]]:
    """The start line and the fields of a complete head (without its final CRLFCRLF)."""
    if head.translate(None, _HEAD_BYTES):
        fail(400, "control character in the header section")
    count = head.count(b"\r\n")
    if head.count(b"\r") != count or head.count(b"\n") != count:
        fail(400, "bare CR or LF in the header section")
    if count > limits.max_headers:
        fail(431, "too many header fields")
    start, _, fields = head.partition(b"\r\n")
    if not count:
        return start, []
    text = fields.decode("latin-1")
    if _FIELDS.fullmatch(text) is None:
        _diagnose_fields(text, fail)
    return start, [
        (name, value.strip(" \t")) for name, _, value in [f.partition(":") for f in text.split("\r\n")]
    ]


def _diagnose_fields(text: str, fail: Fail) -> NoReturn:
    """Raise the specific error for a field section that ``_FIELDS`` refused."""
    for line in text.split("\r\n"):
        name, colon, _ = line.partition(":")
        if name[:1] in (" ", "\t"):
            fail(400, "obsolete line folding in the header section")
        if not colon:
            fail(400, "header field without a colon")
        if not _FIELD_NAME.fullmatch(name):
            fail(400, "invalid header field name")
    fail(400, "malformed header section")


def _parse_version(raw: bytes, fail: Fail) -> str:
    if raw == b"HTTP/1.1":
        return "HTTP/1.1"
    if raw == b"HTTP/1.0":
        return "HTTP/1.0"
    major, dot, minor = raw[5:].partition(b".")
    if not raw.startswith(b"HTTP/") or len(major) != 1 or not major.isdigit():
        fail(400, "malformed HTTP version")
    if major != b"1":
        fail(505, "only HTTP/1.x is supported")
    if not dot or len(minor) != 1 or not minor.isdigit():
        fail(400, "malformed HTTP version")
    return "HTTP/1.1"  # RFC 9110 §6.2: a higher 1.x minor version is handled as 1.1


class HeadReader(_HeadBuffer):
    """Reads one request head at a time from a client's byte stream."""

    __slots__ = ()

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits, _client_fail)

    def feed(self, data: bytes) -> RequestHead | None:
        """Add bytes; return the head once complete (bytes after it are in ``rest``), else None.

        Raises ProtocolError (400, 414, 431, 505) on a malformed or over-long head.
        """
        head = self._take(data)
        if head is None:
            return None
        start, headers = _split_head(head, self.limits, _client_fail)
        parts = start.split(b" ")
        if len(parts) != 3:
            _client_fail(400, "malformed request line")
        method, target, version = parts
        if not method or method.translate(None, _TCHAR):
            _client_fail(400, "invalid method")
        if not target or target.translate(None, _VCHAR):
            _client_fail(400, "invalid request target")
        return RequestHead(
            method.decode("ascii"), target.decode("ascii"), _parse_version(version, _client_fail), headers
        )


class ResponseHeadReader(_HeadBuffer):
    """Reads one response head at a time from an origin; 1xx heads are returned like any other."""

    __slots__ = ()

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits, _upstream_fail)

    def feed(self, data: bytes) -> ResponseHead | None:
        """Add bytes; return the head once complete (bytes after it are in ``rest``), else None.

        Raises UpstreamProtocolError on a malformed or over-long head.
        """
        head = self._take(data)
        if head is None:
            return None
        start, headers = _split_head(head, self.limits, _upstream_fail)
        parts = start.split(b" ", 2)
        if len(parts) < 2:
            _upstream_fail(502, "malformed status line")
        version = _parse_version(parts[0], _upstream_fail)
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or code[:1] == b"0":
            _upstream_fail(502, "malformed status code")
        reason = parts[2] if len(parts) == 3 else b""
        return ResponseHead(version, int(code), reason.decode("latin-1"), headers, head)


@dataclass(frozen=True, slots=True)
class BodyFraming:
    """How a message body ends: no body, after ``length`` bytes, at the last chunk, or at EOF."""

    kind: Literal["none", "length", "chunked", "close"]
    length: int = 0


NO_BODY = BodyFraming("none")
CHUNKED = BodyFraming("chunked")
UNTIL_CLOSE = BodyFraming("close")


def _content_length(values: list[str], fail: Fail) -> int:
    found: int | None = None
    for value in values:
        for part in value.split(","):
            text = part.strip()
            if not text or len(text) > 18 or not text.isascii() or not text.isdigit():
                fail(400, "invalid Content-Length")
            length = int(text)
            if found is not None and length != found:
                fail(400, "conflicting Content-Length values")
            found = length
    return found if found is not None else 0


def _final_coding_is_chunked(values: list[str], fail: Fail) -> bool:
    codings = [c.strip().lower() for value in values for c in value.split(",")]
    codings = [c for c in codings if c]
    if not codings:
        fail(400, "empty Transfer-Encoding")
    for coding in codings:
        name = coding.partition(";")[0].rstrip(" \t").encode("latin-1")
        if not name or name.translate(None, _TCHAR):
            fail(400, "invalid transfer coding")
    if codings.count("chunked") > 1:
        fail(400, "chunked applied more than once")
    return codings[-1] == "chunked"


def request_body_framing(head: RequestHead) -> BodyFraming:
    """How the request body is framed (RFC 9112 §6.3). Raises ProtocolError 400 or 501."""
    te = head.get_all("transfer-encoding")
    cl = head.get_all("content-length")
    if te:
        if cl:
            _client_fail(400, "both Transfer-Encoding and Content-Length")
        if head.version == "HTTP/1.0":
            _client_fail(400, "Transfer-Encoding in an HTTP/1.0 request")
        if not _final_coding_is_chunked(te, _client_fail):
            _client_fail(501, "transfer coding not supported")
        return CHUNKED
    if cl:
        return BodyFraming("length", _content_length(cl, _client_fail))
    return NO_BODY


def response_body_framing(request_method: str, head: ResponseHead) -> BodyFraming:
    """How the response body is framed (RFC 9112 §6.3). Raises UpstreamProtocolError."""
    status = head.status
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        return NO_BODY
    te = head.get_all("transfer-encoding")
    if te:
        if head.version == "HTTP/1.0":
            _upstream_fail(502, "Transfer-Encoding in an HTTP/1.0 response")
        # With Transfer-Encoding any Content-Length is ignored (and dropped by response_head_bytes).
        return CHUNKED if _final_coding_is_chunked(te, _upstream_fail) else UNTIL_CLOSE
    cl = head.get_all("content-length")
    if cl:
        return BodyFraming("length", _content_length(cl, _upstream_fail))
    return UNTIL_CLOSE


_SIZE, _DATA, _DATA_CRLF, _TRAILER = range(4)


class BodyTracker:
    """Finds where a body ends in the byte stream, without changing or copying its bytes."""

    __slots__ = ("_crlf", "_fail", "_kind", "_limits", "_line", "_remaining", "_state", "_trailer", "done")

    def __init__(
        self, framing: BodyFraming, limits: Limits = DEFAULT_LIMITS, *, upstream: bool = False
    ) -> None:
        self._kind = framing.kind
        self._limits = limits
        self._fail: Fail = _upstream_fail if upstream else _client_fail
        self._remaining = framing.length
        self._state = _SIZE
        self._line = bytearray()  # a chunk-size or trailer line split across feeds
        self._crlf = 0  # bytes of the CRLF after chunk data already seen
        self._trailer = 0  # trailer section bytes so far
        self.done = framing.kind == "none" or (framing.kind == "length" and framing.length <= 0)

    def feed(self, data: bytes) -> int:
        """How many leading bytes of ``data`` belong to the body; sets ``done`` at its end.

        A "close" body takes everything and is never done. Raises ProtocolError (400), or
        UpstreamProtocolError when built with ``upstream=True``, on malformed chunked framing.
        """
        if self.done:
            return 0
        if self._kind == "length":
            take = min(len(data), self._remaining)
            self._remaining -= take
            self.done = self._remaining == 0
            return take
        if self._kind == "close":
            return len(data)
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> int:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_CRLF
            elif state == _DATA_CRLF:
                if data[pos] != b"\r\n"[self._crlf]:
                    self._fail(400, "chunk data not followed by CRLF")
                pos += 1
                self._crlf += 1
                if self._crlf == 2:
                    self._crlf = 0
                    self._state = _SIZE
            else:
                newline = data.find(b"\n", pos)
                if newline == -1:
                    self._line += data[pos:]
                    self._check_line_size(len(self._line) - 1)
                    return end
                line = bytes(self._line) + data[pos : newline + 1] if self._line else data[pos : newline + 1]
                self._line.clear()
                pos = newline + 1
                self._check_line_size(len(line) - 2)
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    self._fail(400, "bare CR or LF in chunked framing")
                if state == _SIZE:
                    self._size_line(line[:-2])
                elif self._trailer_line(line[:-2]):
                    self.done = True
                    return pos
        return pos

    def _check_line_size(self, size: int) -> None:
        if self._state == _SIZE:
            if size > self._limits.max_chunk_line:
                self._fail(400, "chunk size line too long")
        elif self._trailer + size > self._limits.max_trailer_bytes:
            self._fail(400, "trailer section too large")

    def _size_line(self, line: bytes) -> None:
        size, semi, ext = line.partition(b";")
        if semi:
            size = size.rstrip(b" \t")
            if ext.translate(None, _TEXT_BYTES):
                self._fail(400, "control character in a chunk extension")
        if not size or len(size) > 16 or size.translate(None, _HEXDIG):
            self._fail(400, "invalid chunk size")
        self._remaining = int(size, 16)
        self._state = _DATA if self._remaining else _TRAILER

    def _trailer_line(self, line: bytes) -> bool:
        """Account for one trailer line; True at the empty line ending the message."""
        self._trailer += len(line) + 2
        if not line:
            return True
        colon = line.find(b":")
        if colon <= 0 or line[:colon].translate(None, _TCHAR):
            self._fail(400, "invalid trailer field")
        if line[colon + 1 :].translate(None, _TEXT_BYTES):
            self._fail(400, "control character in a trailer field")
        return False


def normalize_host(host: str) -> str | None:
    """A DNS name (lower-cased) or dotted-quad IPv4 literal, or None when ``host`` is neither.

    DNS names: letters, digits, '-', '_', '.', at most 253 characters, labels of 1..63; one trailing
    dot allowed. A name whose last label is all digits must be a valid dotted quad, so that forms such
    as ``2130706433`` or ``0x7f.1`` never reach a resolver that would read them as addresses.
    """
    if not host.isascii() or len(host) > 254:
        return None
    name = host.lower()
    if _DNS_NAME.fullmatch(name) is None or len(name) > 253 + name.endswith("."):
        return None
    if name.rstrip(".").rpartition(".")[2].isdigit():
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            return None
    return name


@functools.lru_cache(maxsize=4096)  # scrapers name the same few hosts again and again
def _split_host_port(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        close = authority.find("]")
        literal = authority[1:close]
        if close == -1 or "%" in literal:
            _client_fail(400, "invalid IPv6 literal")
        try:
            host = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            _client_fail(400, "invalid IPv6 literal")
        after = authority[close + 1 :]
        if after and after[0] != ":":
            _client_fail(400, "invalid authority")
        port_text = after[1:]
    else:
        name, colon, port_text = authority.rpartition(":")
        if not colon:
            name, port_text = authority, ""
        checked = normalize_host(name)
        if checked is None:
            _client_fail(400, "invalid host")
        host = checked
    if not port_text:  # absent, or empty as RFC 3986 allows: the default port
        if default_port is None:
            _client_fail(400, "port required")
        return host, default_port
    if len(port_text) > 5 or not port_text.isascii() or not port_text.isdigit():
        _client_fail(400, "invalid port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        _client_fail(400, "invalid port")
    return host, port


def parse_absolute_uri(target: str) -> tuple[str, int, str]:
    """``http://host[:port]/path?q`` as (host, port, origin-form target). Raises ProtocolError 400.

    The host is lower-cased (IPv6 without brackets, compressed); the fragment, if any, is dropped.
    """
    if target[:7].lower() != "http://":
        if target[:8].lower() == "https://":
            _client_fail(400, "use CONNECT for https")
        _client_fail(400, "absolute http:// URI required")
    rest = target[7:].partition("#")[0]
    cut = len(rest)
    for sep in "/?":
        index = rest.find(sep)
        if index != -1 and index < cut:
            cut = index
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        _client_fail(400, "userinfo in the URI is not allowed")
    if not authority:
        _client_fail(400, "missing host")
    host, port = _split_host_port(authority, 80)
    if not path:
        path = "/"
    elif path[0] == "?":
        path = "/" + path
    return host, port, path


def parse_authority(target: str) -> tuple[str, int]:
    """A CONNECT target ``host:port`` or ``[v6]:port`` as (host, port). Raises ProtocolError 400."""
    if "@" in target:
        _client_fail(400, "userinfo in the authority is not allowed")
    return _split_host_port(target, None)


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
    Host header, or appended when the client sent none.
    """
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == 80 else f"{shown}:{port}"
    lines = [f"{head.method} {origin_target} HTTP/1.1"]
    host_written = False
    for name, value in _forwarded_headers(head.headers):
        if name.lower() == "host":
            if host_written:
                continue
            host_written = True
            value = authority
        lines.append(f"{name}: {value}")
    if not host_written:
        lines.append(f"Host: {authority}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _as_received(head: ResponseHead) -> bool:
    """Whether ``head`` may go to the client byte for byte: an HTTP/1.1 status line, no
    ``X-IPSX-*``, no Content-Length beside Transfer-Encoding, and no hop-by-hop field but a
    ``Connection: keep-alive``, which says what the client's connection does anyway."""
    if not head.raw.startswith(b"HTTP/1.1 "):
        return False
    framing = 0
    for name, value in head.headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname != "connection" or value.lower() != "keep-alive":
                return False
        elif lname == "content-length" or lname == "transfer-encoding":
            framing += 1
        elif lname.startswith("x-ipsx-"):
            return False
    return framing <= 1


def response_head_bytes(head: ResponseHead, *, close: bool, extra: bytes = b"") -> bytes:
    """The response head to send to the client, as HTTP/1.1, without hop-by-hop headers.

    Content-Length is dropped when Transfer-Encoding is present (RFC 9112 §6.3); ``close`` adds
    ``Connection: close``; ``extra`` is header lines of our own, each ending in CRLF. A head
    that needs none of that goes out as it came (the common case, and the cheapest).
    """
    if not close and _as_received(head):
        return head.raw + b"\r\n" + extra + b"\r\n"
    headers = _forwarded_headers(head.headers)
    if head.get("transfer-encoding") is not None:
        headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
    lines = [f"HTTP/1.1 {head.status} {head.reason}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
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
