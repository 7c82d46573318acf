"""Unit tests of the sans-IO SOCKS5 server core, driven by bytes like a playbook."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.socks5 import (
    NEED_DATA,
    AuthRequest,
    ConnectRequest,
    ReplyCode,
    Socks5Error,
    Socks5Server,
)

GREETING = b"\x05\x02\x00\x02"  # offers "no auth" and username/password
AUTH = b"\x01\x05alice\x06secret"
CONNECT_DOMAIN = b"\x05\x01\x00\x03\x0bExample.COM\x01\xbb"
CONNECT_IPV4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
CONNECT_IPV6 = b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + b"\x1f\x90"
EARLY = b"\x16\x03\x01\x02\x00client hello"
SUCCESS_REPLY = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"

Event = AuthRequest | ConnectRequest


def failure(code: int) -> bytes:
    return bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))


def run(pieces: list[bytes]) -> tuple[list[Event], bytes, bytes]:
    """Feed ``pieces`` in order, accepting the credentials and the CONNECT.

    Returns the events, every byte sent to the client, and ``trailing``.
    """
    server = Socks5Server()
    events: list[Event] = []
    sent = bytearray()
    for piece in pieces:
        server.receive_data(piece)
        while (event := server.next_event()) is not NEED_DATA:
            sent += server.data_to_send()
            events.append(event)
            if isinstance(event, AuthRequest):
                sent += server.send_auth_result(True)
            else:
                sent += server.send_reply(ReplyCode.SUCCEEDED)
                return events, bytes(sent), server.trailing
        sent += server.data_to_send()
    return events, bytes(sent), b""


def error_after(*pieces: bytes) -> Socks5Error:
    server = Socks5Server()
    with pytest.raises(Socks5Error) as info:
        for piece in pieces:
            server.receive_data(piece)
            while (event := server.next_event()) is not NEED_DATA:
                if isinstance(event, AuthRequest):
                    server.send_auth_result(True)
    return info.value


EXPECTED_EVENTS: list[Event] = [AuthRequest("alice", "secret"), ConnectRequest("example.com", 443, 3)]
EXPECTED_SENT = b"\x05\x02" + b"\x01\x00" + SUCCESS_REPLY


def test_next_event_handshake_step_by_step() -> None:
    server = Socks5Server()
    server.receive_data(GREETING)
    assert server.next_event() is NEED_DATA
    assert server.data_to_send() == b"\x05\x02"
    assert server.data_to_send() == b""
    server.receive_data(AUTH)
    assert server.next_event() == AuthRequest("alice", "secret")
    assert server.next_event() is NEED_DATA  # waiting for send_auth_result
    assert server.send_auth_result(True) == b"\x01\x00"
    server.receive_data(CONNECT_DOMAIN)
    assert server.next_event() == ConnectRequest("example.com", 443, 3)
    assert server.trailing == b""
    assert server.send_reply(ReplyCode.SUCCEEDED) == SUCCESS_REPLY


def test_next_event_whole_handshake_in_one_chunk_keeps_early_data() -> None:
    events, sent, trailing = run([GREETING + AUTH + CONNECT_DOMAIN + EARLY])
    assert events == EXPECTED_EVENTS
    assert sent == EXPECTED_SENT
    assert trailing == EARLY


def test_next_event_bytewise_equals_whole() -> None:
    data = GREETING + AUTH + CONNECT_DOMAIN
    assert run([data[i : i + 1] for i in range(len(data))]) == run([data])
    assert run([data])[0] == EXPECTED_EVENTS


def test_next_event_connect_ipv4() -> None:
    events, _, _ = run([GREETING, AUTH, CONNECT_IPV4])
    assert events[1] == ConnectRequest("127.0.0.1", 80, 1)


def test_next_event_connect_ipv6_is_canonical_text() -> None:
    events, _, _ = run([GREETING, AUTH, CONNECT_IPV6])
    assert events[1] == ConnectRequest("::1", 8080, 4)


def test_next_event_only_userpass_method_offered() -> None:
    events, sent, _ = run([b"\x05\x01\x02", AUTH, CONNECT_IPV4])
    assert sent.startswith(b"\x05\x02\x01\x00")
    assert events[0] == AuthRequest("alice", "secret")


def test_next_event_utf8_credentials() -> None:
    user = "j\xfcrgen".encode()
    events, _, _ = run([GREETING, b"\x01" + bytes([len(user)]) + user + b"\x02pw", CONNECT_IPV4])
    assert events[0] == AuthRequest("j\xfcrgen", "pw")


def test_next_event_no_acceptable_method_replies_ff() -> None:
    error = error_after(b"\x05\x01\x00")
    assert error.reply == b"\x05\xff"


def test_next_event_zero_methods_replies_ff() -> None:
    assert error_after(b"\x05\x00").reply == b"\x05\xff"


@pytest.mark.parametrize("first", [b"\x04\x01\x00\x50", b"GET / HTTP/1.1\r\n", b"\x00"])
def test_next_event_not_socks5_closes_silently(first: bytes) -> None:
    assert error_after(first).reply == b""


def test_next_event_not_socks5_detected_on_first_byte() -> None:
    assert error_after(b"\x04").reply == b""


@pytest.mark.parametrize(
    "auth",
    [
        b"\x05\x05alice\x06secret",  # sub-negotiation version
        b"\x01\x00\x06secret",  # empty username
        b"\x01\x05alice\x00",  # empty password
        b"\x01\x02\xff\xfe\x02pw",  # username not UTF-8
        b"\x01\x02ok\x02\xc3\x28",  # password not UTF-8
    ],
)
def test_next_event_bad_auth_replies_auth_failure(auth: bytes) -> None:
    assert error_after(GREETING, auth).reply == b"\x01\x01"


def test_next_event_empty_username_fails_without_waiting() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + b"\x01\x00")
    with pytest.raises(Socks5Error):
        server.next_event()


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", ReplyCode.COMMAND_NOT_SUPPORTED),  # BIND
        (b"\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x50", ReplyCode.COMMAND_NOT_SUPPORTED),  # UDP ASSOCIATE
        (b"\x05\x09", ReplyCode.COMMAND_NOT_SUPPORTED),
        (b"\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x00\x05", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", ReplyCode.GENERAL_FAILURE),  # RSV
        (b"\x04\x01\x00\x01", ReplyCode.GENERAL_FAILURE),  # version
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", ReplyCode.GENERAL_FAILURE),  # port 0
        (b"\x05\x01\x00\x03\x00\x00\x50", ReplyCode.GENERAL_FAILURE),  # empty domain
        (b"\x05\x01\x00\x03\x04ex\x00m\x00\x50", ReplyCode.GENERAL_FAILURE),  # NUL in domain
        (b"\x05\x01\x00\x03\x04\xe9t\xe9s\x00\x50", ReplyCode.GENERAL_FAILURE),  # not ASCII
        (b"\x05\x01\x00\x03\x05a b.c\x00\x50", ReplyCode.GENERAL_FAILURE),  # not a host name
        (b"\x05\x01\x00\x03\x0a2130706433\x00\x50", ReplyCode.GENERAL_FAILURE),
    ],
)
def test_next_event_bad_request_replies_full_failure(request_bytes: bytes, code: ReplyCode) -> None:
    error = error_after(GREETING, AUTH, request_bytes)
    assert error.reply == failure(code)
    assert len(error.reply) == 10


def test_next_event_bad_command_detected_before_address() -> None:
    assert error_after(GREETING, AUTH, b"\x05\x02").reply == failure(ReplyCode.COMMAND_NOT_SUPPORTED)


def test_next_event_empty_domain_detected_before_port() -> None:
    assert error_after(GREETING, AUTH, b"\x05\x01\x00\x03\x00").reply == failure(ReplyCode.GENERAL_FAILURE)


def test_next_event_after_error_raises_runtime_error() -> None:
    server = Socks5Server()
    server.receive_data(b"\x05\x01\x00")
    with pytest.raises(Socks5Error):
        server.next_event()
    with pytest.raises(RuntimeError):
        server.next_event()


def test_send_auth_result_failure_closes() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + AUTH + CONNECT_IPV4)
    assert isinstance(server.next_event(), AuthRequest)
    assert server.send_auth_result(False) == b"\x01\x01"
    with pytest.raises(RuntimeError):
        server.next_event()
    with pytest.raises(RuntimeError):
        server.send_reply(ReplyCode.SUCCEEDED)


def test_send_auth_result_before_auth_request_raises_runtime_error() -> None:
    server = Socks5Server()
    server.receive_data(GREETING)
    assert server.next_event() is NEED_DATA
    with pytest.raises(RuntimeError):
        server.send_auth_result(True)


def test_send_reply_before_connect_request_raises_runtime_error() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + AUTH)
    assert isinstance(server.next_event(), AuthRequest)
    with pytest.raises(RuntimeError):
        server.send_reply(ReplyCode.SUCCEEDED)


def connected_server() -> Socks5Server:
    server = Socks5Server()
    server.receive_data(GREETING + AUTH)
    assert isinstance(server.next_event(), AuthRequest)
    server.send_auth_result(True)
    server.receive_data(CONNECT_DOMAIN)
    assert isinstance(server.next_event(), ConnectRequest)
    return server


def test_send_reply_ipv6_bind_address() -> None:
    reply = connected_server().send_reply(ReplyCode.SUCCEEDED, "2001:db8::7", 1080)
    assert reply == b"\x05\x00\x00\x04" + bytes.fromhex("20010db8000000000000000000000007") + b"\x04\x38"


def test_send_reply_ipv4_bind_address() -> None:
    reply = connected_server().send_reply(ReplyCode.SUCCEEDED, "192.0.2.1", 65535)
    assert reply == b"\x05\x00\x00\x01\xc0\x00\x02\x01\xff\xff"


def test_send_reply_failure_code_closes() -> None:
    server = connected_server()
    assert server.send_reply(ReplyCode.HOST_UNREACHABLE) == failure(4)
    with pytest.raises(RuntimeError):
        server.send_reply(ReplyCode.SUCCEEDED)


@pytest.mark.parametrize(("host", "port"), [("example.com", 0), ("0.0.0.0", 65536), ("0.0.0.0", -1)])
def test_send_reply_invalid_bind_raises_value_error(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        connected_server().send_reply(ReplyCode.SUCCEEDED, host, port)


def test_trailing_collects_data_sent_before_reply() -> None:
    server = connected_server()
    server.receive_data(b"early")
    assert server.trailing == b"early"
    server.send_reply(ReplyCode.SUCCEEDED)
    assert server.trailing == b"early"
    with pytest.raises(RuntimeError):
        server.receive_data(b"late")


def test_trailing_is_empty_before_connect() -> None:
    server = Socks5Server()
    server.receive_data(GREETING + AUTH)
    assert server.trailing == b""


def test_receive_data_flood_raises() -> None:
    server = Socks5Server(max_buffer=64)
    server.receive_data(GREETING + AUTH)
    assert isinstance(server.next_event(), AuthRequest)
    with pytest.raises(Socks5Error) as info:
        server.receive_data(b"x" * 100)
    assert info.value.reply == b""


def test_auth_request_repr_hides_password() -> None:
    assert "secret" not in repr(AuthRequest("alice", "secret"))


def test_reply_code_values() -> None:
    assert [code.value for code in ReplyCode] == list(range(9))
    assert ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED.value == 8


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(GREETING + AUTH + CONNECT_DOMAIN + EARLY)), max_size=12))
def test_next_event_random_splits_same_result(cuts: list[int]) -> None:
    data = GREETING + AUTH + CONNECT_DOMAIN + EARLY
    bounds = [0, *sorted(cuts), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    events, sent, trailing = run(pieces)
    assert events == EXPECTED_EVENTS
    assert sent == EXPECTED_SENT
    # whatever arrived after the CONNECT request in the piece that completed it is trailing
    done_at = next(b for b in bounds[1:] if b >= len(GREETING + AUTH + CONNECT_DOMAIN))
    assert trailing == data[len(GREETING + AUTH + CONNECT_DOMAIN) : done_at]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=32), max_size=8), st.booleans())
def test_next_event_random_bytes_only_raise_socks5_error(pieces: list[bytes], prefix: bool) -> None:
    if prefix:
        pieces = [GREETING + AUTH, *pieces]
    try:
        events, _, _ = run(pieces)
    except Socks5Error as error:
        assert error.reply in (b"", b"\x05\xff", b"\x01\x01") or (
            len(error.reply) == 10 and error.reply[0] == 5
        )
    else:
        assert all(isinstance(e, AuthRequest | ConnectRequest) for e in events)
