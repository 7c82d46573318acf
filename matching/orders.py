"""Orders: what providers offer and what requesters ask for, validated when built.

Every type here is a frozen dataclass that validates itself in ``__post_init__`` and raises
:class:`~matching.errors.InvalidOrder` naming the offending field, so an order that exists is a
valid order. Prices are integer base units (18 decimals) of IPSX, durations whole seconds,
traffic bytes (1 GB = 10**9 bytes); the cost of a deal is :func:`cost_estimate`, computed with
integers only.

Ids (orders, exits, providers, requesters) are 1-64 characters among ``A-Z a-z 0-9 _``: deal ids
are built from request ids and must stay addressable by the gateway's ``-deal-<id>`` targeting,
which allows nothing else. Regions and cities follow the gateway's targeting syntax too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from billing.ledger import MAX_AMOUNT, Amount
from matching.errors import InvalidOrder

PROTOCOLS = frozenset({"http", "https", "socks5"})
EXIT_TYPES = frozenset({"residential", "mobile", "datacenter"})
SHARING = frozenset({"dedicated", "shared", "both"})

SECONDS = 1
HOUR = 3600 * SECONDS
DAY = 24 * HOUR
MIN_DURATION_S = 5 * SECONDS
MAX_DURATION_S = 30 * DAY  # "one month" in the whitepaper
BYTES_PER_GB = 10**9  # decimal gigabytes, as providers and requesters are billed
MAX_IPS = 10_000
MAX_TRAFFIC_BYTES = 10**18  # one exabyte: far beyond any deal, small enough to keep costs sane
MAX_SHARED_CAPACITY = 10_000
MAX_ASN = 2**32 - 1

_ID = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
_COUNTRY = re.compile(r"[a-z]{2}", re.ASCII)
_PLACE = re.compile(r"[a-z0-9_]{1,64}", re.ASCII)


def cost_estimate(price_per_gb: int, price_per_hour: int, traffic_bytes: int, duration_s: int) -> Amount:
    """What a deal at these prices costs at most: traffic and time, each rounded up to a base unit.

    ``ceil(price_per_gb * traffic_bytes / 10**9) + ceil(price_per_hour * duration_s / 3600)``, in
    integer arithmetic (no float ever touches an amount).
    """
    return Amount(-(-price_per_gb * traffic_bytes // BYTES_PER_GB) - (-price_per_hour * duration_s // HOUR))


def is_expired(expires_at: float | None, now: float) -> bool:
    """True when an order with this expiry no longer trades at ``now`` (expiry is exclusive)."""
    return expires_at is not None and expires_at <= now


def deal_id_for(request_id: str, number: int, *, spot: bool = False) -> str:
    """The id of the ``number``-th deal the engine opens: ``<request id>_<number>`` for a deal of
    a request order, ``spot_<number>`` for a spot deal. :func:`order_of` reads it back."""
    return f"spot_{number}" if spot else f"{request_id}_{number}"


def order_of(deal_id: str) -> str | None:
    """The request order a deal belongs to (``None`` for a spot deal); the number after the last
    ``_`` is the deal's own, so an order id that holds ``_`` itself is still read whole."""
    order, _, number = deal_id.rpartition("_")
    if not order or not number.isdigit() or order == "spot":
        return None
    return order


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidOrder(name, "must be 1-64 characters among A-Z, a-z, 0-9 and _")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; True as a price or a count is a bug upstream, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidOrder(name, "must be an integer")
    if not low <= value <= high:
        raise InvalidOrder(name, f"must be between {low} and {high}")


def _check_price(name: str, value: object) -> None:
    _check_int(name, value, 0, MAX_AMOUNT)


_SCHEDULE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])", re.ASCII)


def schedule_window(schedule: str, now: float) -> tuple[float, float] | None:
    """The daily UTC window ``"HH:MM-HH:MM"`` (it may wrap midnight: ``"22:00-07:00"``) that
    contains ``now``, as ``(opened, closes)`` in seconds, or ``None`` when ``now`` is outside it."""
    found = _SCHEDULE.fullmatch(schedule)
    if found is None:
        raise InvalidOrder("schedule", "must be HH:MM-HH:MM in UTC, e.g. 22:00-07:00")
    start = int(found.group(1)) * 3600 + int(found.group(2)) * 60
    end = int(found.group(3)) * 3600 + int(found.group(4)) * 60
    length = (end - start) % DAY or DAY  # equal ends: all day
    midnight = now - now % DAY
    for opened in (midnight + start - DAY, midnight + start):
        if opened <= now < opened + length:
            return opened, opened + length
    return None


def _check_expiry(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidOrder("expires_at", "must be a finite number of seconds or None")


def _check_choice(name: str, value: object, allowed: frozenset[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidOrder(name, f"must be one of {', '.join(sorted(allowed))}")


def _check_country(name: str, value: object) -> None:
    if not isinstance(value, str) or not _COUNTRY.fullmatch(value):
        raise InvalidOrder(name, "must be a lower-case ISO 3166-1 alpha-2 code")


def _check_place(name: str, value: object, *, empty_ok: bool) -> None:
    if empty_ok and value == "":
        return
    if not isinstance(value, str) or not _PLACE.fullmatch(value):
        raise InvalidOrder(name, "must be 1-64 characters among a-z, 0-9 and _")


def _check_duration(name: str, value: object) -> None:
    _check_int(name, value, MIN_DURATION_S, MAX_DURATION_S)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitAttributes:
    """Where and what an exit is. ``region``/``city`` ``""`` and ``asn`` 0 mean "unknown"."""

    country: str  # ISO 3166-1 alpha-2, lower case
    type: str  # one of EXIT_TYPES
    region: str = ""
    city: str = ""
    asn: int = 0

    def __post_init__(self) -> None:
        _check_country("country", self.country)
        _check_choice("type", self.type, EXIT_TYPES)
        _check_place("region", self.region, empty_ok=True)
        _check_place("city", self.city, empty_ok=True)
        _check_int("asn", self.asn, 0, MAX_ASN)


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """A provider lends ONE exit at these prices, for deals of these durations and protocols.

    ``sharing`` says which requests it serves: ``"dedicated"`` (one deal holds the whole exit),
    ``"shared"`` (up to ``shared_capacity`` concurrent shared deals) or ``"both"``. Either price
    may be 0, not both. ``expires_at`` is in the same clock as the engine's ``now``; ``None`` means
    the offer rests until cancelled. ``schedule`` is a daily UTC window: the market puts the
    offer on the book only inside it, for deals that end before it closes (the engine itself
    does not read it).
    """

    offer_id: str
    provider: str
    exit_id: str
    attributes: ExitAttributes
    price_per_gb: Amount
    price_per_hour: Amount
    min_duration_s: int = MIN_DURATION_S
    max_duration_s: int = MAX_DURATION_S
    protocols: frozenset[str] = PROTOCOLS
    sharing: str = "both"
    shared_capacity: int = 1
    expires_at: float | None = None
    schedule: str | None = None  # "HH:MM-HH:MM" UTC: the daily window the offer trades in

    def __post_init__(self) -> None:
        _check_id("offer_id", self.offer_id)
        _check_id("provider", self.provider)
        _check_id("exit_id", self.exit_id)
        if not isinstance(self.attributes, ExitAttributes):
            raise InvalidOrder("attributes", "must be ExitAttributes")
        _check_price("price_per_gb", self.price_per_gb)
        _check_price("price_per_hour", self.price_per_hour)
        if self.price_per_gb == 0 and self.price_per_hour == 0:
            raise InvalidOrder("price_per_gb", "price_per_gb and price_per_hour cannot both be 0")
        _check_duration("min_duration_s", self.min_duration_s)
        _check_duration("max_duration_s", self.max_duration_s)
        if self.min_duration_s > self.max_duration_s:
            raise InvalidOrder("min_duration_s", "must not exceed max_duration_s")
        if not isinstance(self.protocols, frozenset) or not self.protocols:
            raise InvalidOrder("protocols", "must be a non-empty frozenset")
        for protocol in self.protocols:
            _check_choice("protocols", protocol, PROTOCOLS)
        _check_choice("sharing", self.sharing, SHARING)
        _check_int("shared_capacity", self.shared_capacity, 1, MAX_SHARED_CAPACITY)
        _check_expiry(self.expires_at)
        if self.schedule is not None:
            if not isinstance(self.schedule, str):
                raise InvalidOrder("schedule", "must be HH:MM-HH:MM in UTC, e.g. 22:00-07:00")
            schedule_window(self.schedule, 0.0)  # validates it

    @property
    def serves_dedicated(self) -> bool:
        """True if dedicated requests may trade with this offer."""
        return self.sharing != "shared"

    @property
    def serves_shared(self) -> bool:
        """True if shared requests may trade with this offer."""
        return self.sharing != "dedicated"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFilters:
    """Attributes an exit must have; ``None`` means "any". ``protocol`` is always required."""

    country: str | None = None
    region: str | None = None
    city: str | None = None
    asn: int | None = None
    type: str | None = None
    protocol: str = "http"

    def __post_init__(self) -> None:
        if self.country is not None:
            _check_country("country", self.country)
        if self.region is not None:
            _check_place("region", self.region, empty_ok=False)
        if self.city is not None:
            _check_place("city", self.city, empty_ok=False)
        if self.asn is not None:
            _check_int("asn", self.asn, 1, MAX_ASN)
        if self.type is not None:
            _check_choice("type", self.type, EXIT_TYPES)
        _check_choice("protocol", self.protocol, PROTOCOLS)

    def accepts(self, attributes: ExitAttributes) -> bool:
        """True if an exit with ``attributes`` satisfies every set filter (protocol aside)."""
        return (
            (self.country is None or self.country == attributes.country)
            and (self.type is None or self.type == attributes.type)
            and (self.region is None or self.region == attributes.region)
            and (self.city is None or self.city == attributes.city)
            and (self.asn is None or self.asn == attributes.asn)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A requester wants ``ips`` distinct exits matching ``filters``, each for one deal.

    Each deal lasts ``duration_s`` with a traffic allowance of ``traffic_bytes`` and trades at the
    offer's prices, which must not exceed ``max_price_per_gb`` / ``max_price_per_hour``.
    ``dedicated`` asks for exits no one else uses meanwhile. ``rest=False`` is immediate-or-cancel:
    what cannot be filled at once is dropped; ``rest=True`` leaves it on the book. A time frame
    (``starts_at`` to ``expires_at``) says when its deals may open: the market keeps the request
    off the book until ``starts_at`` (the engine itself does not read it).
    """

    request_id: str
    requester: str
    filters: RequestFilters
    ips: int
    duration_s: int
    traffic_bytes: int
    max_price_per_gb: Amount
    max_price_per_hour: Amount
    dedicated: bool = False
    rest: bool = True
    expires_at: float | None = None
    starts_at: float | None = None  # with expires_at, the time frame its deals may open in

    def __post_init__(self) -> None:
        _check_id("request_id", self.request_id)
        _check_id("requester", self.requester)
        if not isinstance(self.filters, RequestFilters):
            raise InvalidOrder("filters", "must be RequestFilters")
        _check_int("ips", self.ips, 1, MAX_IPS)
        _check_duration("duration_s", self.duration_s)
        _check_int("traffic_bytes", self.traffic_bytes, 0, MAX_TRAFFIC_BYTES)
        _check_price("max_price_per_gb", self.max_price_per_gb)
        _check_price("max_price_per_hour", self.max_price_per_hour)
        if self.max_price_per_gb == 0 and self.max_price_per_hour == 0:
            # Offers cannot have both prices at 0, so such a request could never trade.
            raise InvalidOrder("max_price_per_gb", "max prices cannot both be 0")
        if not isinstance(self.dedicated, bool):
            raise InvalidOrder("dedicated", "must be a bool")
        if not isinstance(self.rest, bool):
            raise InvalidOrder("rest", "must be a bool")
        _check_expiry(self.expires_at)
        if self.starts_at is not None:
            if not isinstance(self.starts_at, int | float) or isinstance(self.starts_at, bool):
                raise InvalidOrder("starts_at", "must be a finite number of seconds or None")
            if not math.isfinite(self.starts_at):
                raise InvalidOrder("starts_at", "must be a finite number of seconds or None")
            if self.expires_at is not None and self.expires_at <= self.starts_at:
                raise InvalidOrder("expires_at", "must be after starts_at")

    @property
    def willingness(self) -> Amount:
        """The cost estimate at the request's max prices: its priority among resting requests."""
        return cost_estimate(
            self.max_price_per_gb, self.max_price_per_hour, self.traffic_bytes, self.duration_s
        )

    def cost_of(self, offer: Offer) -> Amount:
        """What one deal on ``offer`` costs this request at most (the reserve it needs)."""
        return cost_estimate(offer.price_per_gb, offer.price_per_hour, self.traffic_bytes, self.duration_s)

    def accepts(self, offer: Offer, now: float) -> bool:
        """True if ``offer`` satisfies this request's terms at ``now``, capacity aside.

        Capacity (is the exit free for a dedicated or a shared deal) and "not twice the same exit
        in one request" depend on the book and are the engine's to check.
        """
        return (
            offer.price_per_gb <= self.max_price_per_gb
            and offer.price_per_hour <= self.max_price_per_hour
            and offer.min_duration_s <= self.duration_s <= offer.max_duration_s
            and self.filters.protocol in offer.protocols
            and (offer.serves_dedicated if self.dedicated else offer.serves_shared)
            and self.filters.accepts(offer.attributes)
            and not is_expired(offer.expires_at, now)
            and not is_expired(self.expires_at, now)
        )


def package_request(
    *,
    request_id: str,
    requester: str,
    count: int,
    duration_s: int,
    total_traffic_bytes: int,
    dedicated: bool,
    max_price_per_gb: Amount,
    max_price_per_hour: Amount,
    filters: RequestFilters | None = None,
    rest: bool = True,
    expires_at: float | None = None,
    starts_at: float | None = None,
) -> Request:
    """The request for a package as IPSX sold them: ``count`` IPs for ``duration_s``.

    ``total_traffic_bytes`` is the package's allowance for all its IPs together; each deal gets
    an even share, rounded up so the package is never short of what was sold. A package rests by
    default: what is not available now is filled as offers arrive. Raises ``InvalidOrder`` as
    :class:`Request` does (``count`` is reported as ``"ips"``).
    """
    _check_int("ips", count, 1, MAX_IPS)
    _check_int("traffic_bytes", total_traffic_bytes, 0, MAX_TRAFFIC_BYTES)
    return Request(
        request_id=request_id,
        requester=requester,
        filters=RequestFilters() if filters is None else filters,
        ips=count,
        duration_s=duration_s,
        traffic_bytes=-(-total_traffic_bytes // count),
        max_price_per_gb=max_price_per_gb,
        max_price_per_hour=max_price_per_hour,
        dedicated=dedicated,
        rest=rest,
        expires_at=expires_at,
        starts_at=starts_at,
    )
