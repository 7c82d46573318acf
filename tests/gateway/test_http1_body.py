"""Unit tests of HTTP/1.1 body framing: the framing a head declares, and BodyTracker."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http1 import Limits, ProtocolError, ResponseHead, UpstreamProtocolError
from gateway.http1_body import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    BodyFraming,
    BodyTracker,
    request_body_framing,
    response_body_framing,
)
from tests.gateway.test_http1 import make_head, make_response

CHUNKED_BODY = b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nExpires: never\r\nX-Sum: 42\r\n\r\n"


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
