"""Orders from the API's JSON terms: every field type-checked, amounts as base units.

Amounts may come as decimal strings (exact at any size) or integers; anything else is an
``InvalidOrder`` naming the field, like the order types' own validation.
"""

from __future__ import annotations

from typing import Any

from billing.ledger import Amount
from matching.errors import InvalidOrder
from matching.orders import (
    MAX_DURATION_S,
    MIN_DURATION_S,
    PROTOCOLS,
    ExitAttributes,
    Offer,
    Request,
    RequestFilters,
    package_request,
)
from pool.countries import unknown_country

MAX_UNIX_TIME = 10**11  # unix seconds: a time past this (the year 5138) is a mistake, not a plan


def offer_for(
    account: str, exit_id: str, attributes: ExitAttributes, terms: dict[str, Any], offer_id: str
) -> Offer:
    """The Offer of ``account`` for ``exit_id`` (attributes from the pool) from API terms."""
    protocols = terms.get("protocols", sorted(PROTOCOLS))
    if not isinstance(protocols, list) or not all(isinstance(item, str) for item in protocols):
        raise InvalidOrder("protocols", "must be a list of http, https, socks5")
    sharing = terms.get("sharing", "both")
    if not isinstance(sharing, str):
        raise InvalidOrder("sharing", "must be dedicated, shared or both")
    return Offer(
        offer_id=offer_id,
        provider=account,
        exit_id=exit_id,
        attributes=attributes,
        price_per_gb=Amount(_int(terms, "price_per_gb", 0)),
        price_per_hour=Amount(_int(terms, "price_per_hour", 0)),
        min_duration_s=_int(terms, "min_duration_s", MIN_DURATION_S),
        max_duration_s=_int(terms, "max_duration_s", MAX_DURATION_S),
        protocols=frozenset(protocols),
        sharing=sharing,
        shared_capacity=_int(terms, "shared_capacity", 1),
        expires_at=_float(terms, "expires_at"),
        schedule=terms.get("schedule"),
    )


def _int(terms: dict[str, Any], name: str, default: int) -> int:
    value = terms.get(name, default)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 80:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidOrder(name, "must be an integer (amounts in base units, as a string or a number)")


def _bool(terms: dict[str, Any], name: str, default: bool) -> bool:
    value = terms.get(name, default)
    if not isinstance(value, bool):
        raise InvalidOrder(name, "must be true or false")
    return value


def _float(terms: dict[str, Any], name: str) -> float | None:
    value = terms.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_UNIX_TIME:
        return float(value)
    raise InvalidOrder(name, f"must be a number of unix seconds from 0 to {MAX_UNIX_TIME:.0e}")


def filters_from(raw: object) -> RequestFilters:
    """RequestFilters from a JSON object (absent keys: any); raises ``InvalidOrder``.

    A new request's country must name one (``pool.countries``); that is checked here, where
    orders are placed, and not by ``RequestFilters`` itself, so orders stored before the check
    existed still load.
    """
    if not isinstance(raw, dict):
        raise InvalidOrder("filters", "must be an object")
    country = raw.get("country")
    if isinstance(country, str) and (unknown := unknown_country(country)) is not None:
        raise InvalidOrder("country", unknown)
    return RequestFilters(
        country=raw.get("country"),
        region=raw.get("region"),
        city=raw.get("city"),
        asn=raw.get("asn"),
        type=raw.get("type"),
        protocol=str(raw.get("protocol", "http")),
    )


def request_for(account: str, terms: dict[str, Any], request_id: str) -> Request:
    """A Request of ``account`` from API terms; raises ``InvalidOrder``."""
    filters = filters_from(terms.get("filters", {}))
    return Request(
        request_id=request_id,
        requester=account,
        filters=filters,
        ips=_int(terms, "ips", 1),
        duration_s=_int(terms, "duration_s", 3600),
        traffic_bytes=_int(terms, "traffic_bytes", 0),
        max_price_per_gb=Amount(_int(terms, "max_price_per_gb", 0)),
        max_price_per_hour=Amount(_int(terms, "max_price_per_hour", 0)),
        dedicated=_bool(terms, "dedicated", False),
        rest=_bool(terms, "rest", True),
        expires_at=_float(terms, "expires_at"),
        starts_at=_float(terms, "starts_at"),
    )


def package_for(account: str, terms: dict[str, Any], request_id: str) -> Request:
    """The request order a package maps onto: ``count`` IPs for ``duration_s`` sharing
    ``total_traffic_bytes``; raises ``InvalidOrder``."""
    return package_request(
        request_id=request_id,
        requester=account,
        count=_int(terms, "count", 1),
        duration_s=_int(terms, "duration_s", 3600),
        total_traffic_bytes=_int(terms, "total_traffic_bytes", 0),
        dedicated=_bool(terms, "dedicated", False),
        max_price_per_gb=Amount(_int(terms, "max_price_per_gb", 0)),
        max_price_per_hour=Amount(_int(terms, "max_price_per_hour", 0)),
        filters=filters_from(terms.get("filters", {})),
        rest=_bool(terms, "rest", True),
        expires_at=_float(terms, "expires_at"),
        starts_at=_float(terms, "starts_at"),
    )


_AMENDABLE = {
    "offer": ("price_per_gb", "price_per_hour"),
    "request": ("ips", "max_price_per_gb", "max_price_per_hour"),
}


def amendment(side: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Engine.amend_offer`` / ``amend_request`` from API changes.

    Raises ``InvalidOrder`` for a field that side cannot amend or a value of the wrong kind.
    """
    allowed = _AMENDABLE[side]
    extra = sorted(set(changes) - set(allowed))
    if extra:
        raise InvalidOrder(extra[0][:40], f"cannot be amended on this {side}")
    out: dict[str, Any] = {}
    for name in allowed:
        if changes.get(name) is None:
            out[name] = None
        elif name == "ips":
            out[name] = _int(changes, name, 0)
        else:
            out[name] = Amount(_int(changes, name, 0))
    return out
