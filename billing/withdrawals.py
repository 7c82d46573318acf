"""Withdrawals: an account takes funds out of IPSX, to its own wallet address.

Requesting a withdrawal reserves the amount as a hold (``withdrawal:<reference>``): the funds stay
on the books but can no longer be spent. The withdrawal is then resolved exactly once:

- ``complete`` — the tokens were sent; the hold is posted to ``external:chain`` (where tokens leave
  the books) and the transaction hash recorded;
- ``reject`` — the operator refuses it, with a reason; the hold is voided back;
- ``cancel`` — the owner takes it back while it is pending; the hold is voided back.

The destination is always the account's own address (the wallet it signs in with), so a leaked
API key can at most move funds to their owner. Until the payments issue's chain payer sends the
tokens, the operator completes withdrawals from the command line with the hash of the transfer.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

import asyncpg

from billing import holds, payouts
from billing.accounts import get_account
from billing.errors import BillingError, InsufficientFunds, InvalidAmount, UnknownAccount
from billing.ledger import MAX_AMOUNT, Amount, balance, provider_account, requester_account

CHAIN = "external:chain"  # the ledger's image of the chain: tokens withdrawn leave the books here

SOURCES = {"balance": requester_account, "earnings": provider_account}
"""Where a withdrawal takes its funds: the account's spendable ``balance`` (as a requester) or its
``earnings`` (as a provider)."""

_TX_HASH = re.compile(r"0x[0-9a-f]{64}")
MAX_REASON_LEN = 200


class WithdrawalError(BillingError):
    """A withdrawal call the withdrawal's state or its terms do not allow."""


class UnknownWithdrawal(WithdrawalError, LookupError):
    def __init__(self, withdrawal_id: int) -> None:
        super().__init__(f"no withdrawal {withdrawal_id}")
        self.withdrawal_id = withdrawal_id


class WithdrawalResolved(WithdrawalError):
    """The withdrawal is no longer pending: it was ``state`` already."""

    def __init__(self, withdrawal_id: int, state: str) -> None:
        super().__init__(f"withdrawal {withdrawal_id} is already {state}")
        self.withdrawal_id = withdrawal_id
        self.state = state


class ReferenceReused(WithdrawalError):
    """The idempotency reference was used for a withdrawal with other terms."""

    def __init__(self) -> None:
        super().__init__("this reference was used for a withdrawal with other terms")


@dataclass(frozen=True, slots=True)
class Withdrawal:
    id: int
    reference: str
    account: str  # the account's name
    source: str  # balance | earnings
    amount: Amount
    address: str  # the account's wallet address, where the tokens go
    state: str  # pending | completed | rejected | cancelled
    tx_hash: str | None
    reason: str | None
    key_id: str | None  # the API key that asked for it; None for a wallet session or the CLI
    created_at: dt.datetime
    resolved_at: dt.datetime | None


_COLUMNS = """w.id, w.reference, a.name, w.ledger_account, w.amount::text, w.address, w.state,
              w.tx_hash, w.reason, w.key_id, w.created_at, w.resolved_at"""
_FROM = "withdrawals w JOIN accounts a ON a.id = w.account_id"


def _withdrawal(row: asyncpg.Record) -> Withdrawal:
    source = "earnings" if row[3].startswith("provider:") else "balance"
    return Withdrawal(
        int(row[0]), row[1], row[2], source, Amount(int(row[4])), row[5], row[6], row[7], row[8],
        row[9], row[10], row[11],
    )  # fmt: skip


def _hold_reference(reference: str) -> str:
    return f"withdrawal:{reference}"


async def request(
    pool: asyncpg.Pool,
    *,
    account_name: str,
    amount: Amount,
    source: str = "balance",
    reference: str | None = None,
    key_id: str | None = None,
) -> tuple[Withdrawal, bool]:
    """Ask to withdraw ``amount`` base units of the account's ``source`` to its own address.

    Returns the withdrawal and whether this call created it: a ``reference`` already used by the
    same account for the same amount and source returns that withdrawal, whatever its state, and
    moves nothing. Raises ``InvalidAmount``, ``ValueError`` for an unknown source,
    ``UnknownAccount``, ``ReferenceReused``, and ``InsufficientFunds`` (nothing written) when the
    source's available funds are short.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(sorted(SOURCES))}")
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:  # a bool or float is no amount
        raise InvalidAmount("must be a positive number of base units within NUMERIC(78,0)")
    ledger_account = SOURCES[source](account_name)
    account = await get_account(pool, account_name)
    if account is None:
        raise UnknownAccount(account_name)
    if source == "earnings":  # what payout channels already promise it is not the provider's to take
        free = int(await balance(pool, ledger_account)) - int(await payouts.promised(pool, account.name))
        if amount > free:
            raise InsufficientFunds(ledger_account, amount, max(free, 0))
    reference = reference or f"w-{secrets.token_hex(12)}"
    async with pool.acquire() as conn, conn.transaction():
        row_id = await conn.fetchval(
            "INSERT INTO withdrawals (reference, account_id, ledger_account, amount, address, key_id)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (reference) DO NOTHING RETURNING id",
            reference,
            account.id,
            ledger_account,
            int(amount),
            account.address,
            key_id,
        )
        if row_id is not None:
            await holds.reserve_in(conn, ledger_account, amount, _hold_reference(reference))
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE w.reference = $1", reference)  # noqa: S608
    withdrawal = _withdrawal(row)
    if row_id is None and (
        withdrawal.account != account.name or withdrawal.amount != amount or withdrawal.source != source
    ):
        raise ReferenceReused()
    return withdrawal, row_id is not None


async def _resolve(
    pool: asyncpg.Pool,
    withdrawal_id: int,
    state: str,
    *,
    tx_hash: str | None = None,
    reason: str | None = None,
    account_name: str | None = None,
) -> Withdrawal:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE w.id = $1 FOR UPDATE OF w",  # noqa: S608
            withdrawal_id,
        )
        if row is None or (account_name is not None and row[2] != account_name):
            raise UnknownWithdrawal(withdrawal_id)
        withdrawal = _withdrawal(row)
        if withdrawal.state != "pending":
            raise WithdrawalResolved(withdrawal_id, withdrawal.state)
        payouts = [(CHAIN, withdrawal.amount)] if state == "completed" else []
        await holds.resolve_in(conn, _hold_reference(withdrawal.reference), payouts)
        await conn.execute(
            "UPDATE withdrawals SET state = $2, tx_hash = $3, reason = $4, resolved_at = now() WHERE id = $1",
            withdrawal_id,
            state,
            tx_hash,
            reason,
        )
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE w.id = $1", withdrawal_id)  # noqa: S608
    return _withdrawal(row)


async def complete(pool: asyncpg.Pool, withdrawal_id: int, tx_hash: str) -> Withdrawal:
    """The tokens were sent in ``tx_hash``: the withdrawn funds leave the books.

    Raises ``ValueError`` for a hash that is not 0x and 64 hex digits (lowercase), or one another
    withdrawal already records, ``UnknownWithdrawal``, and ``WithdrawalResolved`` unless pending.
    """
    if not isinstance(tx_hash, str) or not _TX_HASH.fullmatch(tx_hash.lower()):
        raise ValueError("a transaction hash is 0x and 64 hex digits")
    try:
        return await _resolve(pool, withdrawal_id, "completed", tx_hash=tx_hash.lower())
    except asyncpg.UniqueViolationError:
        raise ValueError("another withdrawal already records this transaction") from None


async def reject(pool: asyncpg.Pool, withdrawal_id: int, reason: str) -> Withdrawal:
    """The operator refuses the withdrawal: its funds go back to where they came from."""
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_LEN or not reason.isprintable():
        raise ValueError(f"a reason is 1 to {MAX_REASON_LEN} printable characters")
    return await _resolve(pool, withdrawal_id, "rejected", reason=reason)


async def cancel(pool: asyncpg.Pool, withdrawal_id: int, *, account_name: str) -> Withdrawal:
    """The owner takes back a pending withdrawal; another account's counts as unknown."""
    return await _resolve(pool, withdrawal_id, "cancelled", account_name=account_name)


async def get(pool: asyncpg.Pool, withdrawal_id: int) -> Withdrawal | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE w.id = $1", withdrawal_id)  # noqa: S608
    return None if row is None else _withdrawal(row)


async def listing(
    pool: asyncpg.Pool,
    *,
    account_name: str | None = None,
    state: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Withdrawal]:
    """Withdrawals newest first: one account's (or everyone's), in one ``state`` (or any), with
    ids below ``before``."""
    rows = await pool.fetch(
        f"""
        SELECT {_COLUMNS} FROM {_FROM}
        WHERE ($1::text IS NULL OR a.name = $1) AND ($2::text IS NULL OR w.state = $2)
          AND ($3::bigint IS NULL OR w.id < $3)
        ORDER BY w.id DESC LIMIT $4
        """,  # noqa: S608
        account_name,
        state,
        before,
        limit,
    )
    return [_withdrawal(row) for row in rows]
