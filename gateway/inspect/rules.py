"""The ``X-IPSX-*`` headers of a decrypted request, and the heads built from it; no I/O.

Requests are read with the gateway's own grammar (``gateway.targeting``): the username's keys,
overridden by the client CONNECT's ``X-IPSX-*`` headers, overridden by the request's. Targeting
keys (country, session, …) go on the CONNECT this port sends the gateway, which applies them. The
rule keys are this port's to apply, as the gateway does for plain HTTP:

- ``retryon`` / ``X-IPSX-Retry-On: 403,429`` — statuses after which an idempotent request is sent
  again through a fresh exit (a new sticky session), at most ``maxretries`` /
  ``X-IPSX-Max-Retries`` times (``gateway.forward.DEFAULT_MAX_RETRIES`` when absent);
- ``X-IPSX-Ban`` on a request — ban an exit for this domain: passed on with the CONNECT of that
  request only (on a new tunnel), which the gateway honours. In the username or on the client's
  CONNECT it travels with every tunnel, as it would to the gateway.

No ``X-IPSX-*`` header, no proxy credential and no hop-by-hop header reaches the origin; no
``X-IPSX-*`` header of the origin's reaches the client, which gets ``X-IPSX-Exit`` (when the
gateway names the exit) and ``X-IPSX-Tries`` instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.forward import DEFAULT_MAX_RETRIES, IDEMPOTENT_METHODS
from gateway.targeting import HEADER_PREFIX, Targeting, apply_headers

RETRY_KEYS = frozenset({"retryon", "maxretries"})  # applied here, never sent to the gateway
BAN = "ban"  # sent to the gateway, once per request that asks

# Never forwarded, either way (RFC 9110 §7.6.1), plus the framing this port redoes itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
_PREFIX = HEADER_PREFIX.encode("ascii")

Fields = Sequence[tuple[bytes, bytes]]
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Rules:
    """What a request asked of this port beyond targeting."""

    retry_on: frozenset[int] = frozenset()
    max_retries: int = 0
    ban: str | None = None  # the request's X-IPSX-Ban value, for the gateway to apply


@dataclass(frozen=True, slots=True)
class Plan:
    """How to send one request: the CONNECT's targeting headers (sorted) and the rules."""

    headers: Headers
    rules: Rules


def ipsx_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``X-IPSX-*`` headers among ``headers``, values stripped."""
    return [(name, value.strip()) for name, value in headers if name[:7].lower() == HEADER_PREFIX]


def _key(name: str) -> str:
    return name.lower()[len(HEADER_PREFIX) :].replace("-", "")


def plan(base: Targeting, connect: Sequence[tuple[str, str]], request: Sequence[tuple[str, str]]) -> Plan:
    """The plan for a request with ``request`` headers in a tunnel opened with ``connect``
    headers by a client whose username gave ``base``.

    Raises TargetingError naming the bad header, as the gateway would.
    """
    connect_found, request_found = ipsx_headers(connect), ipsx_headers(request)
    apply_headers(base, connect_found)  # each set on its own: a repeated header is refused
    apply_headers(base, request_found)
    merged: dict[str, tuple[str, str]] = {}
    for name, value in connect_found:
        merged[_key(name)] = (name, value)
    ban = None
    for name, value in request_found:
        if _key(name) == BAN:
            ban = value
        else:
            merged[_key(name)] = (name, value)
    resolved = apply_headers(base, list(merged.values()))
    retry_on = resolved.retryon or frozenset()
    retries = resolved.maxretries if resolved.maxretries is not None else DEFAULT_MAX_RETRIES
    forwarded = sorted(
        (f"X-IPSX-{key.capitalize()}", value) for key, (_, value) in merged.items() if key not in RETRY_KEYS
    )
    return Plan(tuple(forwarded), Rules(retry_on, retries if retry_on else 0, ban))


def with_session(headers: Headers, session: str) -> Headers:
    """``headers`` (of a :class:`Plan`) with ``X-IPSX-Session`` set to ``session``."""
    kept = [(name, value) for name, value in headers if name != "X-IPSX-Session"]
    return tuple(sorted([*kept, ("X-IPSX-Session", session)]))


def should_retry(rules: Rules, method: str, status: int, tries: int) -> bool:
    """Whether a request answered ``status`` after ``tries`` attempts goes out once more."""
    return status in rules.retry_on and tries <= rules.max_retries and method.upper() in IDEMPOTENT_METHODS


def new_session() -> str:
    """A sticky session id no requester chose: a fresh exit for a retry."""
    return "r" + secrets.token_hex(12)


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_head(host: str, port: int, authorization: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The CONNECT request head for the gateway, carrying the client's own credentials."""
    target = authority(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"Proxy-Authorization: {authorization}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _connection_named(fields: Fields) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return named


def _end_to_end(fields: Fields) -> list[tuple[bytes, bytes]]:
    drop = _connection_named(fields) - {b"host"}
    return [
        (name, value)
        for name, value in fields
        if (lname := name.lower()) not in _HOP_BY_HOP and lname not in drop and not lname.startswith(_PREFIX)
    ]


def origin_headers(fields: Fields, *, host: str, method: str, body_length: int) -> list[tuple[bytes, bytes]]:
    """The request's headers as sent to the origin: end-to-end ones only, a Host (``host`` when
    the client sent none) and the Content-Length of the buffered body."""
    headers = _end_to_end(fields)
    if not any(name.lower() == b"host" for name, _ in headers):
        headers.insert(0, (b"Host", host.encode("idna")))
    if body_length or method.upper() in ("POST", "PUT", "PATCH"):
        headers.append((b"Content-Length", str(body_length).encode("ascii")))
    return headers


def client_headers(
    fields: Fields, *, body_length: int | None, exit_id: str | None, tries: int
) -> list[tuple[bytes, bytes]]:
    """The origin's response headers as sent to the client: end-to-end ones only, the
    Content-Length of the buffered body (``None``: keep the origin's, for a response that has
    none: HEAD, 1xx, 204, 304), then ``X-IPSX-Exit`` and ``X-IPSX-Tries``."""
    kept = _end_to_end(fields)
    if body_length is None:
        kept.extend((name, value) for name, value in fields if name.lower() == b"content-length")
    else:
        kept.append((b"Content-Length", str(body_length).encode("ascii")))
    if exit_id:
        kept.append((b"X-IPSX-Exit", exit_id.encode("latin-1")))
    kept.append((b"X-IPSX-Tries", str(tries).encode("ascii")))
    return kept
