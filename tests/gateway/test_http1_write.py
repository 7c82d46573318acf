"""Unit tests of the HTTP/1.1 heads the gateway writes: requests for the origin, responses passed
on to the client, our own error responses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http1 import (
    HeadReader,
    Limits,
    RequestHead,
    ResponseHead,
    ResponseHeadReader,
    parse_absolute_uri,
)
from gateway.http1_body import BodyFraming, request_body_framing, response_body_framing
from gateway.http1_write import (
    HOP_BY_HOP,
    error_response,
    origin_request_bytes,
    response_head_bytes,
    wants_close,
)
from tests.gateway.test_http1 import POST, RESPONSE, make_head

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


@pytest.mark.parametrize(
    "lengths", [[("Content-Length", "5, 5")], [("Content-Length", "5"), ("content-length", " 5 ,5")]]
)
def test_origin_request_bytes_sends_a_repeated_content_length_once(lengths: list[tuple[str, str]]) -> None:
    head = make_head([("Host", "example.com"), *lengths, ("Accept", "*/*")], method="POST")
    assert request_body_framing(head) == BodyFraming("length", 5)
    out = origin_request_bytes(head, "example.com", 80, "/")
    assert out == b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nAccept: */*\r\n\r\n"


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


@pytest.mark.parametrize(
    "lengths", [[("Content-Length", "5, 5")], [("Content-Length", "5"), ("content-length", " 5 ,5")]]
)
def test_response_head_bytes_sends_a_repeated_content_length_once(lengths: list[tuple[str, str]]) -> None:
    head = ResponseHead("HTTP/1.1", 200, "OK", [("Date", "x"), *lengths, ("Server", "y")])
    assert response_body_framing("GET", head) == BodyFraming("length", 5)
    assert response_head_bytes(head, close=False) == (
        b"HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 5\r\nServer: y\r\n\r\n"
    )


def test_response_head_bytes_passes_a_single_content_length_as_received() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-length:  7\r\nX-A: b"
    head = ResponseHeadReader().feed(raw + b"\r\n\r\n")
    assert head is not None
    assert response_head_bytes(head, close=False) == raw + b"\r\n\r\n"


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
