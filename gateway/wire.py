"""The tunnel protocol between a provider agent and a gateway node.

The agent only ever dials out. It keeps one *control* connection per gateway node and a small
pool of idle *data* connections. Every message is one JSON object on one line; after a data
connection's ``dial`` is answered ``ok`` it carries raw stream bytes and nothing else, so the
relay on both ends is a plain splice with TCP's own flow control.

Control connection (agent → gateway first)::

    agent: {"t": "hello", "v": 1, "address": "0x…"}
    gw:    {"t": "challenge", "nonce": "<hex>", "node": "<node id>"}
    agent: {"t": "login", "signature": "0x…", "exits": [{"bind": …, "country": …}, …],
            "policy": {…}, "state": {…}, "pool": 16, "reuse": true, "cut": true}
    gw:    {"t": "welcome", "token": "<hex>", "exits": {"<bind>": "<exit id>"}, "heartbeat": 3,
            "reuse": true, "cut": true}
           or {"t": "error", "reason": "…"} and close
    agent: {"t": "hb"}                                      every heartbeat seconds
    agent: {"t": "state", "serving": false, "reason": "daily cap of 2.0 GB reached",
            "until": 1767225600.0}                          the agent stops (or starts again,
                                                            "serving": true) taking streams
    agent: {"t": "usage", "stream": …, "exit": …, "up": …, "down": …,
            "opened": …, "closed": …, "outcome": …,
            "ticket": […], "mac": "<hex>"}                  the agent's own meter, per stream
    gw:    {"t": "acked", "streams": […]}                   those reports are in Redis
    gw:    {"t": "held", "streams": […]}                    report those again later
    gw:    {"t": "refused", "streams": […]}                 no node will take those (bad ticket)
    gw:    {"t": "more", "n": 8}                            open more idle data connections
    gw:    {"t": "nodes", "nodes": [{"node": …, "tunnel": "HOST:PORT"}, …]}   live gateway nodes
    both:  {"t": "end", "stream": …, "n": …}                with reuse: this side's direction of
                                                            the stream ended after n bytes
    agent: {"t": "free", "stream": …}                       with reuse: the stream's data
                                                            connection waits for the next dial
    agent: {"t": "cut", "stream": …, "up": …,               with reuse and cut: the agent cut
            "why": "cap_reached" | "outside_hours"          the stream after relaying ``up``
                   | "destination_lost"}
                                                            bytes up; it drops the rest up to
                                                            the gateway's end
    gw:    {"t": "cut", "stream": …, "down": …,             the same from the gateway, after
            "why": "allowance_used" | "client_lost"}        relaying ``down`` bytes down

Data connection::

    agent: {"t": "data", "token": "<hex>"}
    gw:    {"t": "dial", "stream": "<event id>", "exit": "<exit id>", "host": …, "port": …,
            "ticket": […], "mac": "<hex>"}
    agent: {"t": "ok"}  or  {"t": "err", "code": "<DialErrorCode>", "reason": "…"}
    then raw bytes both ways.

Without reuse, a data connection carries one stream and TCP's end of stream is the stream's.
With it (the login asked ``"reuse": true`` and the welcome agreed), each direction's end is the
``end`` message on the control connection, counted in bytes, and once both ended the agent says
``free`` and reads the next ``dial`` on the same connection (``gateway.reuse``). With ``cut``
agreed too, a stream one side cuts (the agent: a cap, its serving hours, a destination gone
mid-stream; the gateway: the deal's allowance, a client gone mid-stream) is told with ``cut``
before that side's end: the other stops writing, announces its own end, and meters that
direction as the cutting side relayed it, while the cutting side reads and drops what was in
flight; without it, such a stream's connection is reset and one meter may exceed the other by
what was in flight.

The ticket is the stream's billing facts signed by the gateway nodes (``gateway.tickets``). The
agent keeps each report until ``acked``; a report whose node is gone goes, with its ticket, to
another node, which meters the stream from it.

The login's ``policy`` is what the agent will refuse, so the gateway need not pick an exit that
would (``ExitPolicy`` and ``Limits`` in ``gateway.agent``; every field optional)::

    {"allow_private": false, "allow_smtp": false, "ports": [80, 443] | null,
     "protocols": ["http", "https", "socks5"] | null,  "block_domains": ["example.com"],
     "block_networks": ["10.0.0.0/8"], "cap_day": <bytes> | null, "cap_month": <bytes> | null,
     "rate_stream": <bytes/s> | null, "rate_total": <bytes/s> | null,
     "hours": ["22:00-07:00"], "tz": "Europe/Paris" | null}

``state`` (in the login, and the ``state`` message whenever it changes) says whether the agent
takes new streams: ``{"serving": true}``, or ``{"serving": false, "reason": "…", "until": <unix
time or null>}`` outside its serving hours or with a cap reached; ``until`` is a hint, the agent
sends ``"serving": true`` when it serves again. A dial it refuses for its state is answered
``err`` with code ``exit`` (another exit may serve); one its policy refuses, with ``policy``. A
stream that reaches a cap mid-way is ended like one the destination closed, and its usage report
(outcome ``cap_reached``) counts exactly the bytes relayed.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson

PROTOCOL_VERSION = 1
CAP_REACHED = "cap_reached"  # a stream cut at the provider's data cap (the outcome both sides record)
OUTSIDE_HOURS = "outside_hours"  # a stream cut when the provider's serving hours ended
DESTINATION_LOST = "destination_lost"  # a stream whose destination went away mid-stream
LIMIT_CUTS = frozenset({CAP_REACHED, OUTSIDE_HOURS})  # the provider's limits: both sides' outcome
CUT_REASONS = LIMIT_CUTS | {DESTINATION_LOST}  # why an agent cuts a stream
ALLOWANCE_USED = "allowance_used"  # a stream the gateway cut once its deal carried the allowance
CLIENT_LOST = "client_lost"  # a stream whose client went away mid-stream
GATEWAY_CUTS = frozenset({ALLOWANCE_USED, CLIENT_LOST})  # why a gateway cuts one
MAX_LINE = 64 * 1024


class WireError(ValueError):
    """A tunnel message that is not what the protocol allows (the peer's fault)."""


class DialErrorCode(enum.StrEnum):
    """Why an agent could not open a stream. ``retryable`` ones are tried on another exit."""

    POLICY = "policy"  # the exit's policy refuses this destination or port
    DNS = "dns"  # the name does not resolve
    REFUSED = "refused"  # the destination refused the connection
    UNREACHABLE = "unreachable"  # no route / host unreachable
    TIMEOUT = "timeout"  # the dial timed out
    EXIT = "exit"  # the exit itself failed (bind address gone, agent shutting down, …)

    @property
    def retryable(self) -> bool:
        return self in {DialErrorCode.TIMEOUT, DialErrorCode.EXIT, DialErrorCode.UNREACHABLE}


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of compact JSON."""
    try:
        return orjson.dumps(message) + b"\n"
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise WireError(f"cannot encode message: {exc}") from None


def decode(line: bytes, expect: str | None = None) -> dict[str, Any]:
    """Parse one line; raise WireError unless it is a JSON object (of type ``expect``, if given)."""
    if len(line) > MAX_LINE:
        raise WireError("message too long")
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise WireError("not JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise WireError("not a message object")
    if expect is not None and message["t"] != expect:
        raise WireError(f"expected {expect!r}, got {message['t'][:20]!r}")
    return message


def field(
    message: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False
) -> Any:
    """``message[name]`` checked to be of ``kind`` (a bool is never accepted as a number)."""
    value = message.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise WireError(f"field {name!r} has the wrong type")
    return value


def parse_cut(message: dict[str, Any], direction: str, reasons: frozenset[str]) -> tuple[str, int, str]:
    """A ``cut`` message's stream, the bytes relayed (``direction``: ``up`` from an agent, ``down``
    from a gateway) and its reason, "" for one not in ``reasons`` (a newer peer's: it changes no
    outcome); raises WireError for a malformed one."""
    stream = field(message, "stream", str)
    relayed = field(message, direction, int)
    if relayed < 0:
        raise WireError(f"field {direction!r} is negative")
    why = message.get("why")
    return stream, relayed, why if isinstance(why, str) and why in reasons else ""


def login_message(node: str, nonce: str) -> str:
    """The text an agent signs (EIP-191 personal message) to prove its wallet address."""
    return f"IPSX provider login\nnode: {node}\nnonce: {nonce}"
