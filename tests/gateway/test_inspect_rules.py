"""The inspecting port's request rules and heads (``gateway.inspect.rules``), without I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.forward import DEFAULT_MAX_RETRIES
from gateway.inspect import rules
from gateway.inspect.rules import Plan, Rules
from gateway.targeting import TargetingError, parse_username

ALICE = parse_username("alice-country-fr-session-s1")


def test_plan_call_merges_username_connect_and_request() -> None:
    planned = rules.plan(
        ALICE,
        [("X-IPSX-Country", "de"), ("Proxy-Connection", "keep-alive")],
        [
            ("x-ipsx-session", " s2 "),
            ("X-IPSX-Retry-On", "403,429"),
            ("X-IPSX-Max-Retries", "2"),
            ("Accept", "*/*"),
        ],
    )
    assert planned == Plan(
        (("X-IPSX-Country", "de"), ("X-IPSX-Session", "s2")), Rules(frozenset({403, 429}), 2, None)
    )


def test_plan_call_request_overrides_connect() -> None:
    planned = rules.plan(ALICE, [("X-IPSX-Country", "de")], [("X-IPSX-Country", "us")])
    assert planned.headers == (("X-IPSX-Country", "us"),)


def test_plan_call_retry_defaults() -> None:
    only_statuses = rules.plan(ALICE, [], [("X-IPSX-Retry-On", "403")])
    only_count = rules.plan(ALICE, [], [("X-IPSX-Max-Retries", "3")])
    from_username = rules.plan(parse_username("alice-retryon-429-maxretries-4"), [], [])
    assert only_statuses.rules == Rules(frozenset({403}), DEFAULT_MAX_RETRIES)
    assert only_count.rules == Rules()  # retries of nothing: no retry
    assert from_username == Plan((), Rules(frozenset({429}), 4))


def test_plan_call_ban_goes_once_from_the_request_and_always_from_the_connect() -> None:
    per_request = rules.plan(ALICE, [], [("X-IPSX-Ban", "1")])
    per_tunnel = rules.plan(ALICE, [("X-IPSX-Ban", "1")], [])
    assert (per_request.headers, per_request.rules.ban) == ((), "1")
    assert (per_tunnel.headers, per_tunnel.rules.ban) == ((("X-IPSX-Ban", "1"),), None)


@pytest.mark.parametrize(
    ("connect", "request_headers", "named"),
    [
        ([], [("X-IPSX-Colour", "red")], "X-IPSX-Colour"),
        ([], [("X-IPSX-Session", "a"), ("X-IPSX-Session", "b")], "X-IPSX-Session"),
        ([], [("X-IPSX-Retry-On", "often")], "X-IPSX-Retry-On"),
        ([], [("X-IPSX-Max-Retries", "9")], "X-IPSX-Max-Retries"),
        ([("X-IPSX-Country", "France")], [], "X-IPSX-Country"),
        ([], [("X-IPSX-Ban", "everyone")], "X-IPSX-Ban"),
    ],
)
def test_plan_call_refuses_bad_headers_naming_them(
    connect: list[tuple[str, str]], request_headers: list[tuple[str, str]], named: str
) -> None:
    with pytest.raises(TargetingError) as raised:
        rules.plan(ALICE, connect, request_headers)
    assert raised.value.key == named


_NAMES = st.sampled_from(
    [
        "X-IPSX-Country",
        "x-ipsx-session",
        "X-IPSX-Retry-On",
        "X-IPSX-Max-Retries",
        "X-IPSX-Ban",
        "X-IPSX-",
        "Accept",
    ]
)


@given(st.lists(st.tuples(_NAMES, st.text(max_size=12)), max_size=6))
def test_plan_call_any_headers_plan_or_raise_targeting_error(headers: list[tuple[str, str]]) -> None:
    try:
        planned = rules.plan(ALICE, [], headers)
    except TargetingError:
        return
    names = [name for name, _ in planned.headers]
    assert all(name.startswith("X-IPSX-") for name in names)
    assert "X-IPSX-Retryon" not in names and "X-IPSX-Maxretries" not in names and "X-IPSX-Ban" not in names
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("method", "status", "tries", "expected"),
    [
        ("GET", 403, 1, True),
        ("get", 429, 2, True),
        ("GET", 403, 3, False),  # two retries made already
        ("GET", 500, 1, False),  # not a listed status
        ("POST", 403, 1, False),  # not idempotent
        ("PUT", 403, 1, True),
    ],
)
def test_should_retry_call(method: str, status: int, tries: int, expected: bool) -> None:
    assert rules.should_retry(Rules(frozenset({403, 429}), 2), method, status, tries) is expected


def test_with_session_call_replaces_the_session() -> None:
    headers = (("X-IPSX-Country", "de"), ("X-IPSX-Session", "s1"))
    assert rules.with_session(headers, "r9") == (("X-IPSX-Country", "de"), ("X-IPSX-Session", "r9"))
    assert rules.with_session((), "r9") == (("X-IPSX-Session", "r9"),)
    assert rules.new_session() != rules.new_session()
    assert parse_username(f"alice-session-{rules.new_session()}").session is not None  # a valid id


def test_connect_head_call() -> None:
    head = rules.connect_head(
        "example.com", 443, "Basic YTpi", [("X-IPSX-Country", "de"), ("X-IPSX-Ban", "1")]
    )
    assert head == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic YTpi\r\n"
        b"X-IPSX-Country: de\r\nX-IPSX-Ban: 1\r\n\r\n"
    )
    assert rules.connect_head("::1", 8443, "Basic x", []).startswith(
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n"
    )


def test_origin_headers_call_keeps_end_to_end_headers_only() -> None:
    fields = [
        (b"Host", b"example.com"),
        (b"Accept", b"*/*"),
        (b"Proxy-Authorization", b"Basic c2VjcmV0"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"99"),
        (b"Upgrade", b"h2c"),
        (b"X-IPSX-Session", b"s1"),
        (b"x-ipsx-retry-on", b"403"),
        (b"Cookie", b"a=b"),
    ]
    headers = rules.origin_headers(fields, host="ignored", method="POST", body_length=3)
    assert headers == [
        (b"Host", b"example.com"),
        (b"Accept", b"*/*"),
        (b"Cookie", b"a=b"),
        (b"Content-Length", b"3"),
    ]


def test_origin_headers_call_host_and_length_when_absent() -> None:
    get = rules.origin_headers([(b"Accept", b"*/*")], host="example.com:8443", method="GET", body_length=0)
    post = rules.origin_headers([], host="example.com", method="POST", body_length=0)
    assert get == [(b"Host", b"example.com:8443"), (b"Accept", b"*/*")]
    assert post == [(b"Host", b"example.com"), (b"Content-Length", b"0")]


def test_client_headers_call() -> None:
    origin = [
        (b"Content-Type", b"text/html"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"X-IPSX-Exit", b"forged"),
        (b"Set-Cookie", b"a=b"),
    ]
    body = rules.client_headers(origin, body_length=12, exit_id="0123456789abcdef", tries=2)
    head = rules.client_headers(
        [(b"Content-Length", b"512"), (b"ETag", b'"x"')], body_length=None, exit_id=None, tries=1
    )
    assert body == [
        (b"Content-Type", b"text/html"),
        (b"Set-Cookie", b"a=b"),
        (b"Content-Length", b"12"),
        (b"X-IPSX-Exit", b"0123456789abcdef"),
        (b"X-IPSX-Tries", b"2"),
    ]
    assert head == [(b"ETag", b'"x"'), (b"Content-Length", b"512"), (b"X-IPSX-Tries", b"1")]
