"""Meter reconciliation, settlement arithmetic to the base unit, and the ledger legs that follow."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.holds import hold_account
from billing.ledger import COMMISSION, Amount, Leg, provider_account, requester_account
from matching.deal_errors import InvalidSettlementInput, SettlementError
from matching.deals import Deal, propose
from matching.orders import cost_estimate
from matching.settlement import (
    DEFAULT_TOLERANCE,
    KIND_COMMISSION,
    KIND_PAYOUT,
    KIND_RELEASE,
    MAX_BYTES,
    LedgerLeg,
    MeterOutcome,
    Reconciliation,
    Settlement,
    SettlementAccounts,
    Tolerance,
    automatic_resolution,
    billable_seconds,
    hold_payouts,
    ledger_legs,
    reconcile,
    settle,
)

IPSX = 10**18
GB = 10**9
T0 = 1_700_000_000
ACCOUNTS = SettlementAccounts(
    reserve=lambda name: hold_account(requester_account(name)),
    available=requester_account,
    payout=provider_account,
    commission=COMMISSION,
)


def terms(per_gb: int = 0, per_hour: int = 0, reserve: int = 10 * IPSX, duration_s: int = 3600) -> Deal:
    return propose(
        deal_id="d7",
        requester="alice",
        provider="bob",
        exit_id="exit-1",
        price_per_gb=Amount(per_gb),
        price_per_hour=Amount(per_hour),
        reserve=Amount(reserve),
        duration_s=duration_s,
        traffic_bytes=0,
        created_at=T0,
    )


# -- settle: exact examples ------------------------------------------------------------------------


def test_settle_per_gb_only() -> None:
    result = settle(terms(per_gb=2 * IPSX), 1_500_000_000, 0, commission_bps=1000)
    assert result == Settlement(
        deal_id="d7",
        requester="alice",
        provider="bob",
        billable_bytes=1_500_000_000,
        billable_seconds=0,
        price_per_gb=Amount(2 * IPSX),
        price_per_hour=Amount(0),
        traffic_charge=Amount(3 * IPSX),
        time_charge=Amount(0),
        reserve=Amount(10 * IPSX),
        charge=Amount(3 * IPSX),
        capped=False,
        commission_bps=1000,
        commission=Amount(3 * IPSX // 10),
        payout=Amount(27 * IPSX // 10),
        released=Amount(7 * IPSX),
    )
    assert all(type(v) is int for v in (result.charge, result.commission, result.payout, result.released))


def test_settle_per_hour_only() -> None:
    result = settle(terms(per_hour=36 * IPSX // 10), 10 * GB, 1800, commission_bps=250)
    assert (result.traffic_charge, result.time_charge) == (0, 18 * IPSX // 10)
    assert (result.charge, result.commission, result.payout) == (18 * IPSX // 10, 45 * 10**15, 1755 * 10**15)
    assert result.released == 10 * IPSX - 18 * IPSX // 10


def test_settle_both_prices() -> None:
    result = settle(terms(per_gb=IPSX, per_hour=36 * IPSX // 10), 500_000_000, 60, commission_bps=0)
    assert (result.traffic_charge, result.time_charge) == (5 * 10**17, 6 * 10**16)
    assert (result.charge, result.commission, result.payout) == (56 * 10**16, 0, 56 * 10**16)


@pytest.mark.parametrize(
    ("per_gb", "billable", "charge"),
    [
        (1, 1, 1),  # one byte at one base unit per GB still costs one base unit
        (1, GB, 1),
        (1, GB + 1, 2),
        (3, 333_333_333, 1),  # 0.999999999 rounds up to 1
        (3, 333_333_334, 2),  # 1.000000002 rounds up to 2
        (7, 0, 0),
        (0, 10**12, 0),
    ],
)
def test_settle_traffic_rounds_up(per_gb: int, billable: int, charge: int) -> None:
    result = settle(terms(per_gb=per_gb), billable, 0, commission_bps=0)
    assert result.traffic_charge == result.charge == charge


@pytest.mark.parametrize(
    ("per_hour", "seconds", "charge"),
    [(1, 1, 1), (3600, 1, 1), (3601, 1, 2), (7200, 1800, 3600), (1, 3600, 1), (5, 0, 0)],
)
def test_settle_time_rounds_up(per_hour: int, seconds: int, charge: int) -> None:
    result = settle(terms(per_hour=per_hour), 0, seconds, commission_bps=0)
    assert result.time_charge == result.charge == charge


@pytest.mark.parametrize(
    ("charge", "bps", "commission", "payout"),
    [
        (1, 9999, 0, 1),  # rounded down: the platform never takes more than its rate
        (3, 5000, 1, 2),
        (10_000, 1, 1, 9_999),
        (9_999, 1, 0, 9_999),
        (100, 0, 0, 100),
        (100, 10_000, 100, 0),
    ],
)
def test_settle_commission_rounds_down(charge: int, bps: int, commission: int, payout: int) -> None:
    result = settle(terms(per_gb=charge), GB, 0, commission_bps=bps)
    assert (result.charge, result.commission, result.payout) == (charge, commission, payout)


def test_settle_caps_at_reserve() -> None:
    result = settle(terms(per_gb=150, reserve=100), GB, 0, commission_bps=1000)
    assert (result.traffic_charge, result.charge, result.capped) == (150, 100, True)
    assert (result.commission, result.payout, result.released) == (10, 90, 0)
    exact = settle(terms(per_gb=100, reserve=100), GB, 0, commission_bps=1000)
    assert (exact.charge, exact.capped, exact.released) == (100, False, 0)


def test_settle_cap_counts_both_parts() -> None:
    result = settle(terms(per_gb=60, per_hour=3600 * 50, reserve=100), GB, 1, commission_bps=0)
    assert (result.traffic_charge, result.time_charge, result.charge, result.capped) == (60, 50, 100, True)


def test_settle_zero_usage() -> None:
    result = settle(terms(per_gb=IPSX, per_hour=IPSX), 0, 0, commission_bps=500)
    assert (result.charge, result.commission, result.payout, result.released) == (0, 0, 0, 10 * IPSX)
    assert result.capped is False


# -- settle: refused inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("billable", "seconds", "bps", "field"),
    [
        (-1, 0, 0, "billable_bytes"),
        (True, 0, 0, "billable_bytes"),
        (1.0, 0, 0, "billable_bytes"),
        (MAX_BYTES + 1, 0, 0, "billable_bytes"),
        (0, -1, 0, "billable_seconds"),
        (0, 3601, 0, "billable_seconds"),  # more than the deal's duration
        (0, 0, -1, "commission_bps"),
        (0, 0, 10_001, "commission_bps"),
    ],
)
def test_settle_refuses_absurd_input(billable: int, seconds: int, bps: int, field: str) -> None:
    with pytest.raises(InvalidSettlementInput) as info:
        settle(terms(per_gb=1), billable, seconds, bps)
    assert info.value.field == field
    assert info.value.value in (billable, seconds, bps)
    assert isinstance(info.value, SettlementError)
    assert isinstance(info.value, ValueError)


ONE, TEN = Amount(1), Amount(10)


@dataclass(frozen=True)
class RawTerms:
    """Terms that skipped ``Deal``'s validation, as a buggy caller could hand them over."""

    deal_id: str = "raw"
    requester: str = "alice"
    provider: str = "bob"
    price_per_gb: Amount = ONE
    price_per_hour: Amount = ONE
    reserve: Amount = TEN
    duration_s: int = 60
    activated_at: int | None = None
    ended_at: int | None = None


@pytest.mark.parametrize("field", ["price_per_gb", "price_per_hour", "reserve"])
def test_settle_refuses_negative_terms(field: str) -> None:
    raw = RawTerms(**{field: Amount(-1)})  # type: ignore[arg-type]
    with pytest.raises(InvalidSettlementInput) as info:
        settle(raw, 0, 0, 0)
    assert (info.value.field, info.value.value, info.value.reason) == (field, -1, "negative")


# -- billable seconds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("activated_at", "ended_at", "seconds"),
    [
        (None, None, 0),
        (None, T0 + 9, 0),
        (T0, T0, 0),
        (T0, T0 + 45, 45),
        (T0, T0 + 60, 60),
        (T0, T0 + 999, 60),
    ],
)
def test_billable_seconds(activated_at: int | None, ended_at: int | None, seconds: int) -> None:
    assert billable_seconds(RawTerms(activated_at=activated_at, ended_at=ended_at)) == seconds


@pytest.mark.parametrize(("activated_at", "ended_at"), [(T0, None), (T0, T0 - 1)])
def test_billable_seconds_refuses_unended_deal(activated_at: int, ended_at: int | None) -> None:
    with pytest.raises(InvalidSettlementInput) as info:
        billable_seconds(RawTerms(activated_at=activated_at, ended_at=ended_at))
    assert info.value.field == "ended_at"


# -- settle: properties ----------------------------------------------------------------------------

PRICES = st.integers(0, 10**24)
RESERVES = st.integers(0, 10**27)
BPS = st.integers(0, 10_000)


@settings(max_examples=300, deadline=None)
@given(PRICES, PRICES, RESERVES, st.integers(0, 10**14), st.integers(0, 3600), BPS)
def test_settle_invariants(
    per_gb: int, per_hour: int, reserve: int, used: int, seconds: int, bps: int
) -> None:
    result = settle(terms(per_gb, per_hour, reserve), used, seconds, bps)
    assert result.charge + result.released == reserve
    assert result.commission + result.payout == result.charge
    assert min(result.charge, result.commission, result.payout, result.released) >= 0
    assert result.charge == min(result.traffic_charge + result.time_charge, reserve)
    assert result.capped == (result.traffic_charge + result.time_charge > reserve)
    assert result.commission * 10_000 <= result.charge * bps < (result.commission + 1) * 10_000
    legs = ledger_legs(result, ACCOUNTS)
    assert sum(leg.amount for leg in legs) == reserve
    assert all(leg.amount > 0 and leg.debit == "hold:requester:alice" for leg in legs)


@settings(max_examples=300, deadline=None)
@given(PRICES, PRICES, RESERVES, st.integers(0, 10**14), st.integers(0, 10**14), st.integers(0, 3600), BPS)
def test_settle_monotone_in_bytes(
    per_gb: int, per_hour: int, reserve: int, a: int, b: int, seconds: int, bps: int
) -> None:
    deal = terms(per_gb, per_hour, reserve)
    low, high = settle(deal, min(a, b), seconds, bps), settle(deal, max(a, b), seconds, bps)
    assert low.charge <= high.charge
    assert low.commission <= high.commission
    assert low.payout <= high.payout
    assert low.released >= high.released


@settings(max_examples=200, deadline=None)
@given(PRICES, PRICES, st.integers(0, 10**14), st.integers(0, 10**14), st.integers(5, 3600), st.data())
def test_reserve_from_cost_estimate_is_never_capped_within_allowance(
    per_gb: int, per_hour: int, allowance: int, used: int, duration: int, data: st.DataObject
) -> None:
    """The reserve the engine takes (``cost_estimate``) covers any use within the deal's terms."""
    reserve = cost_estimate(per_gb, per_hour, allowance, duration)
    seconds = data.draw(st.integers(0, duration))
    result = settle(terms(per_gb, per_hour, reserve, duration), min(used, allowance), seconds, 100)
    assert not result.capped
    assert result.charge == result.traffic_charge + result.time_charge


@settings(max_examples=200, deadline=None)
@given(PRICES, RESERVES, st.integers(0, 3600), st.integers(0, 3600), BPS)
def test_settle_monotone_in_seconds(per_hour: int, reserve: int, a: int, b: int, bps: int) -> None:
    deal = terms(0, per_hour, reserve)
    low, high = settle(deal, 0, min(a, b), bps), settle(deal, 0, max(a, b), bps)
    assert low.charge <= high.charge
    assert low.payout <= high.payout
    assert low.released >= high.released


# -- ledger legs -----------------------------------------------------------------------------------


def test_ledger_legs_call() -> None:
    result = settle(terms(per_gb=2 * IPSX), 1_500_000_000, 0, commission_bps=1000)
    legs = ledger_legs(result, ACCOUNTS)
    assert legs == [
        LedgerLeg("hold:requester:alice", "provider:bob", Amount(27 * IPSX // 10), KIND_PAYOUT),
        LedgerLeg("hold:requester:alice", "operator:commission", Amount(3 * IPSX // 10), KIND_COMMISSION),
        LedgerLeg("hold:requester:alice", "requester:alice", Amount(7 * IPSX), KIND_RELEASE),
    ]
    assert legs[0].leg == Leg("hold:requester:alice", "provider:bob", Amount(27 * IPSX // 10))
    assert hold_payouts(result, ACCOUNTS) == [
        ("provider:bob", 27 * IPSX // 10),
        ("operator:commission", 3 * IPSX // 10),
    ]


def test_ledger_legs_leave_out_zero_legs() -> None:
    unused = settle(terms(per_gb=IPSX), 0, 0, commission_bps=500)
    assert ledger_legs(unused, ACCOUNTS) == [
        LedgerLeg("hold:requester:alice", "requester:alice", Amount(10 * IPSX), KIND_RELEASE)
    ]
    assert hold_payouts(unused, ACCOUNTS) == []
    no_commission = settle(terms(per_gb=150, reserve=100), GB, 0, commission_bps=0)
    assert [(leg.kind, leg.amount) for leg in ledger_legs(no_commission, ACCOUNTS)] == [(KIND_PAYOUT, 100)]
    nothing = settle(terms(per_gb=1, reserve=0), GB, 0, commission_bps=500)
    assert ledger_legs(nothing, ACCOUNTS) == []


# -- reconcile -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gateway", "agent", "allowed", "outcome"),
    [
        # absolute part dominates: 1 % of 1 MB is 10 000 bytes, below 64 KiB
        (1_000_000, 1_000_000 - 65_536, 65_536, MeterOutcome.MATCH),
        (1_000_000, 1_000_000 - 65_537, 65_536, MeterOutcome.MISMATCH),
        (1_000_000 - 65_536, 1_000_000, 65_536, MeterOutcome.MATCH),
        (0, 0, 65_536, MeterOutcome.MATCH),
        (0, 65_536, 65_536, MeterOutcome.MATCH),
        (0, 65_537, 65_536, MeterOutcome.MISMATCH),
        # relative part dominates: 1 % of 100 MB is 1 000 000 bytes
        (100_000_000, 99_000_000, 1_000_000, MeterOutcome.MATCH),
        (100_000_000, 98_999_999, 1_000_000, MeterOutcome.MISMATCH),
        (99_000_000, 100_000_000, 1_000_000, MeterOutcome.MATCH),
        (98_999_999, 100_000_000, 1_000_000, MeterOutcome.MISMATCH),
        # where they cross: 1 % of 6 553 600 is exactly 64 KiB; the relative part rounds down
        (6_553_600, 6_553_600 - 65_536, 65_536, MeterOutcome.MATCH),
        (6_553_699, 6_553_699 - 65_537, 65_536, MeterOutcome.MISMATCH),
        (6_553_700, 6_553_700 - 65_537, 65_537, MeterOutcome.MATCH),
        (6_553_700, 6_553_700 - 65_538, 65_537, MeterOutcome.MISMATCH),
    ],
)
def test_reconcile_call(gateway: int, agent: int, allowed: int, outcome: MeterOutcome) -> None:
    rec = reconcile(gateway, agent)
    assert rec == Reconciliation(gateway, agent, allowed, outcome)
    assert rec.difference == abs(gateway - agent)
    assert rec.billable_bytes == (gateway if outcome is MeterOutcome.MATCH else None)


def test_reconcile_custom_tolerance() -> None:
    exact = Tolerance(relative_bps=0, absolute_bytes=0)
    assert reconcile(5, 5, exact).outcome is MeterOutcome.MATCH
    assert reconcile(5, 6, exact).outcome is MeterOutcome.MISMATCH
    loose = Tolerance(relative_bps=10_000, absolute_bytes=0)
    assert reconcile(0, MAX_BYTES, loose).outcome is MeterOutcome.MATCH
    assert Tolerance(relative_bps=100, absolute_bytes=64 * 1024) == DEFAULT_TOLERANCE


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: reconcile(-1, 0), "gateway_bytes"),
        (lambda: reconcile(0, MAX_BYTES + 1), "agent_bytes"),
        (lambda: reconcile(0, False), "agent_bytes"),
        (lambda: Tolerance(relative_bps=10_001), "relative_bps"),
        (lambda: Tolerance(absolute_bytes=-1), "absolute_bytes"),
    ],
)
def test_reconcile_refuses_bad_input(make: object, field: str) -> None:
    with pytest.raises(InvalidSettlementInput) as info:
        make()  # type: ignore[operator]
    assert info.value.field == field


def test_automatic_resolution_bills_the_lower_count() -> None:
    assert automatic_resolution(reconcile(10_000_000, 4_000_000)) == 4_000_000
    assert automatic_resolution(reconcile(4_000_000, 10_000_000)) == 4_000_000


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**13), st.integers(0, 10**13), BPS, st.integers(0, 10**8))
def test_reconcile_properties(gateway: int, agent: int, bps: int, absolute: int) -> None:
    tolerance = Tolerance(relative_bps=bps, absolute_bytes=absolute)
    rec, swapped = reconcile(gateway, agent, tolerance), reconcile(agent, gateway, tolerance)
    assert (rec.outcome, rec.allowed_difference) == (swapped.outcome, swapped.allowed_difference)
    assert rec.allowed_difference >= absolute
    assert (rec.outcome is MeterOutcome.MATCH) == (rec.difference <= rec.allowed_difference)
    assert automatic_resolution(rec) == min(gateway, agent)
    assert reconcile(gateway, gateway, tolerance).outcome is MeterOutcome.MATCH
