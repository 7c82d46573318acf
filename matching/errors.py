"""The matching package's exceptions.

A caller's mistake (a malformed order, an id that is not on the book, an id already in use) is a
``MatchingError``; the ones caused by bad values also inherit from ``ValueError`` or
``LookupError`` so generic handlers keep working. Attributes carry the context; an
``InvalidOrder`` message names the field and the rule but never repeats the offending value,
which may be hostile input.
"""

from __future__ import annotations


class MatchingError(Exception):
    """Base class of every error raised on purpose by ``matching``."""


class InvalidOrder(MatchingError, ValueError):
    """An order, an amendment or a spot query is not acceptable; ``field`` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.reason = reason


class DuplicateOrder(MatchingError, ValueError):
    """An order with id ``order_id`` already rests on the book (offers and requests share ids)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} is already on the book")
        self.order_id = order_id


class UnknownOrder(MatchingError, LookupError):
    """No resting order is called ``order_id`` (never placed, filled, cancelled or expired)."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"no resting order {order_id!r}")
        self.order_id = order_id


class UnknownDeal(MatchingError, LookupError):
    """No active deal is called ``deal_id`` (never opened, or already ended)."""

    def __init__(self, deal_id: str) -> None:
        super().__init__(f"no active deal {deal_id!r}")
        self.deal_id = deal_id


class DuplicateDeal(MatchingError, ValueError):
    """A deal restored into the engine is already open there."""

    def __init__(self, deal_id: str) -> None:
        super().__init__(f"deal {deal_id!r} is already open")
        self.deal_id = deal_id


class InsufficientFunds(MatchingError):
    """``requester`` could not reserve ``amount`` base units for a spot deal.

    Only :meth:`matching.engine.Engine.spot` raises it: a spot query has no order to report the
    refusal on, and the edge must tell "no exit" (``None``) from "no money" (this).
    """

    def __init__(self, requester: str, amount: int) -> None:
        super().__init__(f"{requester} cannot reserve {amount} base units")
        self.requester = requester
        self.amount = amount
