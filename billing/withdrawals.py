"""Withdrawals: an account takes funds out of IPSX, to its own wallet address.

Requesting a withdrawal reserves the amount as a hold (``withdrawal:<reference>``): the funds stay
on the books but can no longer be spent. The destination is always the account's own address (the
wallet it signs in with), so a leaked API key can at most move funds to their owner.

The chain payer (:mod:`billing.withdrawal_sender`, run by ``ipsx chain watch --send-withdrawals``)
sends the tokens from the operator's wallet:

- ``pending`` — waiting for the sender (above the sender's approval limit, until the operator
  approves it); the owner may ``cancel`` it, the operator ``reject`` it;
- ``sending`` — the sender signed an ERC-20 ``transfer`` and stored it before broadcasting it; the
  withdrawal stays here until that very transaction, or a fee replacement of it with the same
  nonce, is confirmed (nobody may cancel or reject it meanwhile: it may land at any moment). A
  transfer that can never be mined (its nonce was taken by another transaction) sends the
  withdrawal back to ``pending``;
- ``completed`` — the transfer is ``confirmations`` deep with status 1 and exactly the Transfer
  asked for: the hold is posted to ``external:chain`` (where tokens leave the books) and the
  transaction hash recorded;
- ``failed`` — the transfer reverted (e.g. the operator's wallet lacked tokens): the hold is kept
  and the operator decides: ``approve`` (send it again), ``complete`` by hand, or ``reject``; the
  owner may also ``cancel`` it;
- ``rejected`` / ``cancelled`` — the hold is voided back.

Every transition is one row of :data:`TRANSITIONS`, applied by one function with the row locked,
so each withdrawal is resolved exactly once. The operator can still complete a pending (or
failed) withdrawal by hand with the hash of a transfer made outside IPSX; when the sender runs,
it must not also be paid by hand.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import Final

import asyncpg

from billing import holds, payouts
from billing.accounts import get_account
from billing.errors import BillingError, InsufficientFunds, InvalidAmount, UnknownAccount
from billing.ledger import MAX_AMOUNT, Amount, lock_funds_in, provider_account, requester_account

CHAIN = "external:chain"  # the ledger's image of the chain: tokens withdrawn leave the books here

SOURCES = {"balance": requester_account, "earnings": provider_account}
"""Where a withdrawal takes its funds: the account's spendable ``balance`` (as a requester) or its
``earnings`` (as a provider)."""

_TX_HASH = re.compile(r"0x[0-9a-f]{64}")
MAX_REASON_LEN = 200

TRANSITIONS: Final[dict[str, tuple[frozenset[str], str]]] = {
    # action: (the states it applies to, the state it leads to)
    "complete": (frozenset({"pending", "failed"}), "completed"),  # the operator, by hand
    "reject": (frozenset({"pending", "failed"}), "rejected"),
    "cancel": (frozenset({"pending", "failed"}), "cancelled"),  # the owner
    "approve": (frozenset({"pending", "failed"}), "pending"),  # the operator lets the sender send it
    "claim": (frozenset({"pending"}), "sending"),  # the sender stored a signed transfer
    "confirm": (frozenset({"sending"}), "completed"),  # ... which is confirmed
    "fail": (frozenset({"sending"}), "failed"),  # ... which reverted
    "requeue": (frozenset({"sending"}), "pending"),  # ... which can never be mined
}
"""The withdrawal lifecycle: each action, where it may start and where it ends."""

FINAL_STATES: Final = frozenset({"completed", "rejected", "cancelled"})
"""The states that resolve the hold: posted to the chain (completed) or voided back."""


class WithdrawalError(BillingError):
    """A withdrawal call the withdrawal's state or its terms do not allow."""


class UnknownWithdrawal(WithdrawalError, LookupError):
    def __init__(self, withdrawal_id: int) -> None:
        super().__init__(f"no withdrawal {withdrawal_id}")
        self.withdrawal_id = withdrawal_id


class WithdrawalResolved(WithdrawalError):
    """The withdrawal's ``state`` does not allow the call (it is resolved, or being sent)."""

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
    state: str  # pending | sending | completed | failed | rejected | cancelled
    tx_hash: str | None  # the transfer, once completed
    reason: str | None  # why it was rejected, or why its transfer failed
    key_id: str | None  # the API key that asked for it; None for a wallet session or the CLI
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    approved_at: dt.datetime | None = None  # when the operator let the sender send it


_COLUMNS = """w.id, w.reference, a.name, w.ledger_account, w.amount::text, w.address, w.state,
              w.tx_hash, w.reason, w.key_id, w.created_at, w.resolved_at, w.approved_at"""
_FROM = "withdrawals w JOIN accounts a ON a.id = w.account_id"


def _withdrawal(row: asyncpg.Record) -> Withdrawal:
    source = "earnings" if row[3].startswith("provider:") else "balance"
    return Withdrawal(
        int(row[0]), row[1], row[2], source, Amount(int(row[4])), row[5], row[6], row[7], row[8],
        row[9], row[10], row[11], row[12],
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
    source's available funds are short: its balance less what channels speak for (see
    :func:`_free_in`), checked and reserved in one transaction under the account's funds lock, so
    concurrent withdrawals and payout promises cannot both take the same funds.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(sorted(SOURCES))}")
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:  # a bool or float is no amount
        raise InvalidAmount("must be a positive number of base units within NUMERIC(78,0)")
    ledger_account = SOURCES[source](account_name)
    account = await get_account(pool, account_name)
    if account is None:
        raise UnknownAccount(account_name)
    reference = reference or f"w-{secrets.token_hex(12)}"
    async with pool.acquire() as conn, conn.transaction():
        await lock_funds_in(conn, ledger_account)
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
            # Reserved first, checked after: the reserve's row lock keeps every movement of the
            # balance out until the commit, so the check sees what the commit will.
            try:
                await holds.reserve_in(conn, ledger_account, amount, _hold_reference(reference))
                reserved: int = amount
            except InsufficientFunds:
                reserved = 0
            free = reserved + await _free_in(conn, account.id, account.name, source)
            if reserved == 0 or free < amount:  # rolls the withdrawal and its hold back
                raise InsufficientFunds(ledger_account, amount, max(free, 0))
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE w.reference = $1", reference)  # noqa: S608
    withdrawal = _withdrawal(row)
    if row_id is None and (
        withdrawal.account != account.name or withdrawal.amount != amount or withdrawal.source != source
    ):
        raise ReferenceReused()
    return withdrawal, row_id is not None


# What the account's open requester channels back: their deposits less what their proofs already
# pay. Settling the channel refunds that part on-chain, so it is not the requester's to withdraw.
_CHANNEL_BACKED = """
SELECT COALESCE(sum(GREATEST(c.deposit - c.proof_balance, 0)), 0) FROM channels c
WHERE c.account_id = $1 AND c.role = 'requester' AND c.state <> 'settled'
"""

_FREE_BALANCE = f"""
SELECT (COALESCE((SELECT balance FROM ledger_balances WHERE account = $2), 0) - ({_CHANNEL_BACKED}))::text
"""  # noqa: S608


async def _free_in(conn: asyncpg.Connection, account_id: int, account_name: str, source: str) -> int:
    """What of the source's balance is free for withdrawals (negative when channels speak for more
    than it holds), read on ``conn``.

    Called with the funds lock (:func:`billing.ledger.lock_funds_in`) held and the balance row
    locked by the reserve, so no promise, deposit, charge or settlement of the account moves
    between this check and the commit. The rule:

    - ``earnings``: the balance less what the provider's open payout channels promise (the
      provider cashes those on-chain; the settlement takes them from the earnings);
    - ``balance``: the balance less what the requester's open (unsettled) channels back, each
      its deposit less its proof. The deposit was credited to the balance when the channel
      opened, and settling the channel refunds the unproven rest on-chain: withdrawn as well,
      it would be paid out twice, the treasury covering the second time.
    """
    if source == "earnings":
        return await payouts.unpromised_in(conn, account_name)
    return int(await conn.fetchval(_FREE_BALANCE, account_id, requester_account(account_name)))


async def _apply_in(
    conn: asyncpg.Connection,
    withdrawal_id: int,
    action: str,
    *,
    tx_hash: str | None = None,
    reason: str | None = None,
    account_name: str | None = None,
) -> Withdrawal:
    """Apply ``action`` (a key of :data:`TRANSITIONS`) on ``conn``, inside the caller's transaction,
    with the row locked: a final state resolves the hold (posted to the chain when completed,
    voided otherwise), the others keep it. ``reason`` replaces the stored one (``None`` clears it).

    Raises ``UnknownWithdrawal`` (also when ``account_name`` is given and is not the owner's) and
    ``WithdrawalResolved`` when the withdrawal's state does not allow the action.
    """
    allowed, target = TRANSITIONS[action]
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {_FROM} WHERE w.id = $1 FOR UPDATE OF w",  # noqa: S608
        withdrawal_id,
    )
    if row is None or (account_name is not None and row[2] != account_name):
        raise UnknownWithdrawal(withdrawal_id)
    withdrawal = _withdrawal(row)
    if withdrawal.state not in allowed:
        raise WithdrawalResolved(withdrawal_id, withdrawal.state)
    if target in FINAL_STATES:
        payouts = [(CHAIN, withdrawal.amount)] if target == "completed" else []
        await holds.resolve_in(conn, _hold_reference(withdrawal.reference), payouts)
    await conn.execute(
        """
        UPDATE withdrawals SET state = $2, tx_hash = $3, reason = $4,
               resolved_at = CASE WHEN $5 THEN now() END,
               approved_at = CASE WHEN $6 THEN COALESCE(approved_at, now()) ELSE approved_at END
        WHERE id = $1
        """,
        withdrawal_id,
        target,
        tx_hash,
        reason,
        target in FINAL_STATES,
        action == "approve",
    )
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE w.id = $1", withdrawal_id)  # noqa: S608
    return _withdrawal(row)


async def _apply(pool: asyncpg.Pool, withdrawal_id: int, action: str, **details: str | None) -> Withdrawal:
    async with pool.acquire() as conn, conn.transaction():
        return await _apply_in(conn, withdrawal_id, action, **details)


def _checked_hash(tx_hash: str) -> str:
    if not isinstance(tx_hash, str) or not _TX_HASH.fullmatch(tx_hash.lower()):
        raise ValueError("a transaction hash is 0x and 64 hex digits")
    return tx_hash.lower()


async def complete(pool: asyncpg.Pool, withdrawal_id: int, tx_hash: str) -> Withdrawal:
    """The operator sent the tokens by hand in ``tx_hash``: the withdrawn funds leave the books.

    Applies to a pending or failed withdrawal, never to one the sender is sending. Raises
    ``ValueError`` for a hash that is not 0x and 64 hex digits, or one another withdrawal already
    records, ``UnknownWithdrawal``, and ``WithdrawalResolved``.
    """
    tx_hash = _checked_hash(tx_hash)
    try:
        return await _apply(pool, withdrawal_id, "complete", tx_hash=tx_hash)
    except asyncpg.UniqueViolationError:
        raise ValueError("another withdrawal already records this transaction") from None


async def reject(pool: asyncpg.Pool, withdrawal_id: int, reason: str) -> Withdrawal:
    """The operator refuses a pending or failed withdrawal: its funds go back where they came from."""
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_LEN or not reason.isprintable():
        raise ValueError(f"a reason is 1 to {MAX_REASON_LEN} printable characters")
    return await _apply(pool, withdrawal_id, "reject", reason=reason)


async def cancel(pool: asyncpg.Pool, withdrawal_id: int, *, account_name: str) -> Withdrawal:
    """The owner takes back a pending (or failed) withdrawal; another account's counts as unknown."""
    return await _apply(pool, withdrawal_id, "cancel", account_name=account_name)


async def approve(pool: asyncpg.Pool, withdrawal_id: int) -> Withdrawal:
    """The operator lets the sender send the withdrawal: one above the sender's approval limit,
    or a failed one again (after topping up the wallet); it is ``pending`` afterwards. Approving
    twice is harmless. Raises ``UnknownWithdrawal`` and ``WithdrawalResolved``."""
    return await _apply(pool, withdrawal_id, "approve")


# ---- for the chain payer (billing.withdrawal_sender), inside its transactions ---------------------


async def claimable_in(
    conn: asyncpg.Connection, *, limit: int, approval_above: int | None = None
) -> list[Withdrawal]:
    """Up to ``limit`` pending withdrawals the sender may send, oldest first, locked (rows another
    transaction holds are skipped): all of them, or with ``approval_above``, those of at most that
    many base units and those the operator approved."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM {_FROM}
        WHERE w.state = 'pending' AND ($2::numeric IS NULL OR w.amount <= $2 OR w.approved_at IS NOT NULL)
        ORDER BY w.id LIMIT $1 FOR UPDATE OF w SKIP LOCKED
        """,  # noqa: S608
        limit,
        approval_above,
    )
    return [_withdrawal(row) for row in rows]


async def claim_in(conn: asyncpg.Connection, withdrawal_id: int) -> Withdrawal:
    """``pending`` → ``sending``: its signed transfer is stored in the same transaction."""
    return await _apply_in(conn, withdrawal_id, "claim")


async def confirm_in(conn: asyncpg.Connection, withdrawal_id: int, tx_hash: str) -> Withdrawal:
    """``sending`` → ``completed``: its transfer ``tx_hash`` is confirmed; the hold is posted."""
    return await _apply_in(conn, withdrawal_id, "confirm", tx_hash=_checked_hash(tx_hash))


async def fail_in(conn: asyncpg.Connection, withdrawal_id: int, reason: str) -> Withdrawal:
    """``sending`` → ``failed``: its transfer did not move the tokens; the hold is kept."""
    return await _apply_in(conn, withdrawal_id, "fail", reason=reason[:MAX_REASON_LEN])


async def requeue_in(conn: asyncpg.Connection, withdrawal_id: int) -> Withdrawal:
    """``sending`` → ``pending``: its transfer can never be mined; the sender makes a new one."""
    return await _apply_in(conn, withdrawal_id, "requeue")


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
