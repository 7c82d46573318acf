"""HTTP/1.1 for a forward proxy, without I/O: its errors and limits, message heads, request targets.

Everything here takes bytes or a request target and returns parsed heads or (host, port). The
client's mistakes raise :class:`ProtocolError` (carrying the status to answer with); the origin's
raise :class:`UpstreamProtocolError` (answered with 502). Where a body ends is
:mod:`gateway.http1_body`'s to say; the heads sent on are built by :mod:`gateway.http1_write`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn


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
# Bytes allowed anywhere in a head (CR and LF only as CRLF, checked separately): no other CTL, no DEL.
_HEAD_BYTES = b"\t\r\n" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
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
