"""Order validation, the cost estimate and the package helper."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from billing.ledger import Amount
from matching.errors import InvalidOrder, MatchingError
from matching.orders import (
    DAY,
    MAX_DURATION_S,
    ExitAttributes,
    Offer,
    Request,
    RequestFilters,
    cost_estimate,
    deal_id_for,
    is_expired,
    order_of,
    package_request,
    schedule_window,
)
from matching.terms import filters_from

IPSX = 10**18
GB = 10**9
FR = ExitAttributes(country="fr", type="residential", region="idf", city="paris", asn=3215)


def offer(**changes: Any) -> Offer:
    fields: dict[str, Any] = {
        "offer_id": "o1",
        "provider": "0xProvider",
        "exit_id": "x1",
        "attributes": FR,
        "price_per_gb": Amount(IPSX),
        "price_per_hour": Amount(0),
    }
    fields.update(changes)
    return Offer(**fields)


def request(**changes: Any) -> Request:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "requester": "alice",
        "filters": RequestFilters(country="fr"),
        "ips": 2,
        "duration_s": 3600,
        "traffic_bytes": GB,
        "max_price_per_gb": Amount(2 * IPSX),
        "max_price_per_hour": Amount(IPSX),
    }
    fields.update(changes)
    return Request(**fields)


def test_cost_estimate_rounds_each_term_up_separately() -> None:
    # 1 base unit per GB for 1 byte is 1e-9 of a unit: rounded up to 1; same for 1 s at 1/hour.
    assert cost_estimate(1, 1, 1, 1) == 2
    assert cost_estimate(3 * IPSX, 0, 2 * GB, 3600) == 6 * IPSX
    assert cost_estimate(0, 7200, 0, 1800) == 3600
    assert cost_estimate(IPSX, 3600, GB // 2, 5) == IPSX // 2 + 5


def test_cost_estimate_is_exact_on_huge_amounts() -> None:
    price = 10**40 + 1
    assert cost_estimate(price, 0, 3 * GB, 5) == 3 * price
    assert isinstance(cost_estimate(price, price, 10**18, MAX_DURATION_S), int)


def test_is_expired_is_inclusive_of_the_expiry_instant() -> None:
    assert not is_expired(None, 1e12)
    assert not is_expired(10.0, 9.999)
    assert is_expired(10.0, 10.0)


def test_valid_orders_build() -> None:
    assert offer().serves_dedicated and offer().serves_shared
    assert not offer(sharing="shared").serves_dedicated
    assert not offer(sharing="dedicated").serves_shared
    assert request().willingness == 2 * IPSX + IPSX


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"offer_id": ""}, "offer_id"),
        ({"offer_id": "o" * 65}, "offer_id"),
        ({"offer_id": "has-dash"}, "offer_id"),
        ({"provider": "a b"}, "provider"),
        ({"exit_id": "é"}, "exit_id"),
        ({"price_per_gb": Amount(-1)}, "price_per_gb"),
        ({"price_per_hour": Amount(-1)}, "price_per_hour"),
        ({"price_per_gb": 1.5}, "price_per_gb"),
        ({"price_per_gb": True}, "price_per_gb"),
        ({"price_per_gb": Amount(0), "price_per_hour": Amount(0)}, "price_per_gb"),
        ({"min_duration_s": 4}, "min_duration_s"),
        ({"max_duration_s": 30 * DAY + 1}, "max_duration_s"),
        ({"min_duration_s": 600, "max_duration_s": 60}, "min_duration_s"),
        ({"protocols": frozenset()}, "protocols"),
        ({"protocols": frozenset({"ftp"})}, "protocols"),
        ({"protocols": {"http"}}, "protocols"),
        ({"sharing": "sometimes"}, "sharing"),
        ({"shared_capacity": 0}, "shared_capacity"),
        ({"expires_at": float("nan")}, "expires_at"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"attributes": {"country": "fr"}}, "attributes"),
    ],
)
def test_offer_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOrder) as caught:
        offer(**changes)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MatchingError)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"country": "FR"}, "country"),
        ({"country": "fra"}, "country"),
        ({"type": "satellite"}, "type"),
        ({"region": "Île"}, "region"),
        ({"city": "x" * 65}, "city"),
        ({"asn": -1}, "asn"),
        ({"asn": 2**32}, "asn"),
    ],
)
def test_exit_attributes_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {"country": "fr", "type": "mobile"} | changes
    with pytest.raises(InvalidOrder) as caught:
        ExitAttributes(**fields)
    assert caught.value.field == field


def test_unknown_region_city_and_asn_are_allowed_on_exits() -> None:
    attributes = ExitAttributes(country="de", type="datacenter")
    assert (attributes.region, attributes.city, attributes.asn) == ("", "", 0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"country": "F1"}, "country"),
        ({"region": ""}, "region"),
        ({"city": "New York"}, "city"),
        ({"asn": 0}, "asn"),
        ({"type": "Mobile"}, "type"),
        ({"protocol": "ftp"}, "protocol"),
    ],
)
def test_filter_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOrder) as caught:
        RequestFilters(**changes)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"request_id": ""}, "request_id"),
        ({"requester": "x" * 65}, "requester"),
        ({"ips": 0}, "ips"),
        ({"ips": 10_001}, "ips"),
        ({"duration_s": 4}, "duration_s"),
        ({"duration_s": MAX_DURATION_S + 1}, "duration_s"),
        ({"duration_s": 60.0}, "duration_s"),
        ({"traffic_bytes": -1}, "traffic_bytes"),
        ({"max_price_per_gb": Amount(-5)}, "max_price_per_gb"),
        ({"max_price_per_hour": Amount(-5)}, "max_price_per_hour"),
        ({"max_price_per_gb": Amount(0), "max_price_per_hour": Amount(0)}, "max_price_per_gb"),
        ({"dedicated": 1}, "dedicated"),
        ({"rest": "yes"}, "rest"),
        ({"filters": None}, "filters"),
        ({"expires_at": float("inf")}, "expires_at"),
    ],
)
def test_request_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOrder) as caught:
        request(**changes)
    assert caught.value.field == field


def test_invalid_order_message_names_the_rule_not_the_value() -> None:
    with pytest.raises(InvalidOrder) as caught:
        offer(offer_id="<script>")
    assert "<script>" not in str(caught.value)
    assert caught.value.reason in str(caught.value)


def test_orders_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        offer().price_per_gb = Amount(0)  # type: ignore[misc]


def test_replace_revalidates() -> None:
    with pytest.raises(InvalidOrder) as caught:
        dataclasses.replace(request(), ips=0)
    assert caught.value.field == "ips"


def test_filters_accept_only_matching_attributes() -> None:
    assert RequestFilters().accepts(FR)
    assert RequestFilters(country="fr", type="residential", region="idf", city="paris", asn=3215).accepts(FR)
    assert not RequestFilters(country="de").accepts(FR)
    assert not RequestFilters(type="mobile").accepts(FR)
    assert not RequestFilters(city="lyon").accepts(FR)
    assert not RequestFilters(asn=1).accepts(FR)


@pytest.mark.parametrize(
    ("offer_changes", "request_changes"),
    [
        ({"price_per_gb": Amount(3 * IPSX)}, {}),
        ({"price_per_hour": Amount(2 * IPSX)}, {}),
        ({"min_duration_s": 7200}, {}),
        ({"max_duration_s": 600}, {}),
        ({"protocols": frozenset({"socks5"})}, {}),
        ({"sharing": "shared"}, {"dedicated": True}),
        ({"sharing": "dedicated"}, {}),
        ({"expires_at": 100.0}, {}),
        ({}, {"expires_at": 100.0}),
        ({}, {"filters": RequestFilters(type="mobile")}),
    ],
)
def test_request_accepts_refuses_each_broken_term(
    offer_changes: dict[str, Any], request_changes: dict[str, Any]
) -> None:
    assert request().accepts(offer(), 100.0)
    assert not request(**request_changes).accepts(offer(**offer_changes), 100.0)


def test_request_accepts_duration_bounds_inclusively() -> None:
    bounded = offer(min_duration_s=3600, max_duration_s=3600)
    assert request(duration_s=3600).accepts(bounded, 0.0)


def test_package_request_spreads_the_allowance_over_the_ips() -> None:
    package = package_request(
        request_id="pkg1",
        requester="alice",
        count=3,
        duration_s=30 * DAY,
        total_traffic_bytes=10 * GB,
        dedicated=True,
        max_price_per_gb=Amount(IPSX),
        max_price_per_hour=Amount(0),
        filters=RequestFilters(country="us", type="datacenter"),
    )
    assert package.ips == 3
    assert package.traffic_bytes == 3_333_333_334  # rounded up: never short of what was sold
    assert package.dedicated and package.rest
    assert package.filters.country == "us"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"count": 0}, "ips"),
        ({"total_traffic_bytes": -1}, "traffic_bytes"),
        ({"duration_s": 1}, "duration_s"),
    ],
)
def test_package_request_validates_like_a_request(changes: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {
        "request_id": "pkg1",
        "requester": "alice",
        "count": 1,
        "duration_s": 3600,
        "total_traffic_bytes": GB,
        "dedicated": False,
        "max_price_per_gb": Amount(IPSX),
        "max_price_per_hour": Amount(IPSX),
    } | changes
    with pytest.raises(InvalidOrder) as caught:
        package_request(**fields)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("request_id", "number", "spot"),
    [("r19c0001", 7, False), ("k_with_under_scores", 12, False), ("x", 1, False), ("ignored", 3, True)],
)
def test_order_of_reads_back_the_order_of_a_deal_id(request_id: str, number: int, spot: bool) -> None:
    deal_id = deal_id_for(request_id, number, spot=spot)
    assert order_of(deal_id) == (None if spot else request_id)


@pytest.mark.parametrize("deal_id", ["", "r1", "r1_", "_5", "r1_x", "spot_9"])
def test_order_of_is_none_for_an_id_the_engine_never_makes_for_an_order(deal_id: str) -> None:
    assert order_of(deal_id) is None


MIDNIGHT = 1_799_971_200.0  # a UTC midnight


@pytest.mark.parametrize(
    ("schedule", "at", "window"),
    [
        ("10:00-12:00", 11 * 3600, (10 * 3600, 12 * 3600)),
        ("10:00-12:00", 12 * 3600, None),  # the end is excluded
        ("10:00-12:00", 10 * 3600, (10 * 3600, 12 * 3600)),
        ("22:00-07:00", 23 * 3600, (22 * 3600, 31 * 3600)),  # wraps midnight
        ("22:00-07:00", 3 * 3600, (-2 * 3600, 7 * 3600)),  # in the part after midnight
        ("22:00-07:00", 12 * 3600, None),
        ("00:00-00:00", 5 * 3600, (0, 24 * 3600)),  # equal ends: all day
    ],
)
def test_schedule_window(schedule: str, at: int, window: tuple[int, int] | None) -> None:
    found = schedule_window(schedule, MIDNIGHT + at)
    assert found == (None if window is None else (MIDNIGHT + window[0], MIDNIGHT + window[1]))


def test_a_request_for_a_country_that_does_not_exist_says_so() -> None:
    with pytest.raises(InvalidOrder) as caught:
        filters_from({"country": "uk"})
    assert caught.value.field == "country"
    assert "'uk' is no ISO 3166-1 country code (the United Kingdom is 'gb')" in str(caught.value)


def test_orders_stored_before_the_country_check_still_load() -> None:
    # An exit or a request stored with a well-formed code that names no country loads as it was.
    assert ExitAttributes(country="uk", type="residential").country == "uk"
    assert RequestFilters(country="uk").country == "uk"
