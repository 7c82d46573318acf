"""Exceptions of the deal state machine (``matching.deals``) and of settlement (``matching.settlement``).

Split by blame:

- ``EventRefused`` — the *sender* of an event got it wrong: a report that comes too late or out of
  order, a stale timer, a party claiming an event that belongs to the other side. The deal is left
  unchanged; the edge answers the sender (e.g. HTTP 409 or a control-channel error) and goes on.
- ``InvalidDeal``, ``InvalidEvent`` and ``SettlementError`` — a value that no caller should have
  built (a negative price, a byte count beyond BIGINT, a commission above 100 %): a bug in the code
  that built it, or unchecked input at the edge. Never the deal's other party.

All inherit from ``matching.errors.MatchingError``, the package's base, and from ``ValueError``
so generic handlers keep working. Attributes carry the context;
messages name fields, states and events, never account secrets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matching.errors import MatchingError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from matching.deals import Actor, EventKind, State


class DealError(MatchingError):
    """Base class of every error raised on purpose by ``matching.deals`` and ``matching.settlement``."""


class EventRefused(DealError, ValueError):
    """The deal does not accept ``event`` from this sender now; the deal is unchanged."""

    def __init__(self, message: str, deal_id: str, event: EventKind) -> None:
        super().__init__(message)
        self.deal_id = deal_id
        self.event = event


class InvalidTransition(EventRefused):
    """``event`` is not allowed in ``state``.

    ``guard`` is ``None`` when the table has no entry for (``state``, ``event``) — including every
    event after a terminal state — and else names the precondition that failed (e.g.
    ``"meters_reconciled"`` for a ``settle`` that comes before the meters were reconciled).
    """

    def __init__(self, deal_id: str, state: State, event: EventKind, guard: str | None = None) -> None:
        why = f" (requires {guard})" if guard is not None else ""
        super().__init__(f"deal {deal_id}: {event} is not allowed in state {state}{why}", deal_id, event)
        self.state = state
        self.guard = guard


class WrongActor(EventRefused):
    """``actor`` may not cause ``event``; ``allowed`` is who may."""

    def __init__(self, deal_id: str, event: EventKind, actor: Actor, allowed: Iterable[Actor]) -> None:
        self.allowed = frozenset(allowed)
        names = ", ".join(sorted(str(a) for a in self.allowed))
        super().__init__(f"deal {deal_id}: {event} comes from {names}, not {actor}", deal_id, event)
        self.actor = actor


class InvalidDeal(DealError, ValueError):
    """A deal's ``field`` holds a value no deal may have; ``reason`` says why (never the value)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid deal {field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidEvent(DealError, ValueError):
    """A deal event's ``field`` is missing, superfluous or out of range; ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid deal event {field}: {reason}")
        self.field = field
        self.reason = reason


class SettlementError(DealError, ValueError):
    """Base class of the errors raised by ``matching.settlement``."""


class InvalidSettlementInput(SettlementError):
    """A settlement or reconciliation input is negative, not an int, or absurd.

    ``field`` names the argument, ``value`` is what was passed (only counts, prices and rates ever
    get here) and ``reason`` says which bound it broke.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason
