"""Unit tests of the sans-IO HTTP/1.1 core: heads, framing, targets and rewritten heads."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http1 import (
    CHUNKED,
    DEFAULT_LIMITS,
    HOP_BY_HOP,
    NO_BODY,
    UNTIL_CLOSE,
    BodyFraming,
    BodyTracker,
    HeadReader,
    Limits,
    ProtocolError,
    RequestHead,
    ResponseHead,
    ResponseHeadReader,
    UpstreamProtocolError,
    error_response,
    normalize_host,
    origin_request_bytes,
    parse_absolute_uri,
    parse_authority,
    request_body_framing,
    response_body_framing,
    response_head_bytes,
    wants_close,
)

GET = (
    b"GET http://example.com/index.html?q=1 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"
    b"\r\n"
)
POST = (
    b"POST http://example.com/form HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 7\r\n"
    b"\r\n"
    b"a=1&b=2"
)
CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/html\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: keep-alive\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"\r\n"
)
CHUNKED_BODY = b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nExpires: never\r\nX-Sum: 42\r\n\r\n"


def feed_whole(raw: bytes) -> tuple[RequestHead | None, bytes]:
    reader = HeadReader()
    head = reader.feed(raw)
    return head, reader.rest


def feed_bytewise(raw: bytes) -> tuple[RequestHead | None, bytes]:
    reader = HeadReader()
    for index in range(len(raw)):
        head = reader.feed(raw[index : index + 1])
        if head is not None:
            return head, reader.rest + raw[index + 1 :]
    return None, b""


def request_error(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        HeadReader(limits).feed(raw)
    return info.value


def request_error_bytewise(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> ProtocolError:
    reader = HeadReader(limits)
    with pytest.raises(ProtocolError) as info:
        for index in range(len(raw)):
            reader.feed(raw[index : index + 1])
    return info.value


def make_head(headers: list[tuple[str, str]], version: str = "HTTP/1.1", method: str = "GET") -> RequestHead:
    return RequestHead(method, "http://example.com/", version, headers)


def make_response(status: int = 200, headers: list[tuple[str, str]] | None = None) -> ResponseHead:
    return ResponseHead("HTTP/1.1", status, "OK", headers or [])


# --- HeadReader ---------------------------------------------------------------------------------


def test_head_reader_feed_parses_request_line_and_headers() -> None:
    head, rest = feed_whole(GET)
    assert head == RequestHead(
        "GET",
        "http://example.com/index.html?q=1",
        "HTTP/1.1",
        [
            ("Host", "example.com"),
            ("User-Agent", "curl/8.5.0"),
            ("Accept", "*/*"),
            ("Proxy-Authorization", "Basic YWxpY2U6c2VjcmV0"),
        ],
    )
    assert rest == b""


def test_head_reader_feed_keeps_body_bytes_in_rest() -> None:
    head, rest = feed_whole(POST)
    assert head is not None and head.method == "POST"
    assert rest == b"a=1&b=2"


@pytest.mark.parametrize("raw", [GET, POST, CONNECT, b"\r\n\r\n" + GET, b"GET / HTTP/1.0\r\n\r\n"])
def test_head_reader_feed_bytewise_equals_whole(raw: bytes) -> None:
    assert feed_bytewise(raw) == feed_whole(raw)


def test_head_reader_feed_returns_none_until_complete() -> None:
    reader = HeadReader()
    assert reader.feed(GET[:-1]) is None
    head = reader.feed(GET[-1:])
    assert head is not None and head.target == "http://example.com/index.html?q=1"


def test_head_reader_feed_skips_leading_empty_lines() -> None:
    head, _ = feed_whole(b"\r\n\r\n" + CONNECT)
    assert head is not None and head.method == "CONNECT" and head.target == "example.com:443"


def test_head_reader_feed_head_without_fields() -> None:
    head, _ = feed_whole(b"GET http://a.example/ HTTP/1.1\r\n\r\n")
    assert head is not None and head.headers == []


def test_head_reader_feed_strips_values_and_decodes_latin1() -> None:
    head, _ = feed_whole(b"GET / HTTP/1.1\r\nX-Name: \t caf\xe9 au lait \t\r\nEmpty:\r\n\r\n")
    assert head is not None
    assert head.headers == [("X-Name", "caf\xe9 au lait"), ("Empty", "")]


def test_head_reader_feed_higher_minor_version_is_http11() -> None:
    head, _ = feed_whole(b"GET / HTTP/1.2\r\n\r\n")
    assert head is not None and head.version == "HTTP/1.1"


def test_head_reader_feed_http10() -> None:
    head, _ = feed_whole(b"GET / HTTP/1.0\r\n\r\n")
    assert head is not None and head.version == "HTTP/1.0"


def test_head_reader_reset_reads_pipelined_request() -> None:
    reader = HeadReader()
    first = reader.feed(GET + b"\r\n" + CONNECT + b"tls")
    assert first is not None and first.method == "GET"
    reader.reset()
    second = reader.feed(b"")
    assert second is not None and second.method == "CONNECT"
    assert reader.rest == b"tls"


def test_head_reader_reset_waits_for_partial_next_head() -> None:
    reader = HeadReader()
    assert reader.feed(GET + CONNECT[:10]) is not None
    reader.reset()
    assert reader.feed(b"") is None
    second = reader.feed(CONNECT[10:])
    assert second is not None and second.target == "example.com:443"


def test_head_reader_feed_after_head_raises_runtime_error() -> None:
    reader = HeadReader()
    assert reader.feed(GET) is not None
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


def test_head_reader_feed_request_line_at_limit_is_accepted() -> None:
    line = b"GET /" + b"a" * 86 + b" HTTP/1.1"
    assert len(line) == 100
    head = HeadReader(Limits(max_request_line=100)).feed(line + b"\r\n\r\n")
    assert head is not None


def test_head_reader_feed_request_line_too_long_is_414() -> None:
    raw = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n"
    assert request_error(raw, Limits(max_request_line=100)).status == 414


def test_head_reader_feed_endless_request_line_is_414_before_crlf() -> None:
    reader = HeadReader(Limits(max_request_line=100))
    assert reader.feed(b"GET /" + b"a" * 95) is None  # 100 bytes: could still end here
    with pytest.raises(ProtocolError) as info:
        reader.feed(b"a")
    assert info.value.status == 414


def test_head_reader_feed_request_line_limit_allows_pending_cr() -> None:
    reader = HeadReader(Limits(max_request_line=20))
    line = b"GET /aaaaaa HTTP/1.1"
    assert len(line) == 20
    assert reader.feed(line + b"\r") is None
    assert reader.feed(b"\n\r\n") is not None


def test_head_reader_feed_header_section_too_large_is_431() -> None:
    raw = b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 300 + b"\r\n\r\n"
    assert request_error(raw, Limits(max_header_bytes=200)).status == 431
    assert request_error_bytewise(raw, Limits(max_header_bytes=200)).status == 431


def test_head_reader_feed_header_section_at_limit_is_accepted() -> None:
    raw = b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 50 + b"\r\n\r\n"
    assert HeadReader(Limits(max_header_bytes=len(raw))).feed(raw) is not None
    assert request_error(raw, Limits(max_header_bytes=len(raw) - 1)).status == 431


def test_head_reader_feed_too_many_headers_is_431() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(11)) + b"\r\n"
    assert request_error(raw, Limits(max_headers=10)).status == 431
    ten = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n"
    assert HeadReader(Limits(max_headers=10)).feed(ten) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /\r\n\r\n",  # two parts
        b"GET / HTTP/1.1 extra\r\n\r\n",  # four parts
        b"GET  / HTTP/1.1\r\n\r\n",  # double space
        b"G(T / HTTP/1.1\r\n\r\n",  # method not a token
        b" GET / HTTP/1.1\r\n\r\n",
        b"GET /a\x7fb HTTP/1.1\r\n\r\n",  # DEL in target
        b"GET /caf\xe9 HTTP/1.1\r\n\r\n",  # non-ASCII target
        b"GET / HTTP/1\r\n\r\n",
        b"GET / http/1.1\r\n\r\n",
        b"GET / HTTP/1.10\r\n\r\n",
        b"GET / HTTP/x.1\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n",  # whitespace before colon
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\n\tfolded: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",  # NUL in value
        b"GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX\x00A: 1\r\n\r\n",  # NUL in name
        b"GET / HTTP/1.1\r\nX(A): 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nX-A: a\nX-B: b\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nX-A: a\x7f\r\n\r\n",
    ],
)
def test_head_reader_feed_malformed_is_400(raw: bytes) -> None:
    assert request_error(raw).status == 400
    assert request_error_bytewise(raw).status == 400


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/2", b"HTTP/3.0", b"HTTP/0.9"])
def test_head_reader_feed_other_major_version_is_505(version: bytes) -> None:
    assert request_error(b"GET / " + version + b"\r\n\r\n").status == 505


def test_head_reader_feed_http2_preface_is_505() -> None:
    assert request_error(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").status == 505


def test_head_reader_feed_bare_lf_head_fails_without_waiting() -> None:
    reader = HeadReader()
    with pytest.raises(ProtocolError) as info:
        reader.feed(b"GET / HTTP/1.1\r\nHost: a\n\n")
    assert info.value.status == 400


def test_head_reader_feed_bare_lf_request_line_fails_early() -> None:
    with pytest.raises(ProtocolError) as info:
        HeadReader().feed(b"GET / HTTP/1.1\nHost")
    assert info.value.status == 400


@pytest.mark.parametrize("prefix", [b"\n", b"\r", b"\r\r\n", b"\n\r\n", b"\r\n\n"])
def test_head_reader_feed_bad_leading_lines_is_400(prefix: bytes) -> None:
    assert request_error(prefix + GET).status == 400
    assert request_error_bytewise(prefix + GET).status == 400


def test_head_reader_feed_endless_empty_lines_is_400() -> None:
    reader = HeadReader(Limits(max_request_line=100))
    with pytest.raises(ProtocolError) as info:
        for _ in range(100):
            reader.feed(b"\r\n")
    assert info.value.status == 400


def test_protocol_error_reason_does_not_echo_input() -> None:
    error = request_error(b"GET / HTTP/1.1\r\nsecret-token-xyz\r\n\r\n")
    assert "secret-token-xyz" not in error.reason
    assert str(error).startswith("400 ")


def test_request_head_get_is_case_insensitive_first_match() -> None:
    head = make_head([("X-A", "1"), ("x-a", "2"), ("Host", "h")])
    assert head.get("X-a") == "1"
    assert head.get_all("x-A") == ["1", "2"]
    assert head.get("missing") is None
    assert head.get_all("missing") == []


# --- ResponseHeadReader -------------------------------------------------------------------------


def test_response_head_reader_feed_parses_status_line() -> None:
    reader = ResponseHeadReader()
    head = reader.feed(RESPONSE + b"5\r\nhello")
    assert head is not None
    assert (head.version, head.status, head.reason) == ("HTTP/1.1", 200, "OK")
    assert head.get("transfer-encoding") == "chunked"
    assert reader.rest == b"5\r\nhello"


def test_response_head_reader_feed_bytewise_equals_whole() -> None:
    whole = ResponseHeadReader().feed(RESPONSE)
    reader = ResponseHeadReader()
    parts = [reader.feed(RESPONSE[i : i + 1]) for i in range(len(RESPONSE))]
    assert parts[:-1] == [None] * (len(RESPONSE) - 1)
    assert parts[-1] == whole


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        (b"HTTP/1.1 404 Not Found", 404, "Not Found"),
        (b"HTTP/1.0 200", 200, ""),
        (b"HTTP/1.1 204 ", 204, ""),
        (b"HTTP/1.1 999 Request Denied", 999, "Request Denied"),
    ],
)
def test_response_head_reader_feed_status_variants(line: bytes, status: int, reason: str) -> None:
    head = ResponseHeadReader().feed(line + b"\r\n\r\n")
    assert head is not None and (head.status, head.reason) == (status, reason)


def test_response_head_reader_interim_then_final() -> None:
    reader = ResponseHeadReader()
    first = reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert first is not None and first.is_interim
    reader.reset()
    final = reader.feed(b"")
    assert final is not None and final.status == 200 and not final.is_interim


@pytest.mark.parametrize(("status", "interim"), [(100, True), (103, True), (101, False), (200, False)])
def test_response_head_is_interim(status: int, interim: bool) -> None:
    assert make_response(status).is_interim is interim


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\n\r\n",
    ],
)
def test_response_head_reader_feed_malformed_raises_upstream_error(raw: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        ResponseHeadReader().feed(raw)


def test_response_head_reader_feed_too_large_raises_upstream_error() -> None:
    reader = ResponseHeadReader(Limits(max_header_bytes=100))
    with pytest.raises(UpstreamProtocolError):
        reader.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200)


# --- body framing -------------------------------------------------------------------------------


def test_request_body_framing_none_without_headers() -> None:
    assert request_body_framing(make_head([])) == NO_BODY


def test_request_body_framing_content_length() -> None:
    assert request_body_framing(make_head([("Content-Length", "42")])) == BodyFraming("length", 42)


def test_request_body_framing_identical_repeated_content_length() -> None:
    head = make_head([("Content-Length", "7, 7"), ("content-length", "7")])
    assert request_body_framing(head) == BodyFraming("length", 7)


def test_request_body_framing_chunked() -> None:
    assert request_body_framing(make_head([("Transfer-Encoding", "gzip, Chunked")])) == CHUNKED


@pytest.mark.parametrize(
    "headers",
    [
        [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "5, 6")],
        [("Content-Length", "abc")],
        [("Content-Length", "+5")],
        [("Content-Length", "-1")],
        [("Content-Length", "")],
        [("Content-Length", "5 5")],
        [("Content-Length", "\u00b2")],  # a digit to str.isdigit, not to HTTP
        [("Content-Length", "9" * 5000)],
        [("Transfer-Encoding", "chunked, chunked")],
        [("Transfer-Encoding", "")],
        [("Transfer-Encoding", "chu nked")],
    ],
)
def test_request_body_framing_invalid_is_400(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ProtocolError) as info:
        request_body_framing(make_head(headers))
    assert info.value.status == 400


def test_request_body_framing_transfer_encoding_in_http10_is_400() -> None:
    with pytest.raises(ProtocolError) as info:
        request_body_framing(make_head([("Transfer-Encoding", "chunked")], version="HTTP/1.0"))
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["gzip", "chunked, gzip", "identity"])
def test_request_body_framing_final_coding_not_chunked_is_501(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        request_body_framing(make_head([("Transfer-Encoding", value)]))
    assert info.value.status == 501


@pytest.mark.parametrize("status", [100, 103, 204, 304])
def test_response_body_framing_no_body_statuses(status: int) -> None:
    head = make_response(status, [("Content-Length", "10")])
    assert response_body_framing("GET", head) == NO_BODY


def test_response_body_framing_head_request_has_no_body() -> None:
    head = make_response(200, [("Content-Length", "10")])
    assert response_body_framing("HEAD", head) == NO_BODY


def test_response_body_framing_chunked_wins_over_content_length() -> None:
    head = make_response(200, [("Content-Length", "10"), ("Transfer-Encoding", "chunked")])
    assert response_body_framing("GET", head) == CHUNKED


def test_response_body_framing_length() -> None:
    head = make_response(200, [("Content-Length", "10")])
    assert response_body_framing("GET", head) == BodyFraming("length", 10)


def test_response_body_framing_until_close() -> None:
    assert response_body_framing("GET", make_response(200)) == UNTIL_CLOSE
    head = make_response(200, [("Transfer-Encoding", "gzip")])
    assert response_body_framing("GET", head) == UNTIL_CLOSE


@pytest.mark.parametrize(
    "headers",
    [[("Content-Length", "1, 2")], [("Content-Length", "x")], [("Transfer-Encoding", "chunked, chunked")]],
)
def test_response_body_framing_invalid_raises_upstream_error(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(UpstreamProtocolError):
        response_body_framing("GET", make_response(200, headers))


def test_response_body_framing_transfer_encoding_in_http10_raises_upstream_error() -> None:
    head = ResponseHead("HTTP/1.0", 200, "OK", [("Transfer-Encoding", "chunked")])
    with pytest.raises(UpstreamProtocolError):
        response_body_framing("GET", head)


# --- BodyTracker --------------------------------------------------------------------------------


def test_body_tracker_feed_none_is_done_at_once() -> None:
    tracker = BodyTracker(NO_BODY)
    assert tracker.done
    assert tracker.feed(b"next request") == 0


def test_body_tracker_feed_zero_length_is_done_at_once() -> None:
    assert BodyTracker(BodyFraming("length", 0)).done


def test_body_tracker_feed_length_across_feeds() -> None:
    tracker = BodyTracker(BodyFraming("length", 10))
    assert (tracker.feed(b"123456"), tracker.done) == (6, False)
    assert (tracker.feed(b"7890GET / HTTP/1.1"), tracker.done) == (4, True)
    assert tracker.feed(b"more") == 0


def test_body_tracker_feed_close_takes_everything_and_never_ends() -> None:
    tracker = BodyTracker(UNTIL_CLOSE)
    assert tracker.feed(b"abc") == 3
    assert tracker.feed(b"0\r\n\r\n") == 5
    assert not tracker.done


def test_body_tracker_feed_chunked_with_extensions_trailers_and_pipelined_data() -> None:
    tracker = BodyTracker(CHUNKED)
    assert tracker.feed(CHUNKED_BODY + b"GET / HTTP/1.1\r\n") == len(CHUNKED_BODY)
    assert tracker.done


def test_body_tracker_feed_chunked_bytewise() -> None:
    tracker = BodyTracker(CHUNKED)
    data = CHUNKED_BODY + b"NEXT"
    used = [tracker.feed(data[i : i + 1]) for i in range(len(data))]
    assert used == [1] * len(CHUNKED_BODY) + [0] * 4
    assert tracker.done


def test_body_tracker_feed_chunked_minimal_and_uppercase_hex() -> None:
    tracker = BodyTracker(CHUNKED)
    body = b"A\r\n0123456789\r\n0\r\n\r\n"
    assert tracker.feed(body) == len(body)
    assert tracker.done


def test_body_tracker_feed_chunked_extension_after_whitespace() -> None:
    tracker = BodyTracker(CHUNKED)
    body = b'3 ;a="q s"\r\nabc\r\n0\r\n\r\n'
    assert tracker.feed(body) == len(body) and tracker.done


def test_body_tracker_feed_chunked_large_chunk_counted_not_scanned() -> None:
    tracker = BodyTracker(CHUNKED)
    size = 5_000_000
    assert tracker.feed(b"%x\r\n" % size) == len(b"%x\r\n" % size)
    block = b"\n" * 1_000_000  # newlines inside data must not be read as framing
    for _ in range(size // len(block)):
        assert tracker.feed(block) == len(block)
    assert not tracker.done
    assert tracker.feed(b"\r\n0\r\n\r\nrest") == 7
    assert tracker.done


@pytest.mark.parametrize(
    "body",
    [
        b"g\r\n",  # not hex
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\n",
        b"\r\n",  # empty size
        b" 5\r\nhello\r\n",
        b"5 \r\nhello\r\n",  # whitespace allowed only before ';'
        b"5\nhello\r\n",  # bare LF
        b"5\r\nhelloXY",  # no CRLF after data
        b"5\r\nhello\n0\r\n\r\n",
        b"5;a\x00b\r\nhello\r\n",
        b"5\r5\r\nhello",
        b"11111111111111111\r\n",  # 17 hex digits
        b"0\r\nbad trailer\r\n\r\n",
        b"0\r\nX\x01: y\r\n\r\n",
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\nX: y\n\r\n",
    ],
)
def test_body_tracker_feed_malformed_chunked_is_400(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        BodyTracker(CHUNKED).feed(body)
    assert info.value.status == 400


def test_body_tracker_feed_malformed_chunked_upstream_raises_upstream_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        BodyTracker(CHUNKED, upstream=True).feed(b"zz\r\n")


def test_body_tracker_feed_chunk_line_too_long_is_400_before_newline() -> None:
    tracker = BodyTracker(CHUNKED, Limits(max_chunk_line=20))
    assert tracker.feed(b"5;" + b"e" * 18) == 20
    with pytest.raises(ProtocolError):
        tracker.feed(b"ee")


def test_body_tracker_feed_trailer_too_large_is_400() -> None:
    tracker = BodyTracker(CHUNKED, Limits(max_trailer_bytes=50))
    assert tracker.feed(b"0\r\nX-A: " + b"a" * 30 + b"\r\n") > 0
    with pytest.raises(ProtocolError):
        tracker.feed(b"X-B: " + b"b" * 30 + b"\r\n\r\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED_BODY) + 6), max_size=12))
def test_body_tracker_feed_chunked_random_splits(cuts: list[int]) -> None:
    data = CHUNKED_BODY + b"tail!!"
    tracker = BodyTracker(CHUNKED)
    consumed = 0
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        piece = data[start:end]
        used = tracker.feed(piece)
        consumed += used
        assert used == len(piece) or tracker.done
    assert tracker.done
    assert consumed == len(CHUNKED_BODY)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.booleans())
def test_body_tracker_feed_random_bytes_only_raise_protocol_errors(
    pieces: list[bytes], upstream: bool
) -> None:
    tracker = BodyTracker(CHUNKED, Limits(max_chunk_line=64, max_trailer_bytes=64), upstream=upstream)
    try:
        for piece in pieces:
            used = tracker.feed(piece)
            assert 0 <= used <= len(piece)
    except (ProtocolError, UpstreamProtocolError):
        pass


# --- targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://example.com/a/b?c=d", ("example.com", 80, "/a/b?c=d")),
        ("http://Example.COM:8080/", ("example.com", 8080, "/")),
        ("HTTP://example.com", ("example.com", 80, "/")),
        ("http://example.com?q=1", ("example.com", 80, "/?q=1")),
        ("http://example.com:/x", ("example.com", 80, "/x")),
        ("http://[2001:DB8::1]:8080/x", ("2001:db8::1", 8080, "/x")),
        ("http://[::1]/", ("::1", 80, "/")),
        ("http://127.0.0.1:3128/x#frag", ("127.0.0.1", 3128, "/x")),
        ("http://my_host.internal/", ("my_host.internal", 80, "/")),
    ],
)
def test_parse_absolute_uri_valid(target: str, expected: tuple[str, int, str]) -> None:
    assert parse_absolute_uri(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "/relative",
        "*",
        "ftp://example.com/",
        "example.com:80",
        "http://",
        "http:///path",
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "http://example.com:0/",
        "http://example.com:65536/",
        "http://example.com:8o/",
        "http://example.com:123456/",
        "http://exa mple.com/",
        "http://exa%6dple.com/",
        "http://::1/",
        "http://[::1/",
        "http://[::1]x/",
        "http://[fe80::1%25eth0]/",
        "http://[not-v6]/",
        "http://2130706433/",
        "http://1.2.3/",
        "http://" + "a" * 64 + ".com/",
    ],
)
def test_parse_absolute_uri_invalid_is_400(target: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_absolute_uri(target)
    assert info.value.status == 400


def test_parse_absolute_uri_https_says_use_connect() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_absolute_uri("https://example.com/")
    assert info.value.status == 400
    assert "CONNECT" in info.value.reason


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("EXAMPLE.com:1", ("example.com", 1)),
        ("[2001:db8:0:0::1]:443", ("2001:db8::1", 443)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_parse_authority_valid(target: str, expected: tuple[str, int]) -> None:
    assert parse_authority(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "example.com",
        "example.com:",
        "example.com:0",
        "example.com:99999",
        "[::1]",
        "::1:443",
        "u@example.com:443",
        ":443",
    ],
)
def test_parse_authority_invalid_is_400(target: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_authority(target)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM", "example.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("1.2.3.4", "1.2.3.4"),
        ("x.", "x."),
        ("a" * 64, None),
        ("a..b", None),
        ("", None),
        ("01.2.3.4", None),
        ("0x7f.0.0.1", None),
        ("\u212aate", None),  # KELVIN SIGN lower-cases to ASCII 'k'
        (("a" * 62 + ".") * 4 + "ab", None),  # 254 characters
    ],
)
def test_normalize_host(host: str, expected: str | None) -> None:
    assert normalize_host(host) == expected


# --- rewritten heads ----------------------------------------------------------------------------


def test_origin_request_bytes_strips_proxy_and_control_headers_keeps_order() -> None:
    raw = (
        b"GET http://example.com:8080/p?q HTTP/1.1\r\n"
        b"Accept: */*\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"
        b"Host: example.com:8080\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-IPSX-Country: fr\r\n"
        b"x-ipsx-session: s1\r\n"
        b"Connection: keep-alive, X-Drop-Me\r\n"
        b"X-Drop-Me: 1\r\n"
        b"Cookie: a=b\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: websocket\r\n"
        b"User-Agent: test\r\n"
        b"\r\n"
    )
    head = HeadReader().feed(raw)
    assert head is not None
    host, port, target = parse_absolute_uri(head.target)
    out = origin_request_bytes(head, host, port, target)
    assert out == (
        b"GET /p?q HTTP/1.1\r\n"
        b"Accept: */*\r\n"
        b"Host: example.com:8080\r\n"
        b"Cookie: a=b\r\n"
        b"User-Agent: test\r\n"
        b"\r\n"
    )


def test_origin_request_bytes_round_trips_through_head_reader() -> None:
    head = HeadReader().feed(POST)
    assert head is not None
    out = origin_request_bytes(head, "example.com", 80, "/form")
    again = HeadReader().feed(out)
    assert again is not None
    assert (again.method, again.target, again.version) == ("POST", "/form", "HTTP/1.1")
    assert again.headers == head.headers


def test_origin_request_bytes_adds_host_when_missing() -> None:
    head = RequestHead("GET", "http://[::1]:8080/", "HTTP/1.0", [("Accept", "*/*")])
    out = origin_request_bytes(head, "::1", 8080, "/")
    assert out == b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: [::1]:8080\r\n\r\n"


def test_origin_request_bytes_host_follows_target_and_is_not_duplicated() -> None:
    head = make_head([("Host", "other.example"), ("Accept", "*/*"), ("host", "third.example")])
    out = origin_request_bytes(head, "example.com", 80, "/")
    assert out == b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"


def test_origin_request_bytes_connection_cannot_strip_framing_headers() -> None:
    head = make_head(
        [
            ("Connection", "Content-Length, Transfer-Encoding, Host"),
            ("Host", "example.com"),
            ("Content-Length", "3"),
        ],
        method="POST",
    )
    out = origin_request_bytes(head, "example.com", 80, "/")
    assert out == b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\n"


def test_hop_by_hop_keeps_transfer_encoding() -> None:
    assert "transfer-encoding" not in HOP_BY_HOP
    assert {"connection", "proxy-authorization", "proxy-connection", "keep-alive", "upgrade"} <= HOP_BY_HOP


def test_response_head_bytes_strips_hop_by_hop_and_adds_close() -> None:
    head = ResponseHeadReader().feed(RESPONSE)
    assert head is not None
    assert response_head_bytes(head, close=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert response_head_bytes(head, close=False) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_response_head_bytes_drops_content_length_with_transfer_encoding() -> None:
    head = ResponseHead(
        "HTTP/1.0",
        200,
        "Fine",
        [
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "X-Secret"),
            ("X-Secret", "1"),
        ],
    )
    assert (
        response_head_bytes(head, close=False) == b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_response_head_bytes_round_trips_through_reader() -> None:
    head = ResponseHead("HTTP/1.1", 404, "Not Found", [("Content-Length", "0"), ("X-A", "caf\xe9")])
    again = ResponseHeadReader().feed(response_head_bytes(head, close=False))
    assert again == head


def test_error_response_builds_plain_text_response() -> None:
    raw = error_response(502, "no exit for country fr", headers=[("X-IPSX-Error", "no_exit")])
    reader = ResponseHeadReader()
    head = reader.feed(raw)
    assert head is not None
    assert (head.status, head.reason) == (502, "Bad Gateway")
    assert head.get("content-type") == "text/plain; charset=utf-8"
    assert head.get("x-ipsx-error") == "no_exit"
    assert head.get("connection") == "close"
    assert response_body_framing("GET", head) == BodyFraming("length", len(reader.rest))
    assert reader.rest == b"no exit for country fr\n"


def test_error_response_keep_alive_and_utf8_body() -> None:
    raw = error_response(407, "authentification requise \u2014 r\xe9essayez", close=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection" not in head
    assert body == "authentification requise \u2014 r\xe9essayez\n".encode()
    assert head.endswith(b"\r\nContent-Length: %d" % len(body))


def test_error_response_neutralizes_header_injection() -> None:
    raw = error_response(400, "bad", headers=[("X-IPSX-Error", "a\r\nSet-Cookie: x=1\u2603")])
    head = ResponseHeadReader().feed(raw)
    assert head is not None
    assert head.get("set-cookie") is None
    assert head.get("x-ipsx-error") == "a  Set-Cookie: x=1?"


@pytest.mark.parametrize(("status", "name"), [(400, "Bad Header"), (99, "X-A"), (1000, "X-A")])
def test_error_response_invalid_arguments_raise_value_error(status: int, name: str) -> None:
    with pytest.raises(ValueError):
        error_response(status, "x", headers=[(name, "v")])


@pytest.mark.parametrize(
    ("version", "headers", "close"),
    [
        ("HTTP/1.1", [], False),
        ("HTTP/1.1", [("Connection", "Keep-Alive, Close")], True),
        ("HTTP/1.1", [("Proxy-Connection", "close")], True),
        ("HTTP/1.0", [], True),
        ("HTTP/1.0", [("Connection", "keep-alive")], False),
        ("HTTP/1.0", [("Proxy-Connection", "Keep-Alive")], False),
    ],
)
def test_wants_close(version: str, headers: list[tuple[str, str]], close: bool) -> None:
    assert wants_close(make_head(headers, version=version)) is close


# --- property tests -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([GET, POST, CONNECT, b"\r\n" + GET + POST]), st.data())
def test_head_reader_feed_random_splits_parse_identically(raw: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    expected = feed_whole(raw)
    reader = HeadReader()
    head = None
    bounds = [0, *cuts, len(raw)]
    for start, end in itertools.pairwise(bounds):
        head = reader.feed(raw[start:end])
        if head is not None:
            assert (head, reader.rest + raw[end:]) == expected
            return
    pytest.fail("no head parsed")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
                lambda n: n != "host"
            ),
            st.text(
                alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                max_size=30,
            ),
        ),
        max_size=10,
    )
)
def test_origin_request_bytes_random_headers_round_trip(headers: list[tuple[str, str]]) -> None:
    stripped = [(name, value.strip(" \t")) for name, value in headers]
    head = make_head(stripped)
    out = origin_request_bytes(head, "example.com", 80, "/")
    again = HeadReader(Limits(max_headers=20)).feed(out)
    assert again is not None
    connection = {t.strip().lower() for v in head.get_all("connection") for t in v.split(",")}
    dropped = HOP_BY_HOP | (connection - {"host", "content-length", "transfer-encoding"})
    kept = [(n, v) for n, v in stripped if n not in dropped and not n.startswith("x-ipsx-")]
    assert again.headers == [*kept, ("Host", "example.com")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_head_reader_feed_random_bytes_only_raise_protocol_error(pieces: list[bytes]) -> None:
    reader = HeadReader(Limits(max_request_line=64, max_header_bytes=256, max_headers=8))
    try:
        for piece in pieces:
            if reader.feed(piece) is not None:
                reader.reset()
    except ProtocolError as error:
        assert error.status in {400, 414, 431, 505}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_response_head_reader_feed_random_bytes_only_raise_upstream_error(pieces: list[bytes]) -> None:
    reader = ResponseHeadReader(Limits(max_request_line=64, max_header_bytes=256, max_headers=8))
    try:
        for piece in pieces:
            if reader.feed(piece) is not None:
                reader.reset()
    except UpstreamProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_absolute_uri_random_text_only_raises_protocol_error(text: str) -> None:
    for target in (text, "http://" + text):
        try:
            host, port, path = parse_absolute_uri(target)
        except ProtocolError as error:
            assert error.status == 400
        else:
            assert 1 <= port <= 65535 and path.startswith("/") and host == host.lower()
