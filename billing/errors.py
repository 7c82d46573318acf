"""The billing package's exceptions.

A caller's mistake (a bad address, an unknown account, a malformed usage event, an unparsable
amount) is a ``BillingError``; the ones caused by bad values also inherit from ``ValueError`` or
``LookupError`` so generic handlers keep working. Attributes carry the context; messages never
carry secrets.
"""

from __future__ import annotations


class BillingError(Exception):
    """Base class of every error raised on purpose by ``billing``."""


class InvalidAccount(BillingError, ValueError):
    """An account address, name or key label is not acceptable; ``field`` says which."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.reason = reason


class AccountExists(BillingError):
    """An account with the same ``field`` (``"address"`` or ``"name"``) already exists."""

    def __init__(self, field: str) -> None:
        super().__init__(f"an account with this {field} already exists")
        self.field = field


class UnknownAccount(BillingError, LookupError):
    """No account is called ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no account named {name!r}")
        self.name = name


class MalformedEvent(BillingError, ValueError):
    """A usage event or agent report is not well formed.

    ``event_id`` is the event's id when that much could be read, else ``None``; ``reason`` names
    the offending field but never repeats its value.
    """

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(f"malformed usage event {event_id or '?'}: {reason}")
        self.reason = reason
        self.event_id = event_id


class InvalidAmount(BillingError, ValueError):
    """A token amount is not a non-negative number of at most 18 decimals within NUMERIC(78,0)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid amount: {reason}")
        self.reason = reason


class AccountsUnavailable(BillingError):
    """Credentials could not be checked because the accounts database did not answer.

    Our side's failure, not the caller's: a proxy answers it as "try again later", never as
    "wrong password".
    """

    def __init__(self) -> None:
        super().__init__("the accounts database is unavailable")


class InsufficientFunds(BillingError):
    """A movement would take ``account`` below zero: it needed ``needed`` base units and had
    ``available``. Nothing of the movement was written."""

    def __init__(self, account: str, needed: int, available: int) -> None:
        super().__init__(f"insufficient funds in {account}: needs {needed}, has {available} (base units)")
        self.account = account
        self.needed = needed
        self.available = available


class UnknownHold(BillingError, LookupError):
    """No hold has the reference ``reference``."""

    def __init__(self, reference: str) -> None:
        super().__init__(f"no hold with reference {reference!r}")
        self.reference = reference


class HoldResolved(BillingError):
    """The hold ``reference`` was already resolved (``state`` is ``posted`` or ``voided``): a hold
    is posted or voided exactly once."""

    def __init__(self, reference: str, state: str) -> None:
        super().__init__(f"hold {reference!r} is already {state}")
        self.reference = reference
        self.state = state


class HoldExceeded(BillingError, ValueError):
    """Legs totalling ``total`` base units were posted against a hold of ``amount``."""

    def __init__(self, reference: str, amount: int, total: int) -> None:
        super().__init__(f"hold {reference!r} holds {amount}, cannot post {total} (base units)")
        self.reference = reference
        self.amount = amount
        self.total = total
