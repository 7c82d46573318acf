"""The deal protocol: one deal's lifecycle as one table of transitions and one function that applies it.

Pure: no I/O and no clock. The edge that owns the deal book feeds :func:`apply` one
:class:`Event` at a time per deal (in order, with times it read from its own clock), stores the
returned :class:`Deal` and the :class:`TransitionRecord`, and acts on the new state (arms or cancels
timers, starts reconciliation, writes the ledger legs of ``matching.settlement``).
Times are whole unix seconds (``int``): time is billed by the second, and integer times keep
billable seconds exact (the edge floors its clock).

States::

    proposed --(provider ready/serving + requester accepted, either order)--> active
    proposed --ready_timeout | requester_cancel | provider_cancel--> cancelled      (terminal)
    proposed --time_frame_ended--> expired                                          (terminal)
    active   --time_frame_ended | allowance_used | provider stopped--> completed
    active | completed --requester complaint--> disputed
    completed --meters_reconciled: match--> completed ; mismatch--> disputed
    disputed --dispute_resolved (operator or automatic rule)--> resolved
    completed (meters reconciled) | resolved --settle--> settled                    (terminal)

``proposed`` remembers which side it has heard from in ``Deal.provider_ready`` and
``Deal.requester_accepted``; a spot deal or API-key traffic is created with
``requester_accepted=True``. A provider ``stopped`` before activation clears ``provider_ready``
(its agent went away), and the gateway may report ``stopped`` for an agent whose tunnel dropped. A
complaint during ``active`` ends the service: the deal is judged on what was carried until then.
``resolved`` is a state of its own so a decided dispute cannot be disputed again.

**Repeats.** Agents re-send their status after reconnecting, so a status report that restates what
the deal already knows is accepted and recorded with ``noop=True``, never an error:
``ready``/``serving``/``accepted`` while active (or again while proposed), ``ok`` while active or
completed, ``complaint`` while disputed, and ``stopped`` once the deal no longer serves but is not
closed (completed, disputed, resolved). Closed deals (cancelled, expired, settled) refuse every
event, as does everything else missing from :data:`TRANSITIONS`, with ``InvalidTransition``. Timers
are not repeats: a timer that fires after its state was left is refused, and the edge drops it.

**Money.** Cancelled and expired deals were never billable; their reserve goes back in full
(``matching.settlement.settle`` with zero usage gives the one release leg). Settling needs the
billable bytes on the deal: from a matching reconciliation, or from the dispute's resolution.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from billing.ledger import MAX_AMOUNT, Amount
from matching.deal_errors import InvalidDeal, InvalidEvent, InvalidTransition, WrongActor
from matching.orders import MAX_DURATION_S, MIN_DURATION_S
from matching.settlement import MAX_BYTES, MeterOutcome, Reconciliation

_TEXT_MAX_LEN = 512
_MAX_INT = 2**63 - 1  # BIGINT: times, like byte counts, fit a PostgreSQL column


class State(enum.StrEnum):
    PROPOSED = "proposed"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DISPUTED = "disputed"
    RESOLVED = "resolved"
    SETTLED = "settled"


class EventKind(enum.StrEnum):
    READY = "ready"
    SERVING = "serving"
    STOPPED = "stopped"
    ACCEPTED = "accepted"
    OK = "ok"
    COMPLAINT = "complaint"
    READY_TIMEOUT = "ready_timeout"
    TIME_FRAME_ENDED = "time_frame_ended"
    ALLOWANCE_USED = "allowance_used"  # the deal carried its traffic allowance
    REQUESTER_CANCEL = "requester_cancel"
    PROVIDER_CANCEL = "provider_cancel"
    METERS_RECONCILED = "meters_reconciled"
    DISPUTE_RESOLVED = "dispute_resolved"
    SETTLE = "settle"


class Actor(enum.StrEnum):
    PROVIDER = "provider"  # the provider's agent
    REQUESTER = "requester"
    GATEWAY = "gateway"
    SYSTEM = "system"  # timers and workers
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a deal, caused by ``actor``, at unix second ``at``.

    ``reconciliation`` is carried by ``meters_reconciled`` only and ``billable_bytes`` (the
    decision: the automatic rule's or an operator's) by ``dispute_resolved`` only. Raises
    ``InvalidEvent`` otherwise, or for a negative time or byte count.
    """

    kind: EventKind
    actor: Actor
    at: int
    reconciliation: Reconciliation | None = None
    billable_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EventKind):
            raise InvalidEvent("kind", "not an EventKind")
        if not isinstance(self.actor, Actor):
            raise InvalidEvent("actor", "not an Actor")
        _check_int(InvalidEvent, "at", self.at, 0, _MAX_INT)
        wants_reconciliation = self.kind is EventKind.METERS_RECONCILED
        if wants_reconciliation != isinstance(self.reconciliation, Reconciliation):
            reason = "required" if wants_reconciliation else "only meters_reconciled carries one"
            raise InvalidEvent("reconciliation", reason)
        if self.kind is EventKind.DISPUTE_RESOLVED:
            _check_int(InvalidEvent, "billable_bytes", self.billable_bytes, 0, MAX_BYTES)
        elif self.billable_bytes is not None:
            raise InvalidEvent("billable_bytes", "only a dispute resolution decides billable bytes")


@dataclass(frozen=True, slots=True)
class Deal:
    """One deal: its terms (both orders combined), its state and what the protocol learnt so far.

    Amounts are base units, times whole unix seconds, counts bytes; ``traffic_bytes`` is the
    traffic allowance the reserve was computed for (0 for a time-only deal). The meter fields are
    ``None`` until ``meters_reconciled``; ``billable_bytes`` is set by a matching reconciliation or
    by a dispute's resolution, and is what settlement bills. Raises ``InvalidDeal`` for a value no
    deal may have.
    """

    deal_id: str
    requester: str
    provider: str
    exit_id: str
    price_per_gb: Amount
    price_per_hour: Amount
    reserve: Amount
    duration_s: int
    traffic_bytes: int
    created_at: int
    state: State = State.PROPOSED
    provider_ready: bool = False
    requester_accepted: bool = False
    activated_at: int | None = None
    ended_at: int | None = None
    settled_at: int | None = None
    gateway_bytes: int | None = None
    agent_bytes: int | None = None
    billable_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("deal_id", "requester", "provider", "exit_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > _TEXT_MAX_LEN:
                raise InvalidDeal(name, f"must be a non-empty string of at most {_TEXT_MAX_LEN}")
        for name in ("price_per_gb", "price_per_hour", "reserve"):
            _check_int(InvalidDeal, name, getattr(self, name), 0, MAX_AMOUNT)
        _check_int(InvalidDeal, "duration_s", self.duration_s, MIN_DURATION_S, MAX_DURATION_S)
        _check_int(InvalidDeal, "traffic_bytes", self.traffic_bytes, 0, MAX_BYTES)
        if not isinstance(self.state, State):
            raise InvalidDeal("state", "not a State")
        _check_int(InvalidDeal, "created_at", self.created_at, 0, _MAX_INT)
        for name in ("activated_at", "ended_at", "settled_at"):
            if getattr(self, name) is not None:
                _check_int(InvalidDeal, name, getattr(self, name), self.created_at, _MAX_INT)
        for name in ("gateway_bytes", "agent_bytes", "billable_bytes"):
            if getattr(self, name) is not None:
                _check_int(InvalidDeal, name, getattr(self, name), 0, MAX_BYTES)

    @property
    def last_at(self) -> int:
        """The latest time the deal recorded; events may not come earlier."""
        times = (self.created_at, self.activated_at, self.ended_at, self.settled_at)
        return max(t for t in times if t is not None)


def propose(
    *,
    deal_id: str,
    requester: str,
    provider: str,
    exit_id: str,
    price_per_gb: Amount,
    price_per_hour: Amount,
    reserve: Amount,
    duration_s: int,
    traffic_bytes: int,
    created_at: int,
    accepted: bool = False,
) -> Deal:
    """A new deal in ``proposed``, its reserve already taken by the caller.

    ``accepted=True`` for spot deals and API-key traffic, which count as accepted by the requester
    when they are created. Raises ``InvalidDeal`` as :class:`Deal` does.
    """
    return Deal(
        deal_id=deal_id,
        requester=requester,
        provider=provider,
        exit_id=exit_id,
        price_per_gb=price_per_gb,
        price_per_hour=price_per_hour,
        reserve=reserve,
        duration_s=duration_s,
        traffic_bytes=traffic_bytes,
        created_at=created_at,
        requester_accepted=accepted,
    )


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """What one applied event did: who caused it, when, and from which state to which.

    ``detail`` is the table's short reason ("activated", "exit never ready", "meters mismatch"…);
    ``noop`` is true when the deal came out unchanged (a repeated status report).
    """

    deal_id: str
    from_state: State
    to_state: State
    event: EventKind
    actor: Actor
    at: int
    detail: str
    noop: bool


Guard = Callable[[Deal, Event], bool]
Effect = Callable[[Deal, Event], Deal]


def _meters_match(deal: Deal, event: Event) -> bool:
    return event.reconciliation is not None and event.reconciliation.outcome is MeterOutcome.MATCH


#: Predicates named by the table. ``requires`` guards see the deal before the transition's effects,
#: branch guards see it after them.
GUARDS: Mapping[str, Guard] = MappingProxyType(
    {
        "both_sides_ready": lambda deal, event: deal.provider_ready and deal.requester_accepted,
        "provider_ready": lambda deal, event: deal.provider_ready,
        "meters_pending": lambda deal, event: deal.gateway_bytes is None,
        "meters_reconciled": lambda deal, event: deal.billable_bytes is not None,
        "meters_match": _meters_match,
    }
)


def _record_meters(deal: Deal, event: Event) -> Deal:
    rec = event.reconciliation
    if rec is None:  # Event.__post_init__ makes this impossible for meters_reconciled
        raise InvalidEvent("reconciliation", "required")
    return replace(
        deal, gateway_bytes=rec.gateway_bytes, agent_bytes=rec.agent_bytes, billable_bytes=rec.billable_bytes
    )


#: Changes named by the table, applied in order.
EFFECTS: Mapping[str, Effect] = MappingProxyType(
    {
        "mark_provider_ready": lambda deal, event: replace(deal, provider_ready=True),
        "clear_provider_ready": lambda deal, event: replace(deal, provider_ready=False),
        "mark_requester_accepted": lambda deal, event: replace(deal, requester_accepted=True),
        "start": lambda deal, event: replace(deal, activated_at=event.at),
        "end": lambda deal, event: replace(deal, ended_at=event.at),
        "record_meters": _record_meters,
        "record_resolution": lambda deal, event: replace(deal, billable_bytes=event.billable_bytes),
        "close": lambda deal, event: replace(deal, settled_at=event.at),
    }
)


@dataclass(frozen=True, slots=True)
class Branch:
    """One outcome of a transition: go ``to`` with ``detail`` when ``guard`` holds (``None``: always)."""

    to: State
    detail: str
    guard: str | None = None
    effects: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Transition:
    """An allowed (state, event): who may cause it, what it requires, what it does, where it goes.

    ``requires`` failing refuses the event; otherwise ``effects`` run and the first ``branches``
    entry whose guard holds is taken. The last branch has no guard, so one always is.
    """

    actors: frozenset[Actor]
    branches: tuple[Branch, ...]
    requires: str | None = None
    effects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A malformed table is our bug, caught when this module is imported.
        if not self.actors or not self.branches or self.branches[-1].guard is not None:
            raise TypeError("a transition needs actors and must end with an unguarded branch")
        guards = {self.requires, *(b.guard for b in self.branches)} - {None}
        effects = {*self.effects, *(e for b in self.branches for e in b.effects)}
        if not guards <= GUARDS.keys() or not effects <= EFFECTS.keys():
            raise TypeError(f"unknown guard or effect in {guards | effects}")


def _go(
    to: State, detail: str, actors: frozenset[Actor], *effects: str, requires: str | None = None
) -> Transition:
    return Transition(actors, (Branch(to, detail, effects=effects),), requires=requires)


def _repeat(state: State, actors: frozenset[Actor]) -> Transition:
    return Transition(actors, (Branch(state, "repeat"),))


_S, _K = State, EventKind
_PROVIDER = frozenset({Actor.PROVIDER})
_PROVIDER_OR_GATEWAY = frozenset({Actor.PROVIDER, Actor.GATEWAY})  # the gateway sees a tunnel drop
_REQUESTER = frozenset({Actor.REQUESTER})
_SYSTEM = frozenset({Actor.SYSTEM})
_SYSTEM_OR_OPERATOR = frozenset({Actor.SYSTEM, Actor.OPERATOR})

_PROVIDER_READY = Transition(
    _PROVIDER,
    (
        Branch(_S.ACTIVE, "activated", guard="both_sides_ready", effects=("start",)),
        Branch(_S.PROPOSED, "provider ready, waiting for requester"),
    ),
    effects=("mark_provider_ready",),
)

#: Every allowed (state, event); anything missing is refused with ``InvalidTransition``.
TRANSITIONS: Mapping[tuple[State, EventKind], Transition] = MappingProxyType(
    {
        (_S.PROPOSED, _K.READY): _PROVIDER_READY,
        (_S.PROPOSED, _K.SERVING): _PROVIDER_READY,
        (_S.PROPOSED, _K.STOPPED): _go(
            _S.PROPOSED, "provider not ready", _PROVIDER_OR_GATEWAY, "clear_provider_ready"
        ),
        (_S.PROPOSED, _K.ACCEPTED): Transition(
            _REQUESTER,
            (
                Branch(_S.ACTIVE, "activated", guard="both_sides_ready", effects=("start",)),
                Branch(_S.PROPOSED, "requester accepted, waiting for provider"),
            ),
            effects=("mark_requester_accepted",),
        ),
        (_S.PROPOSED, _K.READY_TIMEOUT): Transition(
            _SYSTEM,
            (
                Branch(_S.CANCELLED, "requester never accepted", guard="provider_ready", effects=("end",)),
                Branch(_S.CANCELLED, "exit never ready", effects=("end",)),
            ),
        ),
        (_S.PROPOSED, _K.TIME_FRAME_ENDED): _go(
            _S.EXPIRED, "time frame ended before activation", _SYSTEM, "end"
        ),
        (_S.PROPOSED, _K.REQUESTER_CANCEL): _go(_S.CANCELLED, "cancelled by requester", _REQUESTER, "end"),
        (_S.PROPOSED, _K.PROVIDER_CANCEL): _go(_S.CANCELLED, "cancelled by provider", _PROVIDER, "end"),
        (_S.ACTIVE, _K.READY): _repeat(_S.ACTIVE, _PROVIDER),
        (_S.ACTIVE, _K.SERVING): _repeat(_S.ACTIVE, _PROVIDER),
        (_S.ACTIVE, _K.ACCEPTED): _repeat(_S.ACTIVE, _REQUESTER),
        (_S.ACTIVE, _K.OK): _repeat(_S.ACTIVE, _REQUESTER),
        (_S.ACTIVE, _K.STOPPED): _go(_S.COMPLETED, "provider stopped early", _PROVIDER_OR_GATEWAY, "end"),
        (_S.ACTIVE, _K.TIME_FRAME_ENDED): _go(_S.COMPLETED, "time frame ended", _SYSTEM, "end"),
        (_S.ACTIVE, _K.ALLOWANCE_USED): _go(_S.COMPLETED, "traffic allowance used", _SYSTEM, "end"),
        (_S.ACTIVE, _K.COMPLAINT): _go(_S.DISPUTED, "requester complaint", _REQUESTER, "end"),
        (_S.COMPLETED, _K.STOPPED): _repeat(_S.COMPLETED, _PROVIDER_OR_GATEWAY),
        (_S.COMPLETED, _K.OK): _repeat(_S.COMPLETED, _REQUESTER),
        (_S.COMPLETED, _K.COMPLAINT): _go(_S.DISPUTED, "requester complaint", _REQUESTER),
        (_S.COMPLETED, _K.METERS_RECONCILED): Transition(
            _SYSTEM,
            (
                Branch(_S.COMPLETED, "meters match", guard="meters_match"),
                Branch(_S.DISPUTED, "meters mismatch"),
            ),
            requires="meters_pending",
            effects=("record_meters",),
        ),
        (_S.COMPLETED, _K.SETTLE): _go(
            _S.SETTLED, "settled", _SYSTEM_OR_OPERATOR, "close", requires="meters_reconciled"
        ),
        (_S.DISPUTED, _K.STOPPED): _repeat(_S.DISPUTED, _PROVIDER_OR_GATEWAY),
        (_S.DISPUTED, _K.COMPLAINT): _repeat(_S.DISPUTED, _REQUESTER),
        (_S.DISPUTED, _K.METERS_RECONCILED): _go(
            _S.DISPUTED, "meters recorded", _SYSTEM, "record_meters", requires="meters_pending"
        ),
        (_S.DISPUTED, _K.DISPUTE_RESOLVED): _go(
            _S.RESOLVED, "dispute resolved", _SYSTEM_OR_OPERATOR, "record_resolution"
        ),
        (_S.RESOLVED, _K.STOPPED): _repeat(_S.RESOLVED, _PROVIDER_OR_GATEWAY),
        (_S.RESOLVED, _K.SETTLE): _go(_S.SETTLED, "settled", _SYSTEM_OR_OPERATOR, "close"),
    }
)

TERMINAL: frozenset[State] = frozenset(State) - {state for state, _ in TRANSITIONS}


def apply(deal: Deal, event: Event) -> tuple[Deal, TransitionRecord]:
    """Apply ``event`` to ``deal``; return the new deal and the record of the transition.

    Checks, in this order: ``InvalidTransition`` when (state, event) is not in :data:`TRANSITIONS`;
    ``WrongActor`` when ``event.actor`` may not cause it there; ``InvalidEvent`` when ``event.at``
    is earlier than ``deal.last_at``; ``InvalidTransition`` with ``guard`` set when the
    transition's precondition fails. On any of them nothing changed; ``deal`` itself never does.
    """
    transition = TRANSITIONS.get((deal.state, event.kind))
    if transition is None:
        raise InvalidTransition(deal.deal_id, deal.state, event.kind)
    if event.actor not in transition.actors:
        raise WrongActor(deal.deal_id, event.kind, event.actor, transition.actors)
    if event.at < deal.last_at:
        raise InvalidEvent("at", "earlier than the deal's last recorded time")
    if transition.requires is not None and not GUARDS[transition.requires](deal, event):
        raise InvalidTransition(deal.deal_id, deal.state, event.kind, transition.requires)
    new = _run(transition.effects, deal, event)
    branch = next(b for b in transition.branches if b.guard is None or GUARDS[b.guard](new, event))
    new = replace(_run(branch.effects, new, event), state=branch.to)
    record = TransitionRecord(
        deal_id=deal.deal_id,
        from_state=deal.state,
        to_state=new.state,
        event=event.kind,
        actor=event.actor,
        at=event.at,
        detail=branch.detail,
        noop=new == deal,
    )
    return new, record


def _run(effects: tuple[str, ...], deal: Deal, event: Event) -> Deal:
    for name in effects:
        deal = EFFECTS[name](deal, event)
    return deal


def _check_int(
    error: type[InvalidDeal | InvalidEvent], field: str, value: object, low: int, high: int
) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise error(field, f"must be an integer in [{low}, {high}]")
