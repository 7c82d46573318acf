"""Exact token amounts and the double-entry ledger on real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.accounts import create_account
from billing.errors import InvalidAccount, InvalidAmount, UnknownAccount
from billing.ledger import (
    MAX_AMOUNT,
    TREASURY,
    Amount,
    balance,
    credit_account,
    format_amount,
    parse_amount,
    requester_account,
    transfer,
)

ALICE = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
IPSX = 10**18


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", IPSX),
        ("12.5", 12 * IPSX + IPSX // 2),
        ("0.000000000000000001", 1),
        ("0.1", 10**17),
        ("00.10", 10**17),
        ("1.000000000000000000", IPSX),
        (
            "123456789012345678901234567890.123456789012345678",
            123456789012345678901234567890123456789012345678,
        ),
        ("9" * 60 + "." + "9" * 18, 10**78 - 1),
    ],
)
def test_parse_amount_call(text: str, expected: int) -> None:
    assert parse_amount(text) == expected
    assert type(parse_amount(text)) is int


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        ".5",
        "5.",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1e18",
        "1_000",
        "0x10",
        "nan",
        "inf",
        "١٢",  # Arabic-Indic digits, which int() would accept
        "1.0000000000000000001",  # 19 decimals
        "0.0000000000000000000",
        "1,5",
        "1" * 61,  # beyond NUMERIC(78,0) once scaled
        "1" * 1000,
        None,
        12,
        1.5,
    ],
)
def test_parse_amount_refuses(text: Any) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(text)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0, "0"),
        (1, "0.000000000000000001"),
        (IPSX, "1"),
        (12 * IPSX + IPSX // 2, "12.5"),
        (-(10**16), "-0.01"),
        (2**200, "1606938044258990275541962092341162602522202.993782792835301376"),
    ],
)
def test_format_amount_call(amount: int, text: str) -> None:
    assert format_amount(Amount(amount)) == text


@given(st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_format_amount_round_trips(amount: int) -> None:
    assert parse_amount(format_amount(Amount(amount))) == amount


async def test_transfer_state(pool: asyncpg.Pool) -> None:
    assert await balance(pool, "requester:alice") == 0
    assert await transfer(
        pool, debit=TREASURY, credit="requester:alice", amount=parse_amount("12.5"), kind="t"
    )
    assert await transfer(
        pool,
        debit="requester:alice",
        credit="provider:bob",
        amount=parse_amount("0.000000000000000001"),
        kind="t",
    )
    assert await balance(pool, "requester:alice") == parse_amount("12.499999999999999999")
    assert await balance(pool, "provider:bob") == 1
    assert await balance(pool, TREASURY) == -parse_amount("12.5")


async def test_transfer_huge_amounts_are_exact(pool: asyncpg.Pool) -> None:
    big = Amount(2**64 + 7)
    huge = Amount(10**77 + 3)
    assert await transfer(pool, debit=TREASURY, credit="requester:alice", amount=big, kind="t")
    assert await transfer(pool, debit=TREASURY, credit="requester:alice", amount=huge, kind="t")
    assert await balance(pool, "requester:alice") == 2**64 + 7 + 10**77 + 3
    assert await balance(pool, TREASURY) == -(2**64 + 7 + 10**77 + 3)
    stored = await pool.fetch("SELECT amount::text AS amount FROM ledger_transfers ORDER BY id")
    assert [int(row["amount"]) for row in stored] == [2**64 + 7, 10**77 + 3]


async def test_transfer_is_idempotent_by_reference(pool: asyncpg.Pool) -> None:
    amount = parse_amount("5")
    first = await transfer(
        pool, debit=TREASURY, credit="requester:alice", amount=amount, kind="t", reference="r1"
    )
    again = await transfer(
        pool, debit=TREASURY, credit="requester:alice", amount=amount, kind="t", reference="r1"
    )
    assert (first, again) == (True, False)
    assert await balance(pool, "requester:alice") == amount
    # No reference: every call moves money.
    assert await transfer(pool, debit=TREASURY, credit="requester:alice", amount=amount, kind="t")
    assert await transfer(pool, debit=TREASURY, credit="requester:alice", amount=amount, kind="t")
    assert await balance(pool, "requester:alice") == 3 * amount


async def test_transfer_concurrent_same_reference_moves_once(pool: asyncpg.Pool) -> None:
    amount = parse_amount("1")
    results = await asyncio.gather(
        *(
            transfer(
                pool, debit=TREASURY, credit="requester:alice", amount=amount, kind="t", reference="same"
            )
            for _ in range(10)
        )
    )
    assert sorted(results) == [False] * 9 + [True]
    assert await balance(pool, "requester:alice") == amount


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT + 1, True, 1.5, "1"])
async def test_transfer_refuses_bad_amounts(pool: asyncpg.Pool, amount: Any) -> None:
    with pytest.raises(InvalidAmount):
        await transfer(pool, debit=TREASURY, credit="requester:alice", amount=amount, kind="t")
    assert await pool.fetchval("SELECT count(*) FROM ledger_transfers") == 0


@pytest.mark.parametrize(("debit", "credit"), [("a", "a"), ("", "b"), ("a", "")])
async def test_transfer_refuses_bad_accounts(pool: asyncpg.Pool, debit: str, credit: str) -> None:
    with pytest.raises(ValueError, match="accounts"):
        await transfer(pool, debit=debit, credit=credit, amount=Amount(1), kind="t")


async def test_books_balance(pool: asyncpg.Pool) -> None:
    moves = [
        (TREASURY, "requester:a", 7),
        ("requester:a", "provider:p", 3),
        ("provider:p", "operator:fees", 1),
    ]
    for debit, credit, amount in moves:
        await transfer(pool, debit=debit, credit=credit, amount=Amount(amount), kind="t")
    accounts = {name for move in moves for name in move[:2]}
    total = sum([await balance(pool, name) for name in accounts])
    assert total == 0


async def test_credit_account_call(pool: asyncpg.Pool) -> None:
    await create_account(pool, address=ALICE, name="alice")
    assert await credit_account(pool, "Alice", parse_amount("100"), "deposit-1")
    assert not await credit_account(pool, "alice", parse_amount("100"), "deposit-1")
    assert await balance(pool, requester_account("alice")) == 100 * IPSX
    assert await balance(pool, TREASURY) == -100 * IPSX
    row = await pool.fetchrow(
        "SELECT t.debit_account, t.credit_account, t.kind, m.reference"
        " FROM ledger_transfers t JOIN ledger_movements m ON m.id = t.movement_id"
    )
    assert dict(row) == {
        "debit_account": "operator:treasury",
        "credit_account": "requester:alice",
        "kind": "credit",
        "reference": "deposit-1",
    }


async def test_credit_account_refuses_unknown_account(pool: asyncpg.Pool) -> None:
    with pytest.raises(UnknownAccount) as info:
        await credit_account(pool, "ghost", parse_amount("1"), "r")
    assert info.value.name == "ghost"
    with pytest.raises(InvalidAccount):
        await credit_account(pool, "not-a-name", parse_amount("1"), "r")
    await create_account(pool, address=ALICE, name="alice")
    with pytest.raises(InvalidAmount):
        await credit_account(pool, "alice", Amount(0), "r")
    assert await pool.fetchval("SELECT count(*) FROM ledger_transfers") == 0


async def test_ledger_constraints_hold_in_the_database(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO ledger_transfers (movement_id, debit_account, credit_account, amount, kind)"
            " VALUES ($1, 'a', 'b', 0, 't')",
            await pool.fetchval("INSERT INTO ledger_movements (kind) VALUES ('t') RETURNING id"),
        )
    with pytest.raises(asyncpg.NumericValueOutOfRangeError):
        await pool.execute(
            "INSERT INTO ledger_transfers (movement_id, debit_account, credit_account, amount, kind)"
            " VALUES ($1, 'a', 'b', $2, 't')",
            await pool.fetchval("INSERT INTO ledger_movements (kind) VALUES ('t') RETURNING id"),
            10**78,
        )
