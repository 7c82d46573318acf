"""Unit tests of the sans-IO HTTP/1.1 core: request and response heads, and request targets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http1 import (
    DEFAULT_LIMITS,
    HeadReader,
    Limits,
    ProtocolError,
    RequestHead,
    ResponseHead,
    ResponseHeadReader,
    UpstreamProtocolError,
    normalize_host,
    parse_absolute_uri,
    parse_authority,
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
