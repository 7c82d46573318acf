"""The double-entry ledger: token movements between named accounts, in integer base units.

Every row of ``ledger_transfers`` debits one account and credits another by the same amount, so
the books balance by construction; a balance is derived as credits minus debits. Account names
are namespaced strings: ``requester:<name>``, ``operator:treasury``, ….
"""

from __future__ import annotations

import re
from typing import NewType

import asyncpg

from billing.accounts import validate_name
from billing.errors import InvalidAmount, UnknownAccount

Amount = NewType("Amount", int)

DECIMALS = 18
BASE_UNITS = 10**DECIMALS  # base units in one IPSX
MAX_AMOUNT = Amount(10**78 - 1)  # the largest value NUMERIC(78,0) holds

TREASURY = "operator:treasury"

_AMOUNT = re.compile(r"([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_AMOUNT_MAX_LEN = 100


def requester_account(name: str) -> str:
    """The ledger account of the requester called ``name``; raises ``InvalidAccount``."""
    return f"requester:{validate_name(name)}"


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


_INSERT = """
INSERT INTO ledger_transfers (debit_account, credit_account, amount, kind, reference)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (reference) DO NOTHING
RETURNING id
"""


async def transfer(
    pool: asyncpg.Pool,
    *,
    debit: str,
    credit: str,
    amount: Amount,
    kind: str,
    reference: str | None = None,
) -> bool:
    """Move ``amount`` base units from ``debit`` to ``credit``.

    ``reference`` is an idempotency key: when a transfer with it already exists nothing is written
    and ``False`` is returned (the earlier transfer's amount is not compared). Raises
    ``InvalidAmount`` for an amount that is not a positive int within NUMERIC(78,0), and
    ``ValueError`` when the accounts are empty or the same.
    """
    _check_transfer(debit, credit, amount)
    row_id = await pool.fetchval(_INSERT, debit, credit, int(amount), kind, reference)
    return row_id is not None


async def balance(pool: asyncpg.Pool, account: str) -> Amount:
    """Credits minus debits of ``account``; 0 for an account never used. May be negative."""
    total = await pool.fetchval(
        """
        SELECT (COALESCE((SELECT SUM(amount) FROM ledger_transfers WHERE credit_account = $1), 0)
              - COALESCE((SELECT SUM(amount) FROM ledger_transfers WHERE debit_account = $1), 0))::text
        """,
        account,
    )
    return Amount(int(total))


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
        row_id = await conn.fetchval(_INSERT, TREASURY, credit, int(amount), "credit", reference)
    return row_id is not None
