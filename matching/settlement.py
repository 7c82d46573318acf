"""Meter reconciliation and settlement arithmetic for one deal, in integer base units. No I/O.

**Two meters.** The gateway and the provider's agent each count every byte of a deal. They never
agree to the byte: TLS records and TCP segments are framed differently on the two legs, retransmits
are seen on one side only, and when a side is cut mid-stream the bytes in flight are counted by one
meter and not the other. :func:`reconcile` therefore accepts a difference up to a *tolerance*, the
larger of

- a relative part (``relative_bps``, default 100 bp = 1 %) of the larger count, which scales with the
  framing overhead of big transfers, and
- an absolute part (``absolute_bytes``, default 64 KiB), because on a small deal a single cut stream
  leaves up to a socket buffer of in-flight bytes on one side, which 1 % of a few kilobytes cannot
  absorb.

Within the tolerance the outcome is ``match`` and the billable byte count is the gateway's (the
count the requester's usage records show). Beyond it the outcome is ``mismatch`` and the deal is
disputed.

**Dispute rule.** A dispute resolved automatically bills :func:`automatic_resolution`: the *lower*
of the two counts. The requester never pays for bytes the provider cannot show it carried, and the
provider is not paid for bytes its own agent did not count. An operator may override that with an
explicit billable byte count (the ``dispute_resolved`` event of ``matching.deals`` carries it).

**Settlement.** :func:`settle` turns billable bytes and seconds into a :class:`Settlement`::

    charge     = min(ceil(price_per_gb * bytes / 10**9) + ceil(price_per_hour * seconds / 3600), reserve)
    commission = charge * commission_bps // 10_000
    payout     = charge - commission
    released   = reserve - charge

Both roundings favour the provider, by at most one base unit (10**-18 IPSX) each: the charge rounds
*up*, so any usage at a non-zero price costs at least one base unit and traffic cannot be made free
by splitting it over many tiny deals; the commission rounds *down*, so the platform never takes more
than its stated rate. The charge never exceeds the reserve (``Settlement.capped`` says when the cap
bit): nothing is taken beyond what the requester locked for the deal.

:func:`ledger_legs` lists the double-entry legs that carry a settlement out, as data, and
:func:`hold_payouts` the same as payouts of a ``billing.holds`` hold; writing them is ``billing``'s
job.

**Reseller markup.** A white-label reseller's sub-user pays, on top of the charge (the provider's
price, the commission included), the reseller's markup, a rate in basis points of the charge
(:func:`markup`)::

    due     = charge * markup_bps // 10_000
    charged = min(due, available)

It rounds *down*, like the commission: a reseller never takes more than its stated rate. It is
charged after the hold is resolved, from the sub-user's available balance (the released part of its
reserve included), in the settlement's transaction; what the balance cannot cover is a
``shortfall``, recorded, never an overdraft. ``billing.reseller_terms.charge_markup_in`` posts it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from billing.ledger import MAX_AMOUNT, Amount, Leg
from matching.deal_errors import InvalidSettlementInput

BYTES_PER_GB = 1_000_000_000
SECONDS_PER_HOUR = 3600
BPS = 10_000  # basis points in 100 %
KIB = 1024
MAX_BYTES = 2**63 - 1  # BIGINT, as in billing.usage


def _check_int(field: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidSettlementInput(field, value, "not an int")
    if value < 0:
        raise InvalidSettlementInput(field, value, "negative")
    if value > limit:
        raise InvalidSettlementInput(field, value, f"above {limit}")


class MeterOutcome(enum.StrEnum):
    """Whether the two meters of a deal agree within the tolerance."""

    MATCH = "match"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far the gateway's and the agent's counts may differ and still match.

    The allowed difference is ``max(larger * relative_bps // 10_000, absolute_bytes)``, inclusive.
    Raises ``InvalidSettlementInput`` for a negative part or ``relative_bps`` above 10 000.
    """

    relative_bps: int = 100  # 1 %
    absolute_bytes: int = 64 * KIB

    def __post_init__(self) -> None:
        _check_int("relative_bps", self.relative_bps, BPS)
        _check_int("absolute_bytes", self.absolute_bytes, MAX_BYTES)

    def allowed(self, gateway_bytes: int, agent_bytes: int) -> int:
        """The largest difference between the two counts that still matches."""
        larger = max(gateway_bytes, agent_bytes)
        return max(larger * self.relative_bps // BPS, self.absolute_bytes)


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The two meters of a deal compared.

    ``billable_bytes`` is the gateway's count on a match and ``None`` on a mismatch (a dispute
    decides it). ``allowed_difference`` is the tolerance that was applied, in bytes.
    """

    gateway_bytes: int
    agent_bytes: int
    allowed_difference: int
    outcome: MeterOutcome

    @property
    def difference(self) -> int:
        """``|gateway_bytes - agent_bytes|``."""
        return abs(self.gateway_bytes - self.agent_bytes)

    @property
    def billable_bytes(self) -> int | None:
        """The gateway's count when the meters match, else ``None``."""
        return self.gateway_bytes if self.outcome is MeterOutcome.MATCH else None


def reconcile(
    gateway_bytes: int, agent_bytes: int, tolerance: Tolerance = DEFAULT_TOLERANCE
) -> Reconciliation:
    """Compare the gateway's and the agent's byte counts of one deal.

    Returns a ``match`` when ``|gateway_bytes - agent_bytes| <= tolerance.allowed(...)``, else a
    ``mismatch``. Raises ``InvalidSettlementInput`` for a count that is not an int in
    ``[0, MAX_BYTES]``.
    """
    _check_int("gateway_bytes", gateway_bytes, MAX_BYTES)
    _check_int("agent_bytes", agent_bytes, MAX_BYTES)
    allowed = tolerance.allowed(gateway_bytes, agent_bytes)
    within = abs(gateway_bytes - agent_bytes) <= allowed
    outcome = MeterOutcome.MATCH if within else MeterOutcome.MISMATCH
    return Reconciliation(gateway_bytes, agent_bytes, allowed, outcome)


def automatic_resolution(reconciliation: Reconciliation) -> int:
    """The billable bytes of a dispute decided by the automatic rule: the lower of the two counts."""
    return min(reconciliation.gateway_bytes, reconciliation.agent_bytes)


class DealTerms(Protocol):
    """What settlement reads from a deal (``matching.deals.Deal`` has all of it)."""

    @property
    def deal_id(self) -> str: ...
    @property
    def requester(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def price_per_gb(self) -> Amount: ...
    @property
    def price_per_hour(self) -> Amount: ...
    @property
    def reserve(self) -> Amount: ...
    @property
    def duration_s(self) -> int: ...
    @property
    def activated_at(self) -> int | None: ...
    @property
    def ended_at(self) -> int | None: ...


def billable_seconds(deal: DealTerms) -> int:
    """Seconds to bill for ``deal``: from ``activated_at`` to ``ended_at``, capped at ``duration_s``.

    0 for a deal that never became active (cancelled or expired). Raises ``InvalidSettlementInput``
    when the deal was activated but has not ended yet, or ended before it was activated.
    """
    if deal.activated_at is None:
        return 0
    if deal.ended_at is None:
        raise InvalidSettlementInput("ended_at", None, "an active deal has no billable time yet")
    elapsed = deal.ended_at - deal.activated_at
    if elapsed < 0:
        raise InvalidSettlementInput("ended_at", deal.ended_at, "before activated_at")
    return min(elapsed, deal.duration_s)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a deal costs, who gets what, and what goes back; every amount in base units.

    Invariants: ``charge + released == reserve``, ``commission + payout == charge``, every amount
    ``>= 0``; ``charge == min(traffic_charge + time_charge, reserve)`` and ``capped`` is true
    exactly when the minimum was the reserve.
    """

    deal_id: str
    requester: str
    provider: str
    billable_bytes: int
    billable_seconds: int
    price_per_gb: Amount
    price_per_hour: Amount
    traffic_charge: Amount  # ceil(price_per_gb * bytes / 10**9), before the cap
    time_charge: Amount  # ceil(price_per_hour * seconds / 3600), before the cap
    reserve: Amount
    charge: Amount
    capped: bool
    commission_bps: int
    commission: Amount
    payout: Amount
    released: Amount


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def settle(deal: DealTerms, billable_bytes: int, billable_seconds: int, commission_bps: int) -> Settlement:
    """Price ``deal`` for ``billable_bytes`` and ``billable_seconds`` and split the charge.

    See the module docstring for the formulas and their rounding. Raises ``InvalidSettlementInput``
    when a count, price, reserve or rate is not an int, is negative, or is absurd: bytes beyond
    ``MAX_BYTES``, seconds beyond the deal's ``duration_s``, amounts beyond ``MAX_AMOUNT``,
    ``commission_bps`` beyond 10 000.
    """
    _check_int("billable_bytes", billable_bytes, MAX_BYTES)
    _check_int("billable_seconds", billable_seconds, deal.duration_s)
    _check_int("commission_bps", commission_bps, BPS)
    for name in ("price_per_gb", "price_per_hour", "reserve"):
        _check_int(name, getattr(deal, name), MAX_AMOUNT)
    traffic = _ceil_div(deal.price_per_gb * billable_bytes, BYTES_PER_GB)
    timed = _ceil_div(deal.price_per_hour * billable_seconds, SECONDS_PER_HOUR)
    charge = min(traffic + timed, deal.reserve)
    commission = charge * commission_bps // BPS
    return Settlement(
        deal_id=deal.deal_id,
        requester=deal.requester,
        provider=deal.provider,
        billable_bytes=billable_bytes,
        billable_seconds=billable_seconds,
        price_per_gb=deal.price_per_gb,
        price_per_hour=deal.price_per_hour,
        traffic_charge=Amount(traffic),
        time_charge=Amount(timed),
        reserve=deal.reserve,
        charge=Amount(charge),
        capped=traffic + timed > deal.reserve,
        commission_bps=commission_bps,
        commission=Amount(commission),
        payout=Amount(charge - commission),
        released=Amount(deal.reserve - charge),
    )


@dataclass(frozen=True, slots=True)
class SettlementAccounts:
    """Where a settlement's money moves: ledger account names, supplied by ``billing``.

    ``reserve``, ``available`` and ``payout`` map a party's name (the deal's requester or provider)
    to a ledger account; ``commission`` is the operator's commission account. With
    ``billing.holds`` that is ``hold_account(requester_account(name))``, ``requester_account``,
    ``provider_account`` and ``billing.ledger.COMMISSION``.
    """

    reserve: Callable[[str], str]  # requester -> the account its reserve for the deal sits in
    available: Callable[[str], str]  # requester -> its available balance
    payout: Callable[[str], str]  # provider -> the account its earnings go to
    commission: str


@dataclass(frozen=True, slots=True)
class LedgerLeg:
    """One double-entry leg: ``amount`` from ``debit`` to ``credit``, of ``kind``."""

    debit: str
    credit: str
    amount: Amount
    kind: str

    @property
    def leg(self) -> Leg:
        """The same leg as ``billing.ledger`` posts it."""
        return Leg(self.debit, self.credit, self.amount)


MAX_MARKUP_BPS = 100_000  # a reseller's markup is at most 1000 % of the charge


@dataclass(frozen=True, slots=True)
class Markup:
    """A reseller's markup on one settled charge, in base units.

    Invariants: ``due == charge * markup_bps // 10_000``, ``charged + shortfall == due``,
    ``0 <= charged <= available``.
    """

    charge: Amount
    markup_bps: int
    due: Amount
    charged: Amount  # what the sub-user's available balance covered, moved to the reseller

    @property
    def shortfall(self) -> Amount:
        """What the sub-user's balance could not cover (the reseller goes without it)."""
        return Amount(self.due - self.charged)


def markup(charge: Amount, markup_bps: int, available: int) -> Markup:
    """The markup of ``markup_bps`` on ``charge``, charged up to ``available``.

    See the module docstring. Raises ``InvalidSettlementInput`` for a value that is not an int,
    is negative, or is beyond ``MAX_AMOUNT`` (amounts) or ``MAX_MARKUP_BPS``.
    """
    _check_int("charge", charge, MAX_AMOUNT)
    _check_int("markup_bps", markup_bps, MAX_MARKUP_BPS)
    _check_int("available", available, MAX_AMOUNT)
    due = charge * markup_bps // BPS
    return Markup(Amount(charge), markup_bps, Amount(due), Amount(min(due, available)))


def covered_charge(balance: int, markup_bps: int) -> int:
    """The largest charge ``balance`` pays together with its markup of ``markup_bps`` (the
    inverse of :func:`markup`, which rounds down): ``c`` with ``c + c * markup_bps // 10_000 <=
    balance``, i.e. ``c * (10_000 + markup_bps) < (balance + 1) * 10_000``."""
    return ((balance + 1) * BPS - 1) // (BPS + markup_bps)


KIND_PAYOUT = "deal_payout"
KIND_COMMISSION = "deal_commission"
KIND_RELEASE = "deal_release"
KIND_MARKUP = "deal_markup"  # a sub-user's markup to its reseller (``billing.reseller_terms``)


def ledger_legs(settlement: Settlement, accounts: SettlementAccounts) -> list[LedgerLeg]:
    """The legs that carry ``settlement`` out: payout, then commission, then release.

    All three leave the requester's reserve account: to the provider (``payout``), to the
    operator (``commission``), and back to the requester's available balance (``released``).
    Together they move exactly ``settlement.reserve`` and form one balanced movement, to be posted
    at once under one reference per deal so a retried settlement moves nothing twice. Legs of zero
    are left out: a deal with no usage (cancelled, expired, or simply unused) has a single release
    leg, a deal whose charge took the whole reserve has no release leg, and a deal with a zero
    reserve has no legs at all.
    """
    reserve = accounts.reserve(settlement.requester)
    planned = (
        (accounts.payout(settlement.provider), settlement.payout, KIND_PAYOUT),
        (accounts.commission, settlement.commission, KIND_COMMISSION),
        (accounts.available(settlement.requester), settlement.released, KIND_RELEASE),
    )
    return [LedgerLeg(reserve, credit, amount, kind) for credit, amount, kind in planned if amount > 0]


def hold_payouts(settlement: Settlement, accounts: SettlementAccounts) -> list[tuple[str, Amount]]:
    """The ``(credit_account, amount)`` payouts of ``settlement`` for ``billing.holds.post``.

    The release is left out (``post`` returns the rest of the hold by itself). An empty list means
    nothing was charged: resolve the hold with ``billing.holds.void`` instead.
    """
    return [(leg.credit, leg.amount) for leg in ledger_legs(settlement, accounts) if leg.kind != KIND_RELEASE]
