"""Movements, two-phase holds and concurrency on the real PostgreSQL ledger."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from billing import holds
from billing.errors import HoldExceeded, HoldResolved, InsufficientFunds, InvalidAmount, UnknownHold
from billing.ledger import (
    COMMISSION,
    TREASURY,
    Amount,
    Leg,
    balance,
    check_balances,
    post,
    transfer,
)

IPSX = 10**18
ALICE = "requester:alice"
BOB = "provider:bob"


async def fund(pool: asyncpg.Pool, account: str, amount: int) -> None:
    await transfer(pool, debit=TREASURY, credit=account, amount=Amount(amount), kind="credit")


async def test_post_call_moves_every_leg_in_one_movement(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    movement = await post(pool, [Leg(ALICE, BOB, Amount(7)), Leg(ALICE, COMMISSION, Amount(2))], kind="pay")
    assert movement is not None
    rows = await pool.fetch(
        "SELECT debit_account, credit_account, amount::text, kind FROM ledger_transfers"
        " WHERE movement_id = $1 ORDER BY id",
        movement,
    )
    assert [tuple(row) for row in rows] == [(ALICE, BOB, "7", "pay"), (ALICE, COMMISSION, "2", "pay")]
    assert (await balance(pool, ALICE), await balance(pool, BOB), await balance(pool, COMMISSION)) == (
        1,
        7,
        2,
    )


async def test_post_writes_nothing_when_one_leg_overdraws(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    with pytest.raises(InsufficientFunds) as info:
        await post(pool, [Leg(ALICE, BOB, Amount(7)), Leg(ALICE, COMMISSION, Amount(4))], kind="pay")
    assert (info.value.account, info.value.needed, info.value.available) == (ALICE, 11, 10)
    assert await balance(pool, ALICE) == 10
    assert await balance(pool, BOB) == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_movements WHERE kind = 'pay'") == 0


async def test_an_account_never_credited_cannot_pay(pool: asyncpg.Pool) -> None:
    with pytest.raises(InsufficientFunds) as info:
        await transfer(pool, debit=BOB, credit=ALICE, amount=Amount(1), kind="t")
    assert (info.value.account, info.value.available) == (BOB, 0)
    assert await check_balances(pool) == {}


async def test_treasury_and_external_accounts_may_go_negative(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 5)
    await transfer(pool, debit="external:chain", credit=BOB, amount=Amount(3), kind="deposit")
    assert await balance(pool, TREASURY) == -5
    assert await balance(pool, "external:chain") == -3


async def test_post_is_idempotent_by_reference(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    legs = [Leg(ALICE, BOB, Amount(4))]
    first = await post(pool, legs, kind="pay", reference="invoice-1")
    again = await post(pool, legs, kind="pay", reference="invoice-1")
    assert first is not None and again is None
    assert await balance(pool, BOB) == 4


async def test_post_refuses_no_legs_and_bad_amounts(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="at least one leg"):
        await post(pool, [], kind="pay")
    with pytest.raises(InvalidAmount):
        await post(pool, [Leg(TREASURY, ALICE, Amount(1)), Leg(TREASURY, BOB, Amount(0))], kind="pay")
    assert await pool.fetchval("SELECT count(*) FROM ledger_movements") == 0


async def test_reserve_state(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10 * IPSX)
    hold = await holds.reserve(pool, ALICE, Amount(3 * IPSX), "deal-1")
    assert hold == holds.Hold("deal-1", ALICE, Amount(3 * IPSX), Amount(0), "pending")
    assert await balance(pool, ALICE) == 7 * IPSX
    assert await holds.reserved(pool, ALICE) == 3 * IPSX
    assert await holds.get(pool, "deal-1") == hold


async def test_reserve_is_idempotent_by_reference(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    first = await holds.reserve(pool, ALICE, Amount(4), "deal-1")
    again = await holds.reserve(pool, ALICE, Amount(4), "deal-1")
    assert first == again
    assert await balance(pool, ALICE) == 6
    assert await holds.reserved(pool, ALICE) == 4


async def test_reserve_refuses_more_than_available_and_writes_nothing(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    await holds.reserve(pool, ALICE, Amount(8), "deal-1")
    with pytest.raises(InsufficientFunds) as info:
        await holds.reserve(pool, ALICE, Amount(3), "deal-2")
    assert (info.value.needed, info.value.available) == (3, 2)
    assert await holds.get(pool, "deal-2") is None
    assert await holds.reserved(pool, ALICE) == 8


async def test_post_hold_pays_parts_and_voids_the_rest(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10 * IPSX)
    await holds.reserve(pool, ALICE, Amount(5 * IPSX), "deal-1")
    resolved = await holds.post(pool, "deal-1", [(BOB, Amount(2 * IPSX - 1)), (COMMISSION, Amount(1))])
    assert resolved.state == "posted" and resolved.posted == 2 * IPSX
    assert await balance(pool, BOB) == 2 * IPSX - 1
    assert await balance(pool, COMMISSION) == 1
    assert await balance(pool, ALICE) == 8 * IPSX  # 3 IPSX of the hold came back
    assert await holds.reserved(pool, ALICE) == 0
    assert await check_balances(pool) == {}


async def test_post_hold_in_whole(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    await holds.reserve(pool, ALICE, Amount(10), "deal-1")
    await holds.post(pool, "deal-1", [(BOB, Amount(10))])
    assert (await balance(pool, ALICE), await balance(pool, BOB), await holds.reserved(pool, ALICE)) == (
        0,
        10,
        0,
    )


async def test_void_returns_everything(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    await holds.reserve(pool, ALICE, Amount(6), "deal-1")
    voided = await holds.void(pool, "deal-1")
    assert (voided.state, voided.posted) == ("voided", 0)
    assert await balance(pool, ALICE) == 10
    assert await holds.reserved(pool, ALICE) == 0


async def test_a_hold_resolves_exactly_once(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    await holds.reserve(pool, ALICE, Amount(6), "deal-1")
    await holds.post(pool, "deal-1", [(BOB, Amount(1))])
    with pytest.raises(HoldResolved) as info:
        await holds.post(pool, "deal-1", [(BOB, Amount(1))])
    assert info.value.state == "posted"
    with pytest.raises(HoldResolved):
        await holds.void(pool, "deal-1")
    assert await balance(pool, BOB) == 1
    assert await balance(pool, ALICE) == 9


async def test_concurrent_resolutions_of_one_hold_apply_once(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 100)
    await holds.reserve(pool, ALICE, Amount(50), "deal-1")
    attempts = [holds.post(pool, "deal-1", [(BOB, Amount(10))]) for _ in range(5)]
    attempts += [holds.void(pool, "deal-1") for _ in range(5)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(isinstance(result, holds.Hold) for result in results) == 1
    assert sum(isinstance(result, HoldResolved) for result in results) == 9
    assert await balance(pool, BOB) + await balance(pool, ALICE) == 100
    assert await holds.reserved(pool, ALICE) == 0


async def test_post_hold_refuses_more_than_held(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    await holds.reserve(pool, ALICE, Amount(5), "deal-1")
    with pytest.raises(HoldExceeded) as info:
        await holds.post(pool, "deal-1", [(BOB, Amount(4)), (COMMISSION, Amount(2))])
    assert (info.value.amount, info.value.total) == (5, 6)
    with pytest.raises(HoldExceeded):
        await holds.post(pool, "deal-1", [(BOB, Amount(-1))])
    assert (await holds.get(pool, "deal-1")) == holds.Hold("deal-1", ALICE, Amount(5), Amount(0), "pending")


async def test_unknown_hold(pool: asyncpg.Pool) -> None:
    with pytest.raises(UnknownHold) as info:
        await holds.void(pool, "nope")
    assert info.value.reference == "nope"


async def test_parallel_reserves_never_overdraw(pool: asyncpg.Pool, database_url: str) -> None:
    """300 reserves of 0.1 IPSX race for 10 IPSX: exactly 100 win, nothing goes negative."""
    await fund(pool, ALICE, 10 * IPSX)
    tenth = Amount(IPSX // 10)
    big = await asyncpg.create_pool(database_url, min_size=20, max_size=20)
    try:
        results = await asyncio.gather(
            *(holds.reserve(big, ALICE, tenth, f"deal-{i}") for i in range(300)), return_exceptions=True
        )
    finally:
        await big.close()
    won = [r for r in results if isinstance(r, holds.Hold)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert (len(won), len(refused)) == (100, 200)
    assert await balance(pool, ALICE) == 0
    assert await holds.reserved(pool, ALICE) == 10 * IPSX
    assert await pool.fetchval("SELECT count(*) FROM ledger_holds WHERE state = 'pending'") == 100
    # Debits equal credits, and the stored balances equal the entries.
    assert await pool.fetchval("SELECT SUM(balance)::text FROM ledger_balances") == "0"
    assert await check_balances(pool) == {}
    assert (
        await pool.fetchval("SELECT count(*) FROM ledger_balances WHERE balance < 0 AND NOT overdraft") == 0
    )


async def test_check_balances_finds_a_tampered_balance(pool: asyncpg.Pool) -> None:
    await fund(pool, ALICE, 10)
    await pool.execute("UPDATE ledger_balances SET balance = balance + 1 WHERE account = $1", ALICE)
    assert await check_balances(pool) == {ALICE: (11, 10)}
