"""Unit tests of the tunnel wire format: one JSON object per line."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from gateway.wire import MAX_LINE, DialErrorCode, WireError, decode, encode, field, login_message

json_values = st.recursive(
    # The protocol's numbers are 64-bit integers (byte counts, ports) and floats (times).
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
messages = st.builds(
    lambda t, rest: {**rest, "t": t},
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)


# encode / decode


def test_encode_call() -> None:
    assert encode({"t": "hb"}) == b'{"t":"hb"}\n'
    assert encode({"t": "more", "n": 8}) == b'{"t":"more","n":8}\n'


@given(messages)
def test_encode_decode_round_trip(message: dict[str, Any]) -> None:
    line = encode(message)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # newlines inside strings are escaped
    assert decode(line) == message
    assert decode(line.rstrip(b"\n"), message["t"]) == message


def test_encode_refuses_numbers_beyond_64_bits() -> None:
    with pytest.raises(WireError):
        encode({"t": "usage", "up": 2**64})


def test_decode_call() -> None:
    assert decode(b'{"t":"dial","host":"example.com","port":443}\n', "dial") == {
        "t": "dial",
        "host": "example.com",
        "port": 443,
    }


@pytest.mark.parametrize(
    "line", [b"", b"\n", b"hello", b'{"t":"hb"', b"GET / HTTP/1.1\r\n", b"\xff\xfe\x00", b"{'t': 'hb'}"]
)
def test_decode_not_json(line: bytes) -> None:
    with pytest.raises(WireError, match="not JSON"):
        decode(line)


@pytest.mark.parametrize(
    "line", [b"[]", b'["t","hb"]', b"null", b"1", b'"hb"', b"{}", b'{"t":1}', b'{"t":null}', b'{"type":"hb"}']
)
def test_decode_not_a_message_object(line: bytes) -> None:
    with pytest.raises(WireError, match="not a message object"):
        decode(line)


def test_decode_wrong_type() -> None:
    with pytest.raises(WireError) as info:
        decode(encode({"t": "data", "token": "x"}), "dial")
    assert str(info.value) == "expected 'dial', got 'data'"


def test_decode_wrong_type_truncates_name() -> None:
    with pytest.raises(WireError) as info:
        decode(encode({"t": "x" * 1000}), "dial")
    assert str(info.value) == f"expected 'dial', got {'x' * 20!r}"


def test_decode_line_at_limit() -> None:
    filler = "a" * (MAX_LINE - len(b'{"t":"hb","p":""}'))
    line = json.dumps({"t": "hb", "p": filler}, separators=(",", ":")).encode()
    assert len(line) == MAX_LINE
    assert decode(line)["p"] == filler


def test_decode_over_long_line() -> None:
    filler = "a" * (MAX_LINE - len(b'{"t":"hb","p":""}') + 1)
    line = json.dumps({"t": "hb", "p": filler}, separators=(",", ":")).encode()
    with pytest.raises(WireError, match="message too long"):
        decode(line)
    with pytest.raises(WireError, match="message too long"):
        decode(b"x" * (10 * MAX_LINE))


def test_wire_error_is_value_error() -> None:
    assert issubclass(WireError, ValueError)


# field


def test_field_call() -> None:
    message = {"t": "dial", "host": "example.com", "port": 443, "up": 1.5, "flag": True, "exits": {}}
    assert field(message, "host", str) == "example.com"
    assert field(message, "port", int) == 443
    assert field(message, "port", (int, float)) == 443
    assert field(message, "up", (int, float)) == 1.5
    assert field(message, "flag", bool) is True
    assert field(message, "exits", dict) == {}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, int),
        (False, int),
        (True, (int, float)),
        ("443", int),
        (443, str),
        (1.0, int),
        ([], dict),
        (None, str),
        (0, bool),
    ],
)
def test_field_wrong_type(value: object, kind: type | tuple[type, ...]) -> None:
    with pytest.raises(WireError) as info:
        field({"t": "x", "v": value}, "v", kind)
    assert str(info.value) == "field 'v' has the wrong type"


def test_field_missing() -> None:
    with pytest.raises(WireError):
        field({"t": "x"}, "port", int)


def test_field_optional() -> None:
    assert field({"t": "x"}, "pool", int, optional=True) is None
    assert field({"t": "x", "pool": None}, "pool", int, optional=True) is None
    assert field({"t": "x", "pool": 4}, "pool", int, optional=True) == 4
    with pytest.raises(WireError):
        field({"t": "x", "pool": "4"}, "pool", int, optional=True)
    with pytest.raises(WireError):
        field({"t": "x", "pool": True}, "pool", int, optional=True)


# DialErrorCode and login_message


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (DialErrorCode.POLICY, False),
        (DialErrorCode.DNS, False),
        (DialErrorCode.REFUSED, False),
        (DialErrorCode.UNREACHABLE, True),
        (DialErrorCode.TIMEOUT, True),
        (DialErrorCode.EXIT, True),
    ],
)
def test_dial_error_code_retryable(code: DialErrorCode, retryable: bool) -> None:
    assert code.retryable is retryable


def test_dial_error_code_values() -> None:
    assert {code.value for code in DialErrorCode} == {
        "policy",
        "dns",
        "refused",
        "unreachable",
        "timeout",
        "exit",
    }
    assert DialErrorCode("refused") is DialErrorCode.REFUSED
    with pytest.raises(ValueError):
        DialErrorCode("nope")


def test_login_message_call() -> None:
    assert login_message("gw-1", "abc123") == "IPSX provider login\nnode: gw-1\nnonce: abc123"


def test_login_message_binds_node_and_nonce() -> None:
    assert login_message("gw-1", "n") != login_message("gw-2", "n")
    assert login_message("gw-1", "n1") != login_message("gw-1", "n2")


def test_protocol_version() -> None:
    assert wire.PROTOCOL_VERSION == 1


@pytest.mark.parametrize(
    ("message", "direction", "parsed"),
    [
        ({"t": "cut", "stream": "s", "up": 10, "why": "cap_reached"}, "up", ("s", 10, "cap_reached")),
        ({"t": "cut", "stream": "s", "down": 0, "why": "client_lost"}, "down", ("s", 0, "client_lost")),
        # A reason this side does not know (a newer peer's), or none, or not a string: no outcome.
        ({"t": "cut", "stream": "s", "up": 10, "why": "somewhere"}, "up", ("s", 10, "")),
        ({"t": "cut", "stream": "s", "up": 10}, "up", ("s", 10, "")),
        ({"t": "cut", "stream": "s", "up": 10, "why": ["cap_reached"]}, "up", ("s", 10, "")),
        ({"t": "cut", "stream": "s", "up": 10, "why": {"a": 1}}, "up", ("s", 10, "")),
        # A gateway's reason from an agent is not one an agent gives.
        ({"t": "cut", "stream": "s", "up": 10, "why": "allowance_used"}, "up", ("s", 10, "")),
    ],
)
def test_parse_cut_call(message: dict[str, Any], direction: str, parsed: tuple[str, int, str]) -> None:
    reasons = wire.CUT_REASONS if direction == "up" else wire.GATEWAY_CUTS
    assert wire.parse_cut(message, direction, reasons) == parsed


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"t": "cut", "up": 1}, "field 'stream' has the wrong type"),
        ({"t": "cut", "stream": 7, "up": 1}, "field 'stream' has the wrong type"),
        ({"t": "cut", "stream": "s"}, "field 'up' has the wrong type"),
        ({"t": "cut", "stream": "s", "up": "10"}, "field 'up' has the wrong type"),
        ({"t": "cut", "stream": "s", "up": True}, "field 'up' has the wrong type"),
        ({"t": "cut", "stream": "s", "up": 1.5}, "field 'up' has the wrong type"),
        ({"t": "cut", "stream": "s", "up": -1}, "field 'up' is negative"),
        ({"t": "cut", "stream": "s", "down": 5}, "field 'up' has the wrong type"),  # the other direction's
    ],
)
def test_parse_cut_refuses_a_malformed_cut(message: dict[str, Any], error: str) -> None:
    with pytest.raises(wire.WireError, match=re.escape(error)):
        wire.parse_cut(message, "up", wire.CUT_REASONS)
