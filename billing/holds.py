"""Two-phase reserves ("holds") on the ledger.

``reserve`` moves funds from an account to its hold account (``hold:<account>``) and records a
pending hold; the funds are then neither spendable nor lost. A pending hold is resolved exactly
once: ``post`` pays parts of it to other accounts (a provider's payout, the commission) and voids
the rest back to the account in the same transaction; ``void`` returns all of it. Both the
account's available balance and its reserve are ledger balances, derived from the entries.
Reserving is safe under concurrency: the balance row is locked while it is checked and debited,
so parallel reserves can never take an account below zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from billing.errors import HoldExceeded, HoldResolved, UnknownHold
from billing.ledger import Amount, Leg, balance, post_in


def hold_account(account: str) -> str:
    """The ledger account holding ``account``'s reserved funds."""
    return f"hold:{account}"


@dataclass(frozen=True, slots=True)
class Hold:
    reference: str
    account: str
    amount: Amount
    posted: Amount  # what the resolution paid out; the rest went back to ``account``
    state: str  # pending | posted | voided


_SELECT = (
    "SELECT reference, account, amount::text, posted::text, state FROM ledger_holds WHERE reference = $1"
)


def _hold(row: asyncpg.Record) -> Hold:
    return Hold(row[0], row[1], Amount(int(row[2])), Amount(int(row[3])), row[4])


async def reserve(pool: asyncpg.Pool, account: str, amount: Amount, reference: str) -> Hold:
    """Reserve ``amount`` of ``account``'s funds under ``reference``; returns the pending hold.

    Idempotent: a second call with the same reference returns the existing hold (whatever its
    state) and moves nothing. Raises ``InsufficientFunds`` when the account's available balance
    is below ``amount`` (nothing is written), ``InvalidAmount`` for a bad amount.
    """
    async with pool.acquire() as conn, conn.transaction():
        return await reserve_in(conn, account, amount, reference)


async def reserve_in(conn: asyncpg.Connection, account: str, amount: Amount, reference: str) -> Hold:
    """:func:`reserve` on ``conn``, inside the caller's transaction."""
    created = await conn.fetchval(
        "INSERT INTO ledger_holds (reference, account, amount) VALUES ($1, $2, $3)"
        " ON CONFLICT (reference) DO NOTHING RETURNING id",
        reference,
        account,
        int(amount),
    )
    if created is not None:
        await post_in(
            conn,
            [Leg(account, hold_account(account), amount)],
            kind="reserve",
            reference=f"reserve:{reference}",
        )
    row = await conn.fetchrow(_SELECT, reference)
    return _hold(row)


async def _resolve(pool: asyncpg.Pool, reference: str, payouts: Sequence[tuple[str, Amount]]) -> Hold:
    async with pool.acquire() as conn, conn.transaction():
        return await resolve_in(conn, reference, payouts)


async def resolve_in(conn: asyncpg.Connection, reference: str, payouts: Sequence[tuple[str, Amount]]) -> Hold:
    """Post ``payouts`` out of the hold and void the rest (no payouts: void it all), on ``conn``
    inside the caller's transaction; raises as :func:`post` does."""
    kind = "post" if payouts else "void"
    row = await conn.fetchrow(_SELECT + " FOR UPDATE", reference)
    if row is None:
        raise UnknownHold(reference)
    hold = _hold(row)
    if hold.state != "pending":
        raise HoldResolved(reference, hold.state)
    total = sum(int(amount) for _, amount in payouts)
    if total > hold.amount or any(int(amount) < 0 for _, amount in payouts):
        raise HoldExceeded(reference, hold.amount, total)
    held = hold_account(hold.account)
    legs = [Leg(held, credit, amount) for credit, amount in payouts if amount > 0]
    if hold.amount - total > 0:
        legs.append(Leg(held, hold.account, Amount(hold.amount - total)))
    await post_in(conn, legs, kind=kind, reference=f"{kind}:{reference}")
    state = "posted" if payouts else "voided"
    await conn.execute(
        "UPDATE ledger_holds SET state = $2, posted = $3, resolved_at = now() WHERE reference = $1",
        reference,
        state,
        total,
    )
    return Hold(reference, hold.account, hold.amount, Amount(total), state)


async def post(pool: asyncpg.Pool, reference: str, payouts: Sequence[tuple[str, Amount]]) -> Hold:
    """Resolve the hold by paying ``payouts`` (``(credit_account, amount)`` pairs) out of it and
    returning the rest to its account, in one movement.

    Raises ``UnknownHold``, ``HoldResolved`` when it was already posted or voided (a hold resolves
    exactly once), and ``HoldExceeded`` when the payouts total more than the hold or one is negative.
    """
    if not payouts:
        raise ValueError("post needs at least one payout; use void to release a hold")
    return await _resolve(pool, reference, payouts)


async def void(pool: asyncpg.Pool, reference: str) -> Hold:
    """Resolve the hold by returning all of it to its account; raises as :func:`post` does."""
    return await _resolve(pool, reference, ())


async def get(pool: asyncpg.Pool, reference: str) -> Hold | None:
    row = await pool.fetchrow(_SELECT, reference)
    return None if row is None else _hold(row)


async def reserved(pool: asyncpg.Pool, account: str) -> Amount:
    """What ``account`` has in pending holds: the balance of its hold account."""
    return await balance(pool, hold_account(account))
