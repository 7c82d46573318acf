"""A requester's targeting, from the proxy username and ``X-IPSX-*`` headers (SPEC §6).

Username: ``<account>[-<key>-<value>]…``; the same keys as ``X-IPSX-<Key>`` headers override the
username's (a header may spell a key with hyphens: ``X-IPSX-Retry-On`` is the ``retryon`` key).
Every malformed, unknown or repeated key raises :class:`TargetingError` naming the key.

Besides choosing exits, three keys carry scraper rules (SPEC §6b):

- ``ban``: ``1`` bans the session's current exit for the destination's domain; a 16-hex exit id
  (from a response's ``X-IPSX-Exit``) bans that exit; a dotted domain without hyphens bans the
  session's exit for that domain (the username form, where no header can be sent).
- ``retryon``: comma-separated statuses (``403,429``) on which a plain-HTTP request of an
  idempotent method is retried through another exit; ``maxretries``: at most this many retries.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from pool.countries import unknown_country
from pool.models import EXIT_TYPES, ExitFilters

MAX_USERNAME = 512
MAX_SESSION_TTL = 86400  # seconds
MAX_ASN = 4294967295
TOKEN_DECIMALS = 18
BASE_UNITS_PER_TOKEN: Final = 10**18
HEADER_PREFIX = "x-ipsx-"
# Lower-case X-IPSX-* header names that are not targeting but are allowed through to other hooks.
PASSTHROUGH_CONTROL_HEADERS: frozenset[str] = frozenset()
PROTOCOLS = frozenset({"http", "https", "socks5"})

_ACCOUNT = re.compile(r"[a-z0-9_]{1,32}")
_COUNTRY = re.compile(r"[a-z]{2}")
_PLACE = re.compile(r"[a-z0-9_]{1,64}")
_ASN = re.compile(r"(?:as)?([0-9]{1,10})")
_SESSION = re.compile(r"[A-Za-z0-9]{1,32}")
_SESSTTL = re.compile(r"[0-9]{1,5}")
_DEAL = re.compile(r"[A-Za-z0-9_]{1,64}")
_PRICE = re.compile(r"([0-9]{1,30})(?:\.([0-9]+))?")
_EXIT_ID = re.compile(r"[0-9a-f]{16}")
_BAN_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9_]{1,63}\.)+[a-z0-9_]{1,63}")
_STATUS_LIST = re.compile(r"[1-5][0-9][0-9](?:,[1-5][0-9][0-9]){0,15}")
MAX_RETRIES = 5
BAN_SESSION_EXIT = "1"  # the ``ban`` value that means "the session's current exit"
_SHOWN = 40


def _show(text: str) -> str:
    """At most 40 characters of untrusted input, as printable ASCII."""
    clipped = "".join(c if " " <= c <= "~" else "?" for c in text[:_SHOWN])
    return clipped + "..." if len(text) > _SHOWN else clipped


class TargetingError(ValueError):
    """A targeting key (``key``) is malformed, unknown or repeated; ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = _show(key)
        self.reason = reason
        super().__init__(f"bad targeting key {self.key!r}: {reason}")


NO_FILTERS: Final = ExitFilters()
_Value = str | int | frozenset[int]


@dataclass(frozen=True, slots=True)
class Targeting:
    """What exit a request wants and how it pays; ``None`` means "not asked for"."""

    account: str
    filters: ExitFilters = NO_FILTERS
    session: str | None = None
    sessttl: int | None = None  # seconds
    deal: str | None = None
    order: str | None = None  # a request order: only the exits of its active deals
    maxprice: int | None = None  # IPSX base units (10**-18 IPSX) per GB
    proto: str | None = None
    ban: str | None = None  # BAN_SESSION_EXIT, an exit id, or a domain (see the module docstring)
    retryon: frozenset[int] | None = None  # plain-HTTP statuses retried through another exit
    maxretries: int | None = None
    key: str | None = None  # the API key that authenticated the client (set after the check)


def _match(pattern: re.Pattern[str], value: str, *, lower: bool) -> re.Match[str] | None:
    if not value.isascii():  # also keeps "\u212a".lower() == "k" from sneaking in
        return None
    return pattern.fullmatch(value.lower() if lower else value)


def _country(value: str) -> str:
    if not _match(_COUNTRY, value, lower=True):
        raise ValueError(f"expected a 2-letter ISO 3166-1 code, got '{_show(value)}'")
    unknown = unknown_country(value.lower())
    if unknown is not None:
        raise ValueError(unknown)
    return value.lower()


def _place(value: str) -> str:
    if not _match(_PLACE, value, lower=True):
        raise ValueError(f"expected 1 to 64 of a-z, 0-9, '_', got '{_show(value)}'")
    return value.lower()


def _asn(value: str) -> int:
    found = _match(_ASN, value, lower=True)
    number = int(found.group(1)) if found else 0
    if not 1 <= number <= MAX_ASN:
        raise ValueError(f"expected an AS number from 1 to {MAX_ASN}, got '{_show(value)}'")
    return number


def _type(value: str) -> str:
    if value.lower() not in EXIT_TYPES:
        raise ValueError(f"expected one of {', '.join(sorted(EXIT_TYPES))}, got '{_show(value)}'")
    return value.lower()


def _session(value: str) -> str:
    if not _match(_SESSION, value, lower=False):
        raise ValueError(f"expected 1 to 32 of A-Z, a-z, 0-9, got '{_show(value)}'")
    return value


def _sessttl(value: str) -> int:
    seconds = int(value) if _match(_SESSTTL, value, lower=False) else 0
    if not 1 <= seconds <= MAX_SESSION_TTL:
        raise ValueError(f"expected whole seconds from 1 to {MAX_SESSION_TTL}, got '{_show(value)}'")
    return seconds


def _deal(value: str) -> str:
    if not _match(_DEAL, value, lower=False):
        raise ValueError(f"expected a deal id of 1 to 64 of A-Z, a-z, 0-9, '_', got '{_show(value)}'")
    return value


def _order(value: str) -> str:
    if not _match(_DEAL, value, lower=False):
        raise ValueError(f"expected an order id of 1 to 64 of A-Z, a-z, 0-9, '_', got '{_show(value)}'")
    return value


def parse_price(value: str) -> int:
    """Decimal IPSX text ("2.5") as base units (18 decimals), exactly. Raises ValueError."""
    found = _match(_PRICE, value, lower=False)
    if not found:
        raise ValueError(f"expected a decimal amount of IPSX per GB, got '{_show(value)}'")
    whole, fraction = found.group(1), found.group(2) or ""
    if len(fraction) > TOKEN_DECIMALS:
        raise ValueError(f"more than {TOKEN_DECIMALS} decimal places in '{_show(value)}'")
    units = int(whole) * BASE_UNITS_PER_TOKEN + int(fraction.ljust(TOKEN_DECIMALS, "0"))
    if units <= 0:
        raise ValueError("must be greater than 0")
    return units


def _proto(value: str) -> str:
    if value.lower() not in PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(sorted(PROTOCOLS))}, got '{_show(value)}'")
    return value.lower()


def _ban(value: str) -> str:
    text = value.lower() if value.isascii() else ""
    if text == BAN_SESSION_EXIT or _EXIT_ID.fullmatch(text) or _BAN_DOMAIN.fullmatch(text):
        return text
    raise ValueError(f"expected 1, an exit id from X-IPSX-Exit or a domain, got '{_show(value)}'")


def _retryon(value: str) -> frozenset[int]:
    text = value.replace(" ", "")
    if not _match(_STATUS_LIST, text, lower=False):
        raise ValueError(f"expected comma-separated HTTP statuses like 403,429, got '{_show(value)}'")
    return frozenset(int(code) for code in text.split(","))


def _maxretries(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 2 and int(value) <= MAX_RETRIES):
        raise ValueError(f"expected a number of retries from 0 to {MAX_RETRIES}, got '{_show(value)}'")
    return int(value)


_PARSERS: Final[dict[str, Callable[[str], str | int | frozenset[int]]]] = {
    "country": _country,
    "region": _place,
    "city": _place,
    "asn": _asn,
    "type": _type,
    "session": _session,
    "sessttl": _sessttl,
    "deal": _deal,
    "order": _order,
    "maxprice": parse_price,
    "proto": _proto,
    "ban": _ban,
    "retryon": _retryon,
    "maxretries": _maxretries,
}


def _parse_value(key: str, shown_key: str, value: str) -> _Value:
    if not value:
        raise TargetingError(shown_key, "missing value")
    try:
        return _PARSERS[key](value)
    except ValueError as exc:
        raise TargetingError(shown_key, str(exc)) from None


def _codes(values: dict[str, _Value], key: str, current: frozenset[int] | None) -> frozenset[int] | None:
    value = values.get(key)
    return value if isinstance(value, frozenset) else current


def _text(values: dict[str, _Value], key: str, current: str | None) -> str | None:
    value = values.get(key)
    return value if isinstance(value, str) else current


def _number(values: dict[str, _Value], key: str, current: int | None) -> int | None:
    value = values.get(key)
    return value if isinstance(value, int) else current


def _with(t: Targeting, values: dict[str, _Value]) -> Targeting:
    """``t`` with the parsed ``values`` (by key) replacing its own."""
    if not values:
        return t
    f = t.filters
    return Targeting(
        account=t.account,
        filters=ExitFilters(
            country=_text(values, "country", f.country),
            region=_text(values, "region", f.region),
            city=_text(values, "city", f.city),
            asn=_number(values, "asn", f.asn),
            type=_text(values, "type", f.type),
        ),
        session=_text(values, "session", t.session),
        sessttl=_number(values, "sessttl", t.sessttl),
        deal=_text(values, "deal", t.deal),
        order=_text(values, "order", t.order),
        maxprice=_number(values, "maxprice", t.maxprice),
        proto=_text(values, "proto", t.proto),
        ban=_text(values, "ban", t.ban),
        retryon=_codes(values, "retryon", t.retryon),
        maxretries=_number(values, "maxretries", t.maxretries),
        key=t.key,
    )


def parse_username(username: str) -> Targeting:
    """The targeting in a proxy username. Raises TargetingError naming the bad key."""
    if len(username) > MAX_USERNAME:
        raise TargetingError("username", f"longer than {MAX_USERNAME} characters")
    account, *parts = username.split("-")
    if not _match(_ACCOUNT, account, lower=True):
        raise TargetingError("account", "expected 1 to 32 of a-z, 0-9, '_'")
    values: dict[str, _Value] = {}
    for index in range(0, len(parts), 2):
        raw_key = parts[index]
        key = raw_key.lower()
        if key not in _PARSERS:
            raise TargetingError(raw_key, "unknown key" if raw_key else "empty key")
        if key in values:
            raise TargetingError(key, "repeated key")
        value = parts[index + 1] if index + 1 < len(parts) else ""
        values[key] = _parse_value(key, key, value)
    return _with(Targeting(account=account.lower()), values)


# The keys an API key's standing rules may set (``parse_rules``): what every connection made with
# the key gets unless its user name or headers say otherwise.
RULE_KEYS: Final = frozenset({"country", "region", "city", "asn", "type", "sessttl", "retryon", "maxretries"})
MAX_RULES = 200  # characters


def parse_rules(text: str) -> Targeting:
    """An API key's standing rules, written like a user name's keys without the account
    (``retryon-403,429-maxretries-2``), as a Targeting of account ``""``. Raises TargetingError."""
    if len(text) > MAX_RULES:
        raise TargetingError("rules", f"longer than {MAX_RULES} characters")
    parts = text.split("-") if text else []
    for index in range(0, len(parts), 2):
        key = parts[index].lower()
        if key in _PARSERS and key not in RULE_KEYS:
            raise TargetingError(key, "not a standing rule: give it per connection")
    return replace(parse_username("_-" + text if text else "_"), account="")


def with_rules(t: Targeting, rules: Targeting) -> Targeting:
    """``t`` with every key it leaves unset taken from ``rules`` (its key's standing rules)."""
    f, r = t.filters, rules.filters
    return replace(
        t,
        filters=ExitFilters(
            country=f.country if f.country is not None else r.country,
            region=f.region if f.region is not None else r.region,
            city=f.city if f.city is not None else r.city,
            asn=f.asn if f.asn is not None else r.asn,
            type=f.type if f.type is not None else r.type,
        ),
        sessttl=t.sessttl if t.sessttl is not None else rules.sessttl,
        retryon=t.retryon if t.retryon is not None else rules.retryon,
        maxretries=t.maxretries if t.maxretries is not None else rules.maxretries,
    )


def is_header_key(name: str) -> bool:
    """Whether ``name`` (``Session``, ``retry-on``…) follows ``X-IPSX-`` in a header this
    module reads: the keys of the user name, dashes allowed."""
    return name.lower().replace("-", "") in _PARSERS


def apply_headers(t: Targeting, headers: list[tuple[str, str]]) -> Targeting:
    """``t`` overridden by any ``X-IPSX-<Key>`` headers. Raises TargetingError naming the header.

    Header names in PASSTHROUGH_CONTROL_HEADERS are skipped; any other unknown ``X-IPSX-*`` name
    is refused.
    """
    values: dict[str, _Value] = {}
    for name, value in headers:
        if name[:7].lower() != HEADER_PREFIX:
            continue
        lname = name.lower()
        if lname in PASSTHROUGH_CONTROL_HEADERS:
            continue
        key = lname[len(HEADER_PREFIX) :].replace("-", "")
        if key not in _PARSERS:
            raise TargetingError(name, "unknown header")
        if key in values:
            raise TargetingError(name, "repeated header")
        values[key] = _parse_value(key, name, value.strip())
    return _with(t, values)


def parse_basic_credentials(value: str) -> tuple[str, str] | None:
    """(username, password) from a ``Basic`` Proxy-Authorization value; None if it is not one."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, non-ASCII input and UnicodeDecodeError are all ValueErrors
        return None
    username, colon, password = decoded.partition(":")
    if not colon:
        return None
    return username, password
