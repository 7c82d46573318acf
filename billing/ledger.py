"""The double-entry ledger: token movements between named accounts, in integer base units.

A movement is a balanced set of legs posted in one transaction, idempotent by its reference; each
leg (a ``ledger_transfers`` row) debits one account and credits another by the same amount, so the
books balance by construction. ``ledger_balances`` is updated in the same transaction, row-locked,
so concurrent movements can never take an account below zero (only the treasury and ``external:``
accounts may be negative); :func:`check_balances` verifies it against the entries. Account names
are namespaced strings: ``requester:<name>``, ``provider:<name>``, ``hold:<account>``,
``operator:treasury``, ``operator:commission``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NewType

import asyncpg

from billing import db
from billing.accounts import validate_name
from billing.errors import InsufficientFunds, InvalidAmount, UnknownAccount

Amount = NewType("Amount", int)

DECIMALS = 18
BASE_UNITS = 10**DECIMALS  # base units in one IPSX
MAX_AMOUNT = Amount(10**78 - 1)  # the largest value NUMERIC(78,0) holds

TREASURY = "operator:treasury"
COMMISSION = "operator:commission"

_AMOUNT = re.compile(r"([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_AMOUNT_MAX_LEN = 100


def requester_account(name: str) -> str:
    """The ledger account of the requester called ``name``; raises ``InvalidAccount``."""
    return f"requester:{validate_name(name)}"


def provider_account(name: str) -> str:
    """The ledger account the provider called ``name`` is paid into; raises ``InvalidAccount``."""
    return f"provider:{validate_name(name)}"


async def lock_funds_in(conn: asyncpg.Connection, account: str) -> None:
    """Hold the lock on ``account``'s funds until the caller's transaction ends (a PostgreSQL
    advisory lock; movements do not take it). Code that checks what of a balance is not spoken for
    elsewhere (promised by payout channels, backing requester channels) and then commits some of
    it takes this lock first, so two such checks never pass on the same funds."""
    await db.advisory_lock_in(conn, f"ipsx.billing.funds:{account}")


def may_overdraw(account: str) -> bool:
    """Whether ``account`` may go below zero: the treasury (it issues credits) and the ledger's
    images of outside parties (``external:…``, e.g. the chain)."""
    return account == TREASURY or account.startswith("external:")


@dataclass(frozen=True, slots=True)
class Leg:
    """One entry of a movement: ``amount`` base units from ``debit`` to ``credit``."""

    debit: str
    credit: str
    amount: Amount


def parse_amount(text: str) -> Amount:
    """Parse a decimal IPSX amount (``"12.5"``) into base units, exactly.

    Raises ``InvalidAmount`` for anything but plain ASCII digits with an optional fraction of at
    most 18 digits (no sign, exponent, separators or surrounding text), or a value beyond
    NUMERIC(78,0).
    """
    if not isinstance(text, str) or len(text) > _AMOUNT_MAX_LEN:
        raise InvalidAmount("not a decimal number")
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise InvalidAmount("not a non-negative decimal number")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > DECIMALS:
        raise InvalidAmount(f"more than {DECIMALS} decimals")
    value = int(whole) * BASE_UNITS + int(fraction.ljust(DECIMALS, "0"))
    if value > MAX_AMOUNT:
        raise InvalidAmount("too large")
    return Amount(value)


def format_amount(amount: Amount) -> str:
    """Base units as a decimal IPSX string without trailing zeros: ``"12.5"``, ``"3"``, ``"-0.01"``."""
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(int(amount)), BASE_UNITS)
    if fraction == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(fraction).rjust(DECIMALS, '0').rstrip('0')}"


def _check_transfer(debit: str, credit: str, amount: object) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidAmount("not an integer number of base units")
    if not 0 < amount <= MAX_AMOUNT:
        raise InvalidAmount("must be positive and fit NUMERIC(78,0)")
    if not debit or not credit or debit == credit:
        raise ValueError("a transfer needs two distinct, non-empty accounts")


_INSERT_MOVEMENT = """
INSERT INTO ledger_movements (reference, kind) VALUES ($1, $2)
ON CONFLICT (reference) DO NOTHING
RETURNING id
"""

# The row lock taken by the UPDATE serialises movements on one account: the check and the debit
# happen as one step, so parallel debits cannot both pass on the same funds.
_APPLY_DELTA = """
UPDATE ledger_balances SET balance = balance + $2::numeric
WHERE account = $1 AND (overdraft OR balance + $2::numeric >= 0)
RETURNING balance
"""

_NEW_ACCOUNT = """
INSERT INTO ledger_balances (account, balance, overdraft) VALUES ($1, $2, $3)
ON CONFLICT (account) DO NOTHING
RETURNING balance
"""

_INSERT_LEGS = """
INSERT INTO ledger_transfers (movement_id, debit_account, credit_account, amount, kind)
SELECT $1, l.debit, l.credit, l.amount, $2
FROM unnest($3::text[], $4::text[], $5::numeric[]) AS l(debit, credit, amount)
"""


async def _apply(conn: asyncpg.Connection, account: str, delta: int) -> None:
    overdraft = may_overdraw(account)
    for _ in range(2):  # a second round only if another movement created the account meanwhile
        if await conn.fetchval(_APPLY_DELTA, account, delta) is not None:
            return
        have = await conn.fetchval("SELECT balance FROM ledger_balances WHERE account = $1", account)
        if have is not None:
            raise InsufficientFunds(account, -delta, int(have))
        if delta < 0 and not overdraft:
            raise InsufficientFunds(account, -delta, 0)
        if await conn.fetchval(_NEW_ACCOUNT, account, delta, overdraft) is not None:
            return
    raise RuntimeError(f"ledger balance row of {account} neither updatable nor insertable")


async def post_in(
    conn: asyncpg.Connection, legs: Sequence[Leg], *, kind: str, reference: str | None = None
) -> int | None:
    """Post one movement on ``conn``, which must be inside a transaction; see :func:`post`."""
    if not legs:
        raise ValueError("a movement needs at least one leg")
    for leg in legs:
        _check_transfer(leg.debit, leg.credit, leg.amount)
    movement_id = await conn.fetchval(_INSERT_MOVEMENT, reference, kind)
    if movement_id is None:
        return None
    deltas: dict[str, int] = {}
    for leg in legs:
        deltas[leg.debit] = deltas.get(leg.debit, 0) - leg.amount
        deltas[leg.credit] = deltas.get(leg.credit, 0) + leg.amount
    # Accounts are locked in one global order, so two movements never wait on each other crosswise.
    for account in sorted(deltas):
        delta = deltas[account]
        if delta == 0:
            continue
        await _apply(conn, account, delta)
    await conn.execute(
        _INSERT_LEGS,
        movement_id,
        kind,
        [leg.debit for leg in legs],
        [leg.credit for leg in legs],
        [int(leg.amount) for leg in legs],
    )
    return int(movement_id)


async def post(
    pool: asyncpg.Pool, legs: Sequence[Leg], *, kind: str, reference: str | None = None
) -> int | None:
    """Post the balanced movement made of ``legs`` in one transaction; returns its id.

    ``reference`` is an idempotency key: when a movement with it exists nothing is written and
    ``None`` is returned (the earlier movement is not compared). Raises ``InsufficientFunds``
    (and writes nothing) when an account that may not overdraw would go below zero,
    ``InvalidAmount`` for a leg amount that is not a positive int within NUMERIC(78,0), and
    ``ValueError`` for no legs or a leg whose accounts are empty or the same.
    """
    async with pool.acquire() as conn, conn.transaction():
        return await post_in(conn, legs, kind=kind, reference=reference)


async def transfer(
    pool: asyncpg.Pool,
    *,
    debit: str,
    credit: str,
    amount: Amount,
    kind: str,
    reference: str | None = None,
) -> bool:
    """Move ``amount`` base units from ``debit`` to ``credit``: a movement of one leg.

    Returns ``False`` when ``reference`` was already used; raises as :func:`post` does.
    """
    return await post(pool, [Leg(debit, credit, amount)], kind=kind, reference=reference) is not None


async def balance(pool: asyncpg.Pool, account: str) -> Amount:
    """Credits minus debits of ``account``; 0 for an account never used."""
    total = await pool.fetchval("SELECT balance::text FROM ledger_balances WHERE account = $1", account)
    return Amount(0 if total is None else int(total))


async def check_balances(pool: asyncpg.Pool) -> dict[str, tuple[int, int]]:
    """Accounts whose stored balance differs from credits minus debits of their entries, as
    ``{account: (stored, from_entries)}``; empty when the books agree (and sum to zero)."""
    rows = await pool.fetch(
        """
        WITH entries AS (
            SELECT account, SUM(delta) AS total
            FROM (SELECT credit_account AS account, amount AS delta FROM ledger_transfers
                  UNION ALL
                  SELECT debit_account, -amount FROM ledger_transfers) AS legs
            GROUP BY account
        )
        SELECT COALESCE(b.account, e.account) AS account,
               COALESCE(b.balance, 0)::text AS stored, COALESCE(e.total, 0)::text AS derived
        FROM ledger_balances b FULL JOIN entries e ON e.account = b.account
        WHERE COALESCE(b.balance, 0) <> COALESCE(e.total, 0)
        """
    )
    return {row["account"]: (int(row["stored"]), int(row["derived"])) for row in rows}


async def credit_account(pool: asyncpg.Pool, name: str, amount: Amount, reference: str) -> bool:
    """The operator credits requester ``name`` from the treasury; idempotent by ``reference``.

    Returns ``False`` when ``reference`` was already used. Raises ``UnknownAccount`` when no
    account is called ``name``, and ``InvalidAmount`` as :func:`transfer` does.
    """
    credit = requester_account(name)
    _check_transfer(TREASURY, credit, amount)
    async with pool.acquire() as conn, conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM accounts WHERE name = $1", validate_name(name))
        if not exists:
            raise UnknownAccount(name)
        movement = await post_in(conn, [Leg(TREASURY, credit, amount)], kind="credit", reference=reference)
    return movement is not None
