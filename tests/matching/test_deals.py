"""The deal protocol: every (state, event) pair against the table, actors, repeats, whole lifecycles."""

from __future__ import annotations

import itertools
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.ledger import Amount
from matching.deal_errors import (
    DealError,
    EventRefused,
    InvalidDeal,
    InvalidEvent,
    InvalidTransition,
    WrongActor,
)
from matching.deals import (
    TERMINAL,
    TRANSITIONS,
    Actor,
    Branch,
    Deal,
    Event,
    EventKind,
    State,
    Transition,
    TransitionRecord,
    apply,
    propose,
)
from matching.errors import MatchingError
from matching.settlement import automatic_resolution, billable_seconds, reconcile, settle

S, K, A = State, EventKind, Actor
IPSX = 10**18
T0 = 1_700_000_000

#: Who normally sends each event (the first actor allowed for it).
SENDER: dict[EventKind, Actor] = {
    K.READY: A.PROVIDER,
    K.SERVING: A.PROVIDER,
    K.STOPPED: A.PROVIDER,
    K.ACCEPTED: A.REQUESTER,
    K.OK: A.REQUESTER,
    K.COMPLAINT: A.REQUESTER,
    K.READY_TIMEOUT: A.SYSTEM,
    K.TIME_FRAME_ENDED: A.SYSTEM,
    K.ALLOWANCE_USED: A.SYSTEM,
    K.REQUESTER_CANCEL: A.REQUESTER,
    K.PROVIDER_CANCEL: A.PROVIDER,
    K.METERS_RECONCILED: A.SYSTEM,
    K.DISPUTE_RESOLVED: A.OPERATOR,
    K.SETTLE: A.SYSTEM,
}

#: Everyone who may send each event, written out independently of the table.
ALLOWED_ACTORS: dict[EventKind, frozenset[Actor]] = {
    **{kind: frozenset({actor}) for kind, actor in SENDER.items()},
    K.STOPPED: frozenset({A.PROVIDER, A.GATEWAY}),
    K.DISPUTE_RESOLVED: frozenset({A.OPERATOR, A.SYSTEM}),
    K.SETTLE: frozenset({A.SYSTEM, A.OPERATOR}),
}

#: (state, event) -> what happens to the representative deal of that state (see ``deal_in``):
#: (next state, detail), or the name of the precondition that refuses it.
EXPECTED: dict[tuple[State, EventKind], tuple[State, str] | str] = {
    (S.PROPOSED, K.READY): (S.PROPOSED, "provider ready, waiting for requester"),
    (S.PROPOSED, K.SERVING): (S.PROPOSED, "provider ready, waiting for requester"),
    (S.PROPOSED, K.STOPPED): (S.PROPOSED, "provider not ready"),
    (S.PROPOSED, K.ACCEPTED): (S.PROPOSED, "requester accepted, waiting for provider"),
    (S.PROPOSED, K.READY_TIMEOUT): (S.CANCELLED, "exit never ready"),
    (S.PROPOSED, K.TIME_FRAME_ENDED): (S.EXPIRED, "time frame ended before activation"),
    (S.PROPOSED, K.REQUESTER_CANCEL): (S.CANCELLED, "cancelled by requester"),
    (S.PROPOSED, K.PROVIDER_CANCEL): (S.CANCELLED, "cancelled by provider"),
    (S.ACTIVE, K.READY): (S.ACTIVE, "repeat"),
    (S.ACTIVE, K.SERVING): (S.ACTIVE, "repeat"),
    (S.ACTIVE, K.ACCEPTED): (S.ACTIVE, "repeat"),
    (S.ACTIVE, K.OK): (S.ACTIVE, "repeat"),
    (S.ACTIVE, K.STOPPED): (S.COMPLETED, "provider stopped early"),
    (S.ACTIVE, K.TIME_FRAME_ENDED): (S.COMPLETED, "time frame ended"),
    (S.ACTIVE, K.ALLOWANCE_USED): (S.COMPLETED, "traffic allowance used"),
    (S.ACTIVE, K.COMPLAINT): (S.DISPUTED, "requester complaint"),
    (S.COMPLETED, K.STOPPED): (S.COMPLETED, "repeat"),
    (S.COMPLETED, K.OK): (S.COMPLETED, "repeat"),
    (S.COMPLETED, K.COMPLAINT): (S.DISPUTED, "requester complaint"),
    (S.COMPLETED, K.METERS_RECONCILED): (S.COMPLETED, "meters match"),
    (S.COMPLETED, K.SETTLE): "meters_reconciled",
    (S.DISPUTED, K.STOPPED): (S.DISPUTED, "repeat"),
    (S.DISPUTED, K.COMPLAINT): (S.DISPUTED, "repeat"),
    (S.DISPUTED, K.METERS_RECONCILED): (S.DISPUTED, "meters recorded"),
    (S.DISPUTED, K.DISPUTE_RESOLVED): (S.RESOLVED, "dispute resolved"),
    (S.RESOLVED, K.STOPPED): (S.RESOLVED, "repeat"),
    (S.RESOLVED, K.SETTLE): (S.SETTLED, "settled"),
}


def new_deal(*, accepted: bool = False, **overrides: object) -> Deal:
    terms: dict[str, object] = {
        "deal_id": "d1",
        "requester": "alice",
        "provider": "bob",
        "exit_id": "exit-1",
        "price_per_gb": Amount(2 * IPSX),
        "price_per_hour": Amount(IPSX),
        "reserve": Amount(10 * IPSX),
        "duration_s": 3600,
        "traffic_bytes": 5_000_000_000,
        "created_at": T0,
        "accepted": accepted,
    }
    terms.update(overrides)
    return propose(**terms)  # type: ignore[arg-type]


def event(kind: EventKind, at: int, actor: Actor | None = None, **payload: object) -> Event:
    if kind is K.METERS_RECONCILED:
        payload.setdefault("reconciliation", reconcile(1_000_000, 1_000_000))
    if kind is K.DISPUTE_RESOLVED:
        payload.setdefault("billable_bytes", 1_000_000)
    return Event(kind, SENDER[kind] if actor is None else actor, at, **payload)  # type: ignore[arg-type]


def run(deal: Deal, *kinds: EventKind, step: int = 10) -> tuple[Deal, list[TransitionRecord]]:
    """Apply ``kinds`` in order, ``step`` seconds apart, from their usual senders."""
    records = []
    at = deal.last_at
    for kind in kinds:
        at += step
        deal, record = apply(deal, event(kind, at))
        records.append(record)
    return deal, records


PATH_TO: dict[State, tuple[EventKind, ...]] = {
    S.PROPOSED: (),
    S.ACTIVE: (K.READY, K.ACCEPTED),
    S.COMPLETED: (K.READY, K.ACCEPTED, K.TIME_FRAME_ENDED),
    S.CANCELLED: (K.READY_TIMEOUT,),
    S.EXPIRED: (K.TIME_FRAME_ENDED,),
    S.DISPUTED: (K.READY, K.ACCEPTED, K.COMPLAINT),
    S.RESOLVED: (K.READY, K.ACCEPTED, K.COMPLAINT, K.DISPUTE_RESOLVED),
    S.SETTLED: (K.READY, K.ACCEPTED, K.TIME_FRAME_ENDED, K.METERS_RECONCILED, K.SETTLE),
}


def deal_in(state: State) -> Deal:
    deal, _ = run(new_deal(), *PATH_TO[state])
    assert deal.state is state
    return deal


# -- the whole table -------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "kind"), list(itertools.product(State, EventKind)))
def test_apply_every_state_and_event(state: State, kind: EventKind) -> None:
    deal = deal_in(state)
    at = deal.last_at + 7
    expected = EXPECTED.get((state, kind))
    assert ((state, kind) in TRANSITIONS) == (expected is not None)
    if expected is None or isinstance(expected, str):
        with pytest.raises(InvalidTransition) as info:
            apply(deal, event(kind, at))
        assert info.value.deal_id == "d1"
        assert info.value.state is state
        assert info.value.event is kind
        assert info.value.guard == expected
        return
    new, record = apply(deal, event(kind, at))
    to_state, detail = expected
    assert new.state is to_state
    assert record == TransitionRecord(
        deal_id="d1",
        from_state=state,
        to_state=to_state,
        event=kind,
        actor=SENDER[kind],
        at=at,
        detail=detail,
        noop=detail == "repeat" or (state, kind) == (S.PROPOSED, K.STOPPED),
    )
    assert deal.state is state  # the input deal is untouched


def test_terminal_states() -> None:
    assert {S.CANCELLED, S.EXPIRED, S.SETTLED} == TERMINAL
    assert not any(state in TERMINAL for state, _ in TRANSITIONS)


def test_table_actors_match_spec() -> None:
    for (state, kind), transition in TRANSITIONS.items():
        assert transition.actors == ALLOWED_ACTORS[kind], (state, kind)


WRONG_ACTOR_CASES = [
    (state, kind, actor)
    for (state, kind) in TRANSITIONS
    for actor in Actor
    if actor not in ALLOWED_ACTORS[kind]
]


@pytest.mark.parametrize(("state", "kind", "actor"), WRONG_ACTOR_CASES)
def test_apply_wrong_actor(state: State, kind: EventKind, actor: Actor) -> None:
    deal = deal_in(state)
    with pytest.raises(WrongActor) as info:
        apply(deal, event(kind, deal.last_at + 1, actor))
    assert info.value.deal_id == "d1"
    assert info.value.event is kind
    assert info.value.actor is actor
    assert info.value.allowed == ALLOWED_ACTORS[kind]


def test_wrong_actor_examples() -> None:
    with pytest.raises(WrongActor, match="ready comes from provider, not requester"):
        apply(new_deal(), event(K.READY, T0, A.REQUESTER))
    with pytest.raises(WrongActor):
        apply(new_deal(), event(K.PROVIDER_CANCEL, T0, A.REQUESTER))
    with pytest.raises(WrongActor):
        apply(deal_in(S.DISPUTED), event(K.DISPUTE_RESOLVED, T0 + 100, A.REQUESTER))


def test_alternative_actors() -> None:
    active = deal_in(S.ACTIVE)
    completed, record = apply(active, event(K.STOPPED, active.last_at + 5, A.GATEWAY))
    assert (completed.state, record.actor, record.detail) == (
        S.COMPLETED,
        A.GATEWAY,
        "provider stopped early",
    )
    disputed = deal_in(S.DISPUTED)
    resolved, record = apply(disputed, event(K.DISPUTE_RESOLVED, disputed.last_at, A.SYSTEM))
    assert (resolved.state, record.actor) == (S.RESOLVED, A.SYSTEM)
    settled, record = apply(resolved, event(K.SETTLE, resolved.last_at, A.OPERATOR))
    assert (settled.state, record.actor) == (S.SETTLED, A.OPERATOR)


def test_errors_split_by_blame() -> None:
    assert issubclass(InvalidTransition, EventRefused)
    assert issubclass(WrongActor, EventRefused)
    for error in (EventRefused, InvalidDeal, InvalidEvent):
        assert issubclass(error, DealError)
        assert issubclass(error, ValueError)
    assert issubclass(DealError, MatchingError)
    assert not issubclass(InvalidDeal, EventRefused)
    assert not issubclass(InvalidEvent, EventRefused)


# -- activation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [(K.READY, K.ACCEPTED), (K.ACCEPTED, K.READY), (K.SERVING, K.ACCEPTED), (K.ACCEPTED, K.SERVING)],
)
def test_activation_in_either_order(order: tuple[EventKind, EventKind]) -> None:
    first, second = order
    deal = new_deal()
    waiting, record1 = apply(deal, event(first, T0 + 3))
    assert waiting.state is S.PROPOSED
    assert record1.noop is False
    assert (waiting.provider_ready, waiting.requester_accepted) == (
        first is not K.ACCEPTED,
        first is K.ACCEPTED,
    )
    active, record2 = apply(waiting, event(second, T0 + 8))
    assert active.state is S.ACTIVE
    assert active.activated_at == T0 + 8
    assert active.provider_ready and active.requester_accepted
    assert (record2.from_state, record2.to_state, record2.detail) == (S.PROPOSED, S.ACTIVE, "activated")


def test_spot_deal_is_accepted_at_creation() -> None:
    deal = new_deal(accepted=True)
    assert deal.requester_accepted and not deal.provider_ready
    active, record = apply(deal, event(K.READY, T0 + 1))
    assert (active.state, active.activated_at, record.detail) == (S.ACTIVE, T0 + 1, "activated")


def test_provider_stopped_before_activation_is_no_longer_ready() -> None:
    deal, _ = run(new_deal(), K.READY, K.STOPPED)
    assert deal.state is S.PROPOSED and not deal.provider_ready
    deal, records = run(deal, K.ACCEPTED)
    assert deal.state is S.PROPOSED
    assert records[0].detail == "requester accepted, waiting for provider"
    deal, records = run(deal, K.SERVING)
    assert deal.state is S.ACTIVE


# -- repeats ---------------------------------------------------------------------------------------


def test_repeated_status_reports_are_recorded_noops() -> None:
    deal, _ = run(new_deal(), K.READY)
    again, record = apply(deal, event(K.READY, deal.last_at + 1))
    assert again == deal
    assert (record.noop, record.from_state, record.to_state) == (True, S.PROPOSED, S.PROPOSED)

    active = deal_in(S.ACTIVE)
    for kind in (K.READY, K.SERVING, K.ACCEPTED, K.OK, K.READY):
        same, record = apply(active, event(kind, active.last_at + 60))
        assert same == active
        assert (record.noop, record.detail, record.event, record.actor) == (
            True,
            "repeat",
            kind,
            SENDER[kind],
        )

    disputed = deal_in(S.DISPUTED)
    same, record = apply(disputed, event(K.COMPLAINT, disputed.last_at + 1))
    assert same == disputed and record.noop


def test_status_reports_after_close_are_refused() -> None:
    for state in TERMINAL:
        deal = deal_in(state)
        for kind in (K.READY, K.STOPPED, K.OK):
            with pytest.raises(InvalidTransition) as info:
                apply(deal, event(kind, deal.last_at + 1))
            assert (info.value.state, info.value.event, info.value.guard) == (state, kind, None)


def test_stale_timer_is_refused() -> None:
    active = deal_in(S.ACTIVE)
    with pytest.raises(InvalidTransition, match="ready_timeout is not allowed in state active"):
        apply(active, event(K.READY_TIMEOUT, active.last_at + 1))


# -- lifecycles ------------------------------------------------------------------------------------


def test_happy_path_to_settled() -> None:
    deal = new_deal()
    deal, records = run(deal, K.READY, K.ACCEPTED, step=5)
    assert deal.activated_at == T0 + 10
    deal, r_end = apply(deal, event(K.TIME_FRAME_ENDED, T0 + 10 + 3600))
    assert (deal.state, deal.ended_at) == (S.COMPLETED, T0 + 3610)
    rec = reconcile(1_500_000_000, 1_499_990_000)
    deal, r_meters = apply(deal, event(K.METERS_RECONCILED, T0 + 3700, reconciliation=rec))
    assert (deal.state, r_meters.detail) == (S.COMPLETED, "meters match")
    assert (deal.gateway_bytes, deal.agent_bytes, deal.billable_bytes) == (
        1_500_000_000,
        1_499_990_000,
        1_500_000_000,
    )
    deal, r_settle = apply(deal, event(K.SETTLE, T0 + 3701))
    assert (deal.state, deal.settled_at) == (S.SETTLED, T0 + 3701)
    path = [(r.from_state, r.to_state) for r in [*records, r_end, r_meters, r_settle]]
    assert path == [
        (S.PROPOSED, S.PROPOSED),
        (S.PROPOSED, S.ACTIVE),
        (S.ACTIVE, S.COMPLETED),
        (S.COMPLETED, S.COMPLETED),
        (S.COMPLETED, S.SETTLED),
    ]
    assert billable_seconds(deal) == 3600
    assert deal.billable_bytes is not None
    result = settle(deal, deal.billable_bytes, billable_seconds(deal), commission_bps=500)
    assert result.charge == 3 * IPSX + IPSX  # 1.5 GB at 2 IPSX/GB + 1 h at 1 IPSX/h
    assert result.released == 6 * IPSX
    with pytest.raises(InvalidTransition):
        apply(deal, event(K.SETTLE, T0 + 3702))


@pytest.mark.parametrize(
    ("before", "detail"), [((), "exit never ready"), ((K.READY,), "requester never accepted")]
)
def test_ready_timeout_cancels(before: tuple[EventKind, ...], detail: str) -> None:
    deal, _ = run(new_deal(), *before)
    cancelled, record = apply(deal, event(K.READY_TIMEOUT, T0 + 120))
    assert (cancelled.state, cancelled.ended_at, cancelled.activated_at) == (S.CANCELLED, T0 + 120, None)
    assert (record.actor, record.detail) == (A.SYSTEM, detail)
    assert billable_seconds(cancelled) == 0
    voided = settle(cancelled, 0, 0, commission_bps=500)
    assert (voided.charge, voided.released) == (0, cancelled.reserve)


def test_complaint_dispute_resolved_by_automatic_rule_then_settled() -> None:
    deal = deal_in(S.ACTIVE)
    started = deal.activated_at
    assert started is not None
    deal, record = apply(deal, event(K.COMPLAINT, started + 600))
    assert (deal.state, deal.ended_at, record.actor) == (S.DISPUTED, started + 600, A.REQUESTER)
    rec = reconcile(400_000_000, 300_000_000)
    deal, record = apply(deal, event(K.METERS_RECONCILED, started + 700, reconciliation=rec))
    assert (deal.state, deal.billable_bytes, record.detail) == (S.DISPUTED, None, "meters recorded")
    decided = automatic_resolution(rec)
    deal, record = apply(deal, event(K.DISPUTE_RESOLVED, started + 800, A.SYSTEM, billable_bytes=decided))
    assert (deal.state, deal.billable_bytes) == (S.RESOLVED, 300_000_000)
    with pytest.raises(InvalidTransition):  # a decided dispute is not disputed again
        apply(deal, event(K.COMPLAINT, started + 801))
    deal, record = apply(deal, event(K.SETTLE, started + 900))
    assert deal.state is S.SETTLED
    assert billable_seconds(deal) == 600


def test_meters_mismatch_disputes_and_operator_overrides() -> None:
    deal = deal_in(S.COMPLETED)
    rec = reconcile(10_000_000, 5_000_000)
    disputed, record = apply(deal, event(K.METERS_RECONCILED, deal.last_at + 1, reconciliation=rec))
    assert (disputed.state, record.detail, disputed.billable_bytes) == (S.DISPUTED, "meters mismatch", None)
    with pytest.raises(InvalidTransition) as info:
        apply(disputed, event(K.METERS_RECONCILED, disputed.last_at, reconciliation=rec))
    assert info.value.guard == "meters_pending"
    with pytest.raises(InvalidTransition):
        apply(disputed, event(K.SETTLE, disputed.last_at))
    resolved, record = apply(disputed, event(K.DISPUTE_RESOLVED, disputed.last_at, billable_bytes=7_000_000))
    assert (resolved.state, resolved.billable_bytes, record.actor) == (S.RESOLVED, 7_000_000, A.OPERATOR)
    settled, _ = apply(resolved, event(K.SETTLE, resolved.last_at))
    assert settled.state is S.SETTLED


def test_provider_stops_early_bills_time_used() -> None:
    deal = deal_in(S.ACTIVE)
    assert deal.activated_at is not None
    completed, record = apply(deal, event(K.STOPPED, deal.activated_at + 90))
    assert (completed.state, completed.ended_at, record.detail) == (
        S.COMPLETED,
        deal.activated_at + 90,
        "provider stopped early",
    )
    assert billable_seconds(completed) == 90


def test_settle_requires_reconciled_meters() -> None:
    deal = deal_in(S.COMPLETED)
    with pytest.raises(InvalidTransition, match=r"requires meters_reconciled") as info:
        apply(deal, event(K.SETTLE, deal.last_at))
    assert (info.value.state, info.value.guard) == (S.COMPLETED, "meters_reconciled")


def test_complaint_after_match_reopens_as_dispute() -> None:
    deal, _ = run(deal_in(S.COMPLETED), K.METERS_RECONCILED, K.COMPLAINT)
    assert (deal.state, deal.billable_bytes) == (S.DISPUTED, 1_000_000)


# -- inputs ----------------------------------------------------------------------------------------


def test_time_may_not_go_backwards() -> None:
    deal = deal_in(S.ACTIVE)
    with pytest.raises(InvalidEvent) as info:
        apply(deal, event(K.TIME_FRAME_ENDED, deal.last_at - 1))
    assert info.value.field == "at"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": K.METERS_RECONCILED}, "reconciliation"),
        ({"kind": K.READY, "reconciliation": reconcile(1, 1)}, "reconciliation"),
        ({"kind": K.DISPUTE_RESOLVED}, "billable_bytes"),
        ({"kind": K.DISPUTE_RESOLVED, "billable_bytes": -1}, "billable_bytes"),
        ({"kind": K.DISPUTE_RESOLVED, "billable_bytes": True}, "billable_bytes"),
        ({"kind": K.SETTLE, "billable_bytes": 5}, "billable_bytes"),
        ({"kind": K.READY, "at": -1}, "at"),
        ({"kind": K.READY, "at": 1.5}, "at"),
        ({"kind": "ready"}, "kind"),
        ({"kind": K.READY, "actor": "provider"}, "actor"),
    ],
)
def test_event_validation(kwargs: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"actor": A.PROVIDER, "at": T0, **kwargs}
    with pytest.raises(InvalidEvent) as info:
        Event(**values)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"deal_id": ""}, "deal_id"),
        ({"provider": "x" * 513}, "provider"),
        ({"price_per_gb": -1}, "price_per_gb"),
        ({"price_per_hour": 1.0}, "price_per_hour"),
        ({"reserve": 10**78}, "reserve"),
        ({"duration_s": 4}, "duration_s"),
        ({"duration_s": 30 * 86400 + 1}, "duration_s"),
        ({"traffic_bytes": -1}, "traffic_bytes"),
        ({"traffic_bytes": None}, "traffic_bytes"),
        ({"created_at": -5}, "created_at"),
    ],
)
def test_deal_validation(override: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidDeal) as info:
        new_deal(**override)  # type: ignore[arg-type]
    assert info.value.field == field


def test_deal_is_immutable() -> None:
    deal = new_deal()
    with pytest.raises(FrozenInstanceError):
        deal.state = S.ACTIVE  # type: ignore[misc]


def test_malformed_table_entries_are_refused() -> None:
    with pytest.raises(TypeError):
        Transition(frozenset({A.SYSTEM}), (Branch(S.ACTIVE, "x", guard="both_sides_ready"),))
    with pytest.raises(TypeError):
        Transition(frozenset({A.SYSTEM}), (Branch(S.ACTIVE, "x", effects=("teleport",)),))
    with pytest.raises(TypeError):
        Transition(frozenset(), (Branch(S.ACTIVE, "x"),))


# -- fuzz ------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(EventKind), st.sampled_from(Actor), st.integers(0, 5000)),
        max_size=25,
    ),
    st.booleans(),
)
def test_apply_any_event_sequence(steps: list[tuple[EventKind, Actor, int]], accepted: bool) -> None:
    deal = new_deal(accepted=accepted)
    for kind, actor, delay in steps:
        try:
            new, record = apply(deal, event(kind, deal.last_at + delay, actor))
        except EventRefused:
            continue
        assert (record.from_state, record.to_state) == (deal.state, new.state)
        assert (deal.state, kind) in TRANSITIONS
        assert record.noop == (new == deal)
        deal = new
        if deal.activated_at is not None and deal.ended_at is not None:
            assert deal.ended_at >= deal.activated_at
        if deal.state is S.ACTIVE:
            assert deal.provider_ready and deal.requester_accepted
        if deal.state is S.SETTLED:
            assert deal.billable_bytes is not None
            assert 0 <= billable_seconds(deal) <= deal.duration_s
