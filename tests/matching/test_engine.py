"""The matching rules on small explicit books."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from billing.ledger import Amount
from matching import engine as engine_module
from matching.engine import Engine, Fill, InMemoryFunds, MatchResult
from matching.errors import (
    DuplicateDeal,
    DuplicateOrder,
    InsufficientFunds,
    InvalidOrder,
    UnknownDeal,
    UnknownOrder,
)
from matching.orders import ExitAttributes, Offer, Request, RequestFilters

IPSX = 10**18
GB = 10**9
RICH = 10**6 * IPSX


def make_offer(
    offer_id: str,
    gb: int = IPSX,
    hour: int = 0,
    *,
    exit_id: str | None = None,
    provider: str = "prov",
    country: str = "fr",
    type: str = "residential",
    **changes: Any,
) -> Offer:
    attributes = changes.pop("attributes", ExitAttributes(country=country, type=type))
    return Offer(
        offer_id=offer_id,
        provider=provider,
        exit_id=exit_id or f"x_{offer_id}",
        attributes=attributes,
        price_per_gb=Amount(gb),
        price_per_hour=Amount(hour),
        **changes,
    )


def make_request(
    request_id: str,
    ips: int = 1,
    *,
    requester: str = "alice",
    max_gb: int = 10 * IPSX,
    max_hour: int = 10 * IPSX,
    traffic: int = GB,
    duration: int = 3600,
    filters: RequestFilters | None = None,
    **changes: Any,
) -> Request:
    return Request(
        request_id=request_id,
        requester=requester,
        filters=filters or RequestFilters(),
        ips=ips,
        duration_s=duration,
        traffic_bytes=traffic,
        max_price_per_gb=Amount(max_gb),
        max_price_per_hour=Amount(max_hour),
        **changes,
    )


def engine(balances: dict[str, int] | None = None) -> tuple[Engine, InMemoryFunds]:
    funds = InMemoryFunds({"alice": RICH, "bob": RICH, "carol": RICH} if balances is None else balances)
    return Engine(funds), funds


def offers_of(result: MatchResult) -> list[str]:
    return [fill.offer_id for fill in result.fills]


def requests_of(result: MatchResult) -> list[str]:
    return [fill.request_id for fill in result.fills]


# -- price-time priority -----------------------------------------------------------------------


def test_place_request_call_fills_cheapest_offers_first() -> None:
    eng, _ = engine()
    for offer_id, price in [("o3", 3), ("o1", 1), ("o2", 2), ("o4", 4)]:
        eng.place_offer(make_offer(offer_id, price * IPSX), 0.0)
    result = eng.place_request(make_request("r1", ips=3), 1.0)
    assert offers_of(result) == ["o1", "o2", "o3"]
    assert not result.rested and not result.stopped_for_funds
    assert [o.offer_id for o in eng.resting_offers()] == ["o3", "o1", "o2", "o4"]  # offers keep resting


def test_equal_costs_trade_in_arrival_order() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("late", 2 * IPSX), 0.0)
    eng.place_offer(make_offer("first", IPSX), 0.0)
    eng.place_offer(make_offer("second", IPSX), 0.0)
    # 1 GB at 1 IPSX/GB costs the same as 1 h at 1 IPSX/h: a tie across price levels.
    eng.place_offer(make_offer("third", 0, IPSX), 0.0)
    result = eng.place_request(make_request("r1", ips=4), 1.0)
    assert offers_of(result) == ["first", "second", "third", "late"]


def test_cheapest_depends_on_the_requests_traffic_and_duration() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("per_gb", 2 * IPSX, 0), 0.0)
    eng.place_offer(make_offer("per_hour", 0, 2 * IPSX), 0.0)
    heavy = eng.place_request(make_request("heavy", traffic=10 * GB, duration=60), 1.0)
    assert offers_of(heavy) == ["per_hour"]
    long = eng.place_request(make_request("long", traffic=GB // 10, duration=10 * 3600), 1.0)
    assert offers_of(long) == ["per_gb"]


def test_request_without_traffic_ranks_by_hourly_price() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("hourly", 0, 3 * IPSX), 0.0)
    eng.place_offer(make_offer("both", 5 * IPSX, IPSX), 0.0)
    result = eng.place_request(make_request("r1", traffic=0), 1.0)
    assert offers_of(result) == ["both"]
    assert result.fills[0].reserve == IPSX


def test_fill_records_the_offers_prices_and_the_reserve() -> None:
    eng, funds = engine()
    eng.place_offer(make_offer("o1", IPSX, IPSX // 2, provider="bob_p", exit_id="ex1"), 0.0)
    result = eng.place_request(make_request("r1", max_gb=5 * IPSX, traffic=2 * GB, duration=7200), 42.5)
    assert result.fills == (
        Fill(
            deal_id="r1_1",
            request_id="r1",
            offer_id="o1",
            requester="alice",
            provider="bob_p",
            exit_id="ex1",
            price_per_gb=Amount(IPSX),
            price_per_hour=Amount(IPSX // 2),
            duration_s=7200,
            traffic_bytes=2 * GB,
            dedicated=False,
            reserve=Amount(3 * IPSX),
            opened_at=42.5,
        ),
    )
    assert funds.reserved("alice") == 3 * IPSX
    assert eng.active_deals() == list(result.fills)
    assert eng.deal("r1_1") == result.fills[0]


def test_deal_ids_follow_the_engines_deal_counter() -> None:
    eng, _ = engine()
    for n in range(3):
        eng.place_offer(make_offer(f"o{n}"), 0.0)
    assert [f.deal_id for f in eng.place_request(make_request("a", ips=2), 1.0).fills] == ["a_1", "a_2"]
    assert [f.deal_id for f in eng.place_request(make_request("b"), 1.0).fills] == ["b_3"]


# -- partial fills, resting, distinct exits ----------------------------------------------------


def test_partial_fill_rests_the_remainder() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1"), 0.0)
    eng.place_offer(make_offer("o2"), 0.0)
    result = eng.place_request(make_request("r1", ips=5), 1.0)
    assert offers_of(result) == ["o1", "o2"] and result.rested
    (status,) = eng.resting_requests()
    assert (status.request.request_id, status.filled, status.remaining) == ("r1", 2, 3)
    later = eng.place_offer(make_offer("o3"), 2.0)
    assert requests_of(later) == ["r1"]
    assert eng.resting_requests()[0].remaining == 2


def test_immediate_or_cancel_drops_the_remainder() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1"), 0.0)
    result = eng.place_request(make_request("r1", ips=3, rest=False), 1.0)
    assert offers_of(result) == ["o1"] and not result.rested
    assert eng.resting_requests() == []
    assert eng.place_offer(make_offer("o2"), 2.0).fills == ()


def test_one_request_never_gets_the_same_exit_twice() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("cheap", IPSX, exit_id="ex1", sharing="shared", shared_capacity=5), 0.0)
    eng.place_offer(make_offer("dear", 2 * IPSX, exit_id="ex1", sharing="shared", shared_capacity=5), 0.0)
    eng.place_offer(make_offer("other", 3 * IPSX, exit_id="ex2"), 0.0)
    result = eng.place_request(make_request("r1", ips=3), 1.0)
    assert offers_of(result) == ["cheap", "other"] and result.rested
    # Even after its deal on ex1 ends, the resting request does not take ex1 again.
    assert eng.end_deal("r1_1", 2.0).fills == ()
    assert eng.place_offer(make_offer("again", IPSX, exit_id="ex1"), 3.0).fills == ()
    assert requests_of(eng.place_offer(make_offer("fresh", IPSX, exit_id="ex3"), 3.0)) == ["r1"]


def test_another_provider_cannot_lend_the_same_exit() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", exit_id="ex1", provider="p1"), 0.0)
    with pytest.raises(InvalidOrder) as caught:
        eng.place_offer(make_offer("o2", exit_id="ex1", provider="p2"), 0.0)
    assert caught.value.field == "exit_id"
    eng.cancel("o1")
    eng.place_offer(make_offer("o2", exit_id="ex1", provider="p2"), 0.0)  # idle exits are forgotten


# -- dedicated and shared capacity -------------------------------------------------------------


def test_dedicated_deal_takes_the_whole_exit() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", sharing="both", shared_capacity=3), 0.0)
    dedicated = eng.place_request(make_request("d1", dedicated=True), 1.0)
    assert offers_of(dedicated) == ["o1"]
    assert eng.place_request(make_request("s1", rest=False), 1.0).fills == ()
    assert eng.place_request(make_request("d2", dedicated=True, rest=False), 1.0).fills == ()
    assert eng.depth() == []


def test_dedicated_request_needs_an_exit_without_any_deal() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", sharing="both", shared_capacity=3), 0.0)
    assert offers_of(eng.place_request(make_request("s1"), 1.0)) == ["o1"]
    result = eng.place_request(make_request("d1", dedicated=True), 1.0)
    assert result.fills == () and result.rested
    # When the shared deal ends the exit is whole again, and the waiting dedicated request takes it.
    freed = eng.end_deal("s1_1", 2.0)
    assert requests_of(freed) == ["d1"] and freed.fills[0].dedicated


def test_shared_capacity_caps_concurrent_shared_deals() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", sharing="shared", shared_capacity=2), 0.0)
    for request_id in ("s1", "s2", "s3"):
        eng.place_request(make_request(request_id, requester="bob"), 1.0)
    assert [d.request_id for d in eng.active_deals()] == ["s1", "s2"]
    assert [s.request.request_id for s in eng.resting_requests()] == ["s3"]
    assert requests_of(eng.end_deal("s1_1", 2.0)) == ["s3"]


@pytest.mark.parametrize(
    ("sharing", "dedicated", "trades"),
    [
        ("dedicated", True, True),
        ("dedicated", False, False),
        ("shared", True, False),
        ("shared", False, True),
        ("both", True, True),
        ("both", False, True),
    ],
)
def test_sharing_modes(sharing: str, dedicated: bool, trades: bool) -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", sharing=sharing), 0.0)
    result = eng.place_request(make_request("r1", dedicated=dedicated), 1.0)
    assert bool(result.fills) is trades


# -- compatibility -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer_changes", "request_changes"),
    [
        ({"min_duration_s": 7200}, {"duration": 3600}),
        ({"max_duration_s": 60}, {"duration": 61}),
        ({"protocols": frozenset({"http", "https"})}, {"filters": RequestFilters(protocol="socks5")}),
        ({"country": "de"}, {"filters": RequestFilters(country="fr")}),
        ({"type": "mobile"}, {"filters": RequestFilters(type="datacenter")}),
        (
            {"attributes": ExitAttributes(country="fr", type="mobile", city="lyon")},
            {"filters": RequestFilters(city="paris")},
        ),
        (
            {"attributes": ExitAttributes(country="fr", type="mobile", region="ara")},
            {"filters": RequestFilters(region="idf")},
        ),
        (
            {"attributes": ExitAttributes(country="fr", type="mobile", asn=7)},
            {"filters": RequestFilters(asn=8)},
        ),
        ({"gb": 3 * IPSX}, {"max_gb": 2 * IPSX}),
        ({"hour": 3 * IPSX}, {"max_hour": 2 * IPSX}),
        ({"expires_at": 5.0}, {}),
    ],
)
def test_incompatible_orders_do_not_trade_either_way(
    offer_changes: dict[str, Any], request_changes: dict[str, Any]
) -> None:
    first, _ = engine()
    first.place_offer(make_offer("o1", **offer_changes), 0.0)
    assert first.place_request(make_request("r1", **request_changes), 10.0).fills == ()
    second, _ = engine()
    second.place_request(make_request("r1", **request_changes), 0.0)
    if "expires_at" in offer_changes:
        return  # an offer cannot be placed already expired
    assert second.place_offer(make_offer("o1", **offer_changes), 10.0).fills == ()


def test_duration_bounds_are_inclusive() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", min_duration_s=600, max_duration_s=600), 0.0)
    assert offers_of(eng.place_request(make_request("r1", duration=600), 1.0)) == ["o1"]


def test_none_filters_match_any_attribute_and_set_ones_narrow() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("de_dc", IPSX, country="de", type="datacenter"), 0.0)
    eng.place_offer(make_offer("fr_mob", 2 * IPSX, country="fr", type="mobile"), 0.0)
    eng.place_offer(make_offer("fr_res", 3 * IPSX, country="fr", type="residential"), 0.0)
    eng.place_offer(make_offer("us_res", 4 * IPSX, country="us", type="residential"), 0.0)
    by_type = eng.place_request(
        make_request("t", ips=9, filters=RequestFilters(type="residential"), rest=False), 1.0
    )
    assert offers_of(by_type) == ["fr_res", "us_res"]
    by_country = eng.place_request(
        make_request("c", ips=9, filters=RequestFilters(country="fr"), rest=False), 1.0
    )
    assert offers_of(by_country) == ["fr_mob"]  # the only shared slot of fr_res went to "t"
    any_ = eng.place_request(make_request("a", ips=9, rest=False, requester="bob"), 1.0)
    assert offers_of(any_) == ["de_dc"]


def test_max_prices_bound_both_dimensions() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", IPSX, 2 * IPSX), 0.0)
    eng.place_offer(make_offer("o2", 2 * IPSX, IPSX), 0.0)
    result = eng.place_request(make_request("r1", ips=2, max_gb=IPSX, max_hour=2 * IPSX), 1.0)
    assert offers_of(result) == ["o1"]


# -- funds -------------------------------------------------------------------------------------


def test_refused_reserve_stops_filling_and_drops_the_rest() -> None:
    eng, funds = engine({"alice": 3 * IPSX})
    for n in range(4):
        eng.place_offer(make_offer(f"o{n}", IPSX + n), 0.0)  # costs just over 1, 1, 1, 1 IPSX
    result = eng.place_request(make_request("r1", ips=4), 1.0)
    assert offers_of(result) == ["o0", "o1"]
    assert result.stopped_for_funds and result.unfunded == ("r1",) and not result.rested
    assert eng.resting_requests() == []
    assert funds.reserved("alice") == 2 * IPSX + 1


def test_arriving_offer_drops_a_resting_request_it_cannot_fund() -> None:
    eng, _ = engine({"alice": 0, "bob": RICH})
    eng.place_request(make_request("poor", requester="alice", max_gb=9 * IPSX), 0.0)
    eng.place_request(make_request("rich", requester="bob", max_gb=2 * IPSX), 0.0)
    result = eng.place_offer(make_offer("o1", sharing="shared", shared_capacity=5), 1.0)
    assert result.unfunded == ("poor",) and requests_of(result) == ["rich"]
    assert eng.resting_requests() == []


def test_end_deal_releases_the_reserve() -> None:
    eng, funds = engine()
    eng.place_offer(make_offer("o1"), 0.0)
    deal = eng.place_request(make_request("r1"), 1.0).fills[0]
    assert funds.reserved("alice") == deal.reserve == IPSX
    eng.end_deal(deal.deal_id, 2.0)
    assert funds.reserved("alice") == 0 and eng.active_deals() == []
    with pytest.raises(UnknownDeal) as caught:
        eng.end_deal(deal.deal_id, 3.0)
    assert caught.value.deal_id == deal.deal_id


# -- arriving offers fill resting requests -----------------------------------------------------


def test_arriving_offer_fills_the_most_willing_request_first() -> None:
    eng, _ = engine()
    eng.place_request(make_request("low", max_gb=2 * IPSX, max_hour=0), 0.0)
    eng.place_request(make_request("high", max_gb=5 * IPSX, max_hour=0), 0.0)
    eng.place_request(make_request("tie_late", max_gb=0, max_hour=5 * IPSX), 0.0)  # 1 h x 5 = 1 GB x 5
    eng.place_request(make_request("big", max_gb=IPSX, max_hour=0, traffic=9 * GB), 0.0)  # willing 9 IPSX
    result = eng.place_offer(make_offer("o1", IPSX, 0, sharing="shared", shared_capacity=10), 1.0)
    # tie_late is no match (its max per GB is 0) so it keeps resting.
    assert requests_of(result) == ["big", "high", "low"]
    assert [fill.price_per_gb for fill in result.fills] == [IPSX] * 3  # at the offer's price
    assert [s.request.request_id for s in eng.resting_requests()] == ["tie_late"]


def test_equal_willingness_fills_in_arrival_order() -> None:
    eng, _ = engine()
    for request_id in ("r1", "r2", "r3"):
        eng.place_request(make_request(request_id), 0.0)
    result = eng.place_offer(make_offer("o1", sharing="shared", shared_capacity=2), 1.0)
    assert requests_of(result) == ["r1", "r2"]


def test_arriving_offer_serves_dedicated_and_shared_requests_by_priority() -> None:
    eng, _ = engine()
    eng.place_request(make_request("shared_hi", max_gb=9 * IPSX), 0.0)
    eng.place_request(make_request("dedicated_lo", max_gb=2 * IPSX, dedicated=True), 0.0)
    result = eng.place_offer(make_offer("o1", sharing="both", shared_capacity=4), 1.0)
    # Once a shared deal holds the exit, it can no longer be dedicated.
    assert requests_of(result) == ["shared_hi"]
    assert [s.request.request_id for s in eng.resting_requests()] == ["dedicated_lo"]


# -- cancel, amend, expire ---------------------------------------------------------------------


def test_cancel_removes_orders_but_not_deals() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1"), 0.0)
    eng.place_request(make_request("r1", ips=2), 1.0)
    eng.cancel("o1")
    eng.cancel("r1")
    assert eng.resting_offers() == [] and eng.resting_requests() == []
    assert [d.deal_id for d in eng.active_deals()] == ["r1_1"]
    eng.end_deal("r1_1", 2.0)
    with pytest.raises(UnknownOrder) as caught:
        eng.cancel("o1")
    assert caught.value.order_id == "o1"


def test_order_ids_are_unique_on_the_book() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("same"), 0.0)
    with pytest.raises(DuplicateOrder):
        eng.place_request(make_request("same", filters=RequestFilters(country="de")), 0.0)
    with pytest.raises(DuplicateOrder):
        eng.place_offer(make_offer("same", exit_id="other"), 0.0)


def test_an_expired_order_cannot_be_placed() -> None:
    eng, _ = engine()
    with pytest.raises(InvalidOrder) as caught:
        eng.place_request(make_request("r1", expires_at=5.0), 5.0)
    assert caught.value.field == "expires_at"


def test_reducing_ips_keeps_time_priority() -> None:
    eng, _ = engine()
    eng.place_request(make_request("first", ips=3), 0.0)
    eng.place_request(make_request("second", ips=3), 0.0)
    assert eng.amend_request("first", ips=2, now=1.0) == MatchResult(rested=True)
    result = eng.place_offer(make_offer("o1"), 2.0)
    assert requests_of(result) == ["first"]
    assert eng.resting_requests()[0].request.ips == 2


def test_raising_ips_loses_time_priority() -> None:
    eng, _ = engine()
    eng.place_request(make_request("first", ips=1), 0.0)
    eng.place_request(make_request("second", ips=1), 0.0)
    eng.amend_request("first", ips=2, now=1.0)
    assert requests_of(eng.place_offer(make_offer("o1"), 2.0)) == ["second"]


def test_repriced_request_loses_priority_and_may_trade_at_once() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", 3 * IPSX), 0.0)
    eng.place_request(make_request("first", max_gb=2 * IPSX), 0.0)
    eng.place_request(make_request("second", max_gb=2 * IPSX), 0.0)
    eng.amend_request("first", max_price_per_gb=Amount(2 * IPSX - 1), now=1.0)
    eng.amend_request("first", max_price_per_gb=Amount(2 * IPSX), now=1.0)
    assert requests_of(eng.place_offer(make_offer("o2", 2 * IPSX), 2.0)) == ["second"]
    raised = eng.amend_request("first", max_price_per_gb=Amount(3 * IPSX), now=3.0)
    assert offers_of(raised) == ["o1"] and not raised.rested


def test_amend_request_ips_must_exceed_the_filled() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1"), 0.0)
    eng.place_request(make_request("r1", ips=3), 1.0)
    with pytest.raises(InvalidOrder) as caught:
        eng.amend_request("r1", ips=1, now=2.0)
    assert caught.value.field == "ips"
    with pytest.raises(InvalidOrder) as caught:
        eng.amend_request("r1", max_price_per_hour=Amount(-1), now=2.0)
    assert caught.value.field == "max_price_per_hour"
    with pytest.raises(UnknownOrder):
        eng.amend_request("nope", ips=2, now=2.0)


def test_repriced_offer_loses_priority_and_may_trade_at_once() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("a", IPSX), 0.0)
    eng.place_offer(make_offer("b", IPSX), 0.0)
    eng.amend_offer("a", price_per_gb=Amount(IPSX), price_per_hour=Amount(1), now=1.0)
    eng.amend_offer("a", price_per_hour=Amount(0), now=1.0)
    assert offers_of(eng.place_request(make_request("r1"), 2.0)) == ["b"]
    eng.place_request(make_request("r2", max_gb=IPSX // 2), 2.0)
    cut = eng.amend_offer("a", price_per_gb=Amount(IPSX // 2), now=3.0)
    assert requests_of(cut) == ["r2"] and cut.fills[0].price_per_gb == IPSX // 2
    with pytest.raises(InvalidOrder) as caught:
        eng.amend_offer("a", price_per_gb=Amount(0), now=4.0)
    assert caught.value.field == "price_per_gb"


def test_amended_offer_keeps_its_open_deals_prices() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", IPSX, sharing="shared", shared_capacity=2), 0.0)
    deal = eng.place_request(make_request("r1"), 1.0).fills[0]
    eng.amend_offer("o1", price_per_gb=Amount(2 * IPSX), now=2.0)
    assert eng.deal(deal.deal_id).price_per_gb == IPSX
    assert offers_of(eng.place_request(make_request("r2"), 3.0))[0] == "o1"
    assert eng.active_deals()[1].price_per_gb == 2 * IPSX


def test_expire_removes_orders_due_and_reports_them_soonest_first() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o_late", expires_at=30.0, country="de"), 0.0)
    eng.place_offer(make_offer("o_soon", expires_at=10.0, country="de"), 0.0)
    eng.place_request(make_request("r_mid", expires_at=20.0, filters=RequestFilters(country="fr")), 0.0)
    eng.place_offer(make_offer("o_never", country="de"), 0.0)
    assert eng.expire(9.0) == []
    assert eng.expire(20.0) == ["o_soon", "r_mid"]
    assert [o.offer_id for o in eng.resting_offers()] == ["o_late", "o_never"]
    assert eng.expire(1e9) == ["o_late"]


def test_expired_orders_do_not_trade_before_expire_is_called() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", expires_at=10.0), 0.0)
    assert eng.place_request(make_request("r1", rest=False), 10.0).fills == ()
    eng.place_request(make_request("r2", expires_at=20.0), 11.0)
    assert eng.place_offer(make_offer("o2"), 20.0).fills == ()


# -- end_deal, spot, depth ---------------------------------------------------------------------


def test_end_deal_serves_waiting_requests_with_the_freed_exit() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", sharing="dedicated"), 0.0)
    eng.place_request(make_request("r1", dedicated=True), 1.0)
    eng.place_request(make_request("r2", dedicated=True, requester="bob"), 1.0)
    freed = eng.end_deal("r1_1", 2.0)
    assert [(f.request_id, f.opened_at) for f in freed.fills] == [("r2", 2.0)]
    assert eng.resting_requests() == []


def test_end_deal_requesters_call() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", sharing="dedicated", exit_id="x1"), 0.0)
    eng.place_offer(make_offer("o2", 3 * IPSX, exit_id="x2"), 0.0)  # too dear for every request
    eng.place_request(make_request("r1", dedicated=True, max_gb=2 * IPSX), 1.0)  # alice on x1
    eng.place_request(make_request("takes", dedicated=True, requester="bob", max_gb=2 * IPSX), 1.0)
    eng.place_request(make_request("shared", requester="carol", max_gb=2 * IPSX), 1.0)  # x1 is dedicated
    eng.place_request(make_request("cheap", dedicated=True, requester="dave", max_gb=IPSX // 2), 1.0)
    eng.place_request(
        make_request("germany", dedicated=True, requester="erin", filters=RequestFilters(country="de")), 1.0
    )
    eng.place_request(make_request("again", ips=2, dedicated=True, max_gb=2 * IPSX), 1.0)  # alice once more
    assert eng.end_deal_requesters("r1_1", 2.0) == {"bob", "alice"}
    with pytest.raises(UnknownDeal) as caught:
        eng.end_deal_requesters("nope_1", 2.0)
    assert caught.value.deal_id == "nope_1"


def test_end_deal_requesters_state() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", sharing="dedicated", exit_id="x1"), 0.0)
    eng.place_request(make_request("r1", ips=2, dedicated=True), 1.0)  # x1, and rests for one more
    eng.place_request(make_request("r2", dedicated=True, requester="bob", expires_at=5.0), 1.0)
    # r1 holds x1 already, so only bob may be served there; once r2 expired, no one.
    assert eng.end_deal_requesters("r1_1", 2.0) == {"bob"}
    assert eng.end_deal_requesters("r1_1", 5.0) == set()
    # A query: the book and the deal are as they were.
    assert [s.request.request_id for s in eng.resting_requests()] == ["r1", "r2"]
    assert [d.deal_id for d in eng.active_deals()] == ["r1_1"]


def test_spot_takes_the_cheapest_shared_room_and_never_rests() -> None:
    eng, funds = engine()
    eng.place_offer(make_offer("dedicated_only", IPSX, sharing="dedicated"), 0.0)
    eng.place_offer(make_offer("dear", 3 * IPSX, sharing="shared"), 0.0)
    eng.place_offer(make_offer("cheap", 2 * IPSX, sharing="both"), 0.0)
    fill = eng.spot("alice", RequestFilters(country="fr"), Amount(5 * IPSX), Amount(0), 60, GB, now=1.0)
    assert fill is not None
    assert (fill.offer_id, fill.deal_id, fill.request_id, fill.dedicated) == (
        "cheap",
        "spot_1",
        "spot_1",
        False,
    )
    assert funds.reserved("alice") == 2 * IPSX
    assert eng.resting_requests() == []
    nothing = eng.spot("alice", RequestFilters(country="de"), Amount(5 * IPSX), Amount(0), 60, GB, now=1.0)
    assert nothing is None


def test_spot_without_funds_raises() -> None:
    eng, funds = engine({"alice": IPSX})
    eng.place_offer(make_offer("o1", 2 * IPSX), 0.0)
    with pytest.raises(InsufficientFunds) as caught:
        eng.spot("alice", RequestFilters(), Amount(5 * IPSX), Amount(0), 60, GB, now=1.0)
    assert (caught.value.requester, caught.value.amount) == ("alice", 2 * IPSX)
    assert eng.active_deals() == [] and funds.reserved("alice") == 0


def test_spot_validates_its_terms() -> None:
    eng, _ = engine()
    with pytest.raises(InvalidOrder) as caught:
        eng.spot("alice", RequestFilters(), Amount(IPSX), Amount(0), 1, GB, now=1.0)
    assert caught.value.field == "duration_s"


def test_depth_aggregates_levels_with_room() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("a", IPSX, 0), 0.0)
    eng.place_offer(make_offer("b", IPSX, 0, type="mobile"), 0.0)
    eng.place_offer(make_offer("c", IPSX, 5), 0.0)
    eng.place_offer(make_offer("d", 2 * IPSX, 0, country="de"), 0.0)
    eng.place_offer(make_offer("full", 0, IPSX, sharing="dedicated"), 0.0)
    eng.place_request(make_request("r1", dedicated=True, traffic=10 * GB, duration=5), 1.0)
    assert eng.depth() == [(IPSX, 0, 2), (IPSX, 5, 1), (2 * IPSX, 0, 1)]
    assert eng.depth(country="fr") == [(IPSX, 0, 2), (IPSX, 5, 1)]
    assert eng.depth(country="fr", type="mobile") == [(IPSX, 0, 1)]
    assert eng.depth(type="datacenter") == []
    with pytest.raises(InvalidOrder):
        eng.depth(country="France")


def test_same_calls_give_the_same_results() -> None:
    def run() -> list[MatchResult]:
        eng, _ = engine()
        results = [
            eng.place_offer(make_offer(f"o{n}", IPSX + n % 3, exit_id=f"e{n % 4}"), 0.0) for n in range(8)
        ]
        results.append(eng.place_request(make_request("r1", ips=3), 1.0))
        results.append(eng.end_deal("r1_1", 2.0))
        results.append(eng.place_request(make_request("r2", ips=5, dedicated=True), 3.0))
        return results

    assert run() == run()


# -- restoring after a restart -----------------------------------------------------------------


def test_restore_deal_state() -> None:
    first, _ = engine()
    first.place_offer(make_offer("o1", exit_id="ex1", sharing="dedicated"), 0.0)
    first.place_offer(make_offer("o2", 2 * IPSX, exit_id="ex2"), 0.0)
    deals = first.place_request(make_request("r1", ips=3, dedicated=True), 1.0).fills
    assert [d.deal_id for d in deals] == ["r1_1", "r1_2"]

    # A new engine rebuilt by the edge: deals first (reserves are still held), then the orders.
    second, funds = engine()
    for deal in deals:
        second.restore_deal(deal)
    assert funds.reserved("alice") == 0  # no second reserve
    assert second.place_offer(make_offer("o1", exit_id="ex1", sharing="dedicated"), 2.0).fills == ()
    second.place_offer(make_offer("o2", 2 * IPSX, exit_id="ex2"), 2.0)
    second.place_offer(make_offer("o3", 3 * IPSX, exit_id="ex3"), 2.0)
    replaced = second.place_request(make_request("r1", ips=1, dedicated=True), 3.0)
    assert [(f.deal_id, f.exit_id) for f in replaced.fills] == [("r1_3", "ex3")]  # ids continue
    second.end_deal("r1_1", 4.0)  # frees ex1 (and releases the reserve the edge still holds)
    assert [o for o, *_ in second.depth()] == [IPSX]


def test_restore_deal_refuses_duplicates_and_foreign_exits() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("o1", exit_id="ex1"), 0.0)
    deal = eng.place_request(make_request("r1"), 1.0).fills[0]
    with pytest.raises(DuplicateDeal) as duplicate:
        eng.restore_deal(deal)
    assert duplicate.value.deal_id == deal.deal_id
    with pytest.raises(InvalidOrder) as foreign:
        eng.restore_deal(dataclasses.replace(deal, deal_id="r9_9", provider="someone_else"))
    assert foreign.value.field == "exit_id"


def test_restore_request_state() -> None:
    first, _ = engine()
    for n in (1, 2):
        first.place_offer(make_offer(f"o{n}", exit_id=f"ex{n}"), 0.0)
    deals = first.place_request(make_request("r1", ips=4), 1.0).fills
    first.end_deal(deals[0].deal_id, 2.0)

    # Rebuilt: the live deal, then the request as stored (its total IPs and what it filled).
    second, _ = engine()
    second.restore_deal(deals[1])
    restored = second.restore_request(make_request("r1", ips=4), filled=2, exits=["ex1"], now=3.0)
    assert restored.fills == () and restored.rested
    assert [(s.request.ips, s.filled) for s in second.resting_requests()] == [(4, 2)]
    second.place_offer(make_offer("o1", exit_id="ex1"), 3.0)  # its ended deal's exit: not again
    assert second.resting_requests()[0].filled == 2
    with pytest.raises(InvalidOrder):
        second.amend_request("r1", ips=2, now=4.0)  # amended as before the restart: a new total
    second.amend_request("r1", ips=3, now=4.0)
    filled = second.place_offer(make_offer("o3", exit_id="ex3"), 5.0).fills
    assert [f.deal_id for f in filled] == ["r1_3"] and second.resting_requests() == []


def test_restore_request_refuses_a_filled_request() -> None:
    eng, _ = engine()
    with pytest.raises(InvalidOrder) as refused:
        eng.restore_request(make_request("r1", ips=2), filled=2, exits=["ex1", "ex2"], now=0.0)
    assert refused.value.field == "filled"
    assert eng.resting_requests() == []


def test_restore_deal_number_state() -> None:
    eng, _ = engine()
    eng.restore_deal_number(41)  # the highest number an ended deal took before the restart
    eng.restore_deal_number(7)  # a lower one changes nothing
    eng.place_offer(make_offer("o1", exit_id="ex1", shared_capacity=2), 0.0)
    assert [f.deal_id for f in eng.place_request(make_request("r1"), 1.0).fills] == ["r1_42"]
    spot = eng.spot("alice", RequestFilters(), Amount(IPSX), Amount(0), 60, GB, 2.0)
    assert spot is not None and spot.deal_id == "spot_43"


def test_queue_position_moves_only_when_the_order_is_requeued() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("a"), 0.0)
    eng.place_request(make_request("r1", ips=3, max_gb=IPSX // 2), 0.0)  # too cheap for "a": rests
    a, r1 = eng.queue_position("a"), eng.queue_position("r1")
    assert a is not None and r1 is not None and a < r1
    eng.amend_offer("a", price_per_gb=Amount(IPSX), now=1.0)  # the price it has: no change
    eng.amend_request("r1", ips=2, now=1.0)  # fewer IPs: keeps its place
    assert (eng.queue_position("a"), eng.queue_position("r1")) == (a, r1)
    eng.amend_request("r1", ips=4, now=2.0)
    raised = eng.queue_position("r1")
    assert raised is not None and raised > r1
    eng.amend_offer("a", price_per_hour=Amount(1), now=3.0)
    repriced = eng.queue_position("a")
    assert repriced is not None and repriced > raised
    eng.cancel("a")
    assert eng.queue_position("a") is None and eng.queue_position("nope") is None


def _why(eng: Engine, request_id: str, **terms: Any) -> str:
    """Place an immediate-or-cancel request that must open no deal, and ask why it opened none."""
    request = make_request(request_id, rest=False, **terms)
    assert eng.place_request(request, 1.0).fills == ()
    return eng.unmatched(request, 1.0)


def test_unmatched_tells_no_offer_from_offers_above_the_prices_and_from_full_exits() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("de", 3 * IPSX, country="de", sharing="shared"), 0.0)  # room for one
    de = RequestFilters(country="de")
    assert _why(eng, "r_us", filters=RequestFilters(country="us")) == "no_offer"  # none at any price
    assert _why(eng, "r_de", filters=de, max_gb=2 * IPSX) == "above_price"
    assert _why(eng, "r_any", max_gb=2 * IPSX) == "above_price"  # no filter: every offer counts
    assert offers_of(eng.place_request(make_request("r_fill", filters=de, rest=False), 1.0)) == ["de"]
    assert _why(eng, "r_full", filters=de) == "offers_busy"  # at its prices, but the exit is full
    assert _why(eng, "r_full_cheap", filters=de, max_gb=2 * IPSX) == "above_price"
    # An offer within the prices, full, outranks one above them with room.
    eng.place_offer(make_offer("de_dear", 9 * IPSX, country="de", sharing="shared"), 0.0)
    assert _why(eng, "r_both", filters=de, max_gb=5 * IPSX) == "offers_busy"
    # A query: the book is as it was.
    assert [o.offer_id for o in eng.resting_offers()] == ["de", "de_dear"]
    assert eng.resting_requests() == []


@pytest.mark.parametrize(
    ("offer", "terms"),
    [
        (make_offer("o", country="de", sharing="dedicated"), {}),  # takes no shared deal
        (make_offer("o", country="de", protocols=frozenset({"socks5"})), {}),
        (make_offer("o", country="de", min_duration_s=7200), {"duration": 3600}),
        (make_offer("o", country="de", expires_at=1.0), {}),
        (
            make_offer("o", country="de", type="mobile"),
            {"filters": RequestFilters(country="de", type="datacenter")},
        ),
        (
            make_offer("o", attributes=ExitAttributes(country="de", type="residential", city="berlin")),
            {"filters": RequestFilters(country="de", city="munich")},
        ),
    ],
)
def test_unmatched_counts_no_offer_whose_other_terms_refuse_the_request(
    offer: Offer, terms: dict[str, Any]
) -> None:
    eng, _ = engine()
    eng.place_offer(offer, 0.0)
    terms = {"filters": RequestFilters(country="de"), **terms}
    assert _why(eng, "r", max_gb=IPSX // 2, **terms) == "no_offer"  # above its price, too: no matter


def test_unmatched_forgets_the_offers_that_left_the_book() -> None:
    eng, _ = engine()
    eng.place_offer(make_offer("de", 3 * IPSX, country="de"), 0.0)
    eng.cancel("de")
    assert _why(eng, "r", filters=RequestFilters(country="de"), max_gb=IPSX) == "no_offer"


def test_unmatched_reads_at_most_unmatched_scan_offers(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bound on each failed spot request's work under the market's lock: with the scan limited
    # to 3, an offer that would accept the request, fourth in its bucket, is not seen.
    monkeypatch.setattr(engine_module, "UNMATCHED_SCAN", 3)
    eng, _ = engine()
    for n in range(3):
        berlin = ExitAttributes(country="de", type="residential", city="berlin")
        eng.place_offer(make_offer(f"berlin{n}", attributes=berlin), 0.0)
    munich_exit = ExitAttributes(country="de", type="residential", city="munich")
    eng.place_offer(make_offer("munich", 9 * IPSX, attributes=munich_exit), 0.0)
    munich = RequestFilters(country="de", city="munich")
    assert _why(eng, "r", filters=munich, max_gb=IPSX) == "no_offer"
    monkeypatch.setattr(engine_module, "UNMATCHED_SCAN", 4)
    assert _why(eng, "r2", filters=munich, max_gb=IPSX) == "above_price"
