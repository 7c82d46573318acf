"""HTTP/1.1 body framing for a forward proxy, without I/O: where a message's body ends.

:func:`request_body_framing` and :func:`response_body_framing` read it from a parsed head.
Bodies are never re-encoded: :class:`BodyTracker` only says how many bytes belong to the body, so
the relay forwards them unchanged. Malformed framing raises :mod:`gateway.http1`'s errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.http1 import (
    _TCHAR,
    DEFAULT_LIMITS,
    Fail,
    Limits,
    RequestHead,
    ResponseHead,
    _client_fail,
    _upstream_fail,
)

_HEXDIG = b"0123456789abcdefABCDEF"
# Bytes allowed in a field value, a reason phrase or a chunk extension.
_TEXT_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


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
