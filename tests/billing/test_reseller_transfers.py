"""Reseller transfers replayed by their reference, on the real PostgreSQL: a replay moves nothing
and answers only for the very transfer made with the reference; a reference reused for another
sub-user, direction or amount is refused (the API answers 409), never reported as done."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from billing import accounts, ledger, resellers
from billing.ledger import Amount, requester_account
from billing.resellers import KIND_FUNDING, ReferenceReused, Reseller

IPSX = 10**18


async def _reseller(pool: asyncpg.Pool, name: str = "acme", digit: str = "a") -> Reseller:
    await accounts.create_account(pool, address="0x" + digit * 40, name=name)
    await ledger.credit_account(pool, name, Amount(100 * IPSX), f"fund-{name}")
    return await resellers.create_reseller(pool, name, brand=f"{name.title()} Proxy")


async def _balances(pool: asyncpg.Pool, *names: str) -> list[int]:
    return [int(await ledger.balance(pool, requester_account(name))) for name in names]


async def _movements(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger_movements WHERE reference LIKE 'reseller:%'"))


@pytest.fixture
async def acme(pool: asyncpg.Pool) -> Reseller:
    """A reseller with 100 IPSX, sub-users bob1 and bob2, and 10 IPSX sent to bob1 with key ``pay-42``."""
    acme = await _reseller(pool)
    for name in ("bob1", "bob2"):
        await resellers.create_subuser(pool, acme.account_id, name)
    assert await resellers.transfer(
        pool, acme.account_id, "bob1", Amount(10 * IPSX), to_subuser=True, reference="pay-42"
    )
    return acme


async def _internal(pool: asyncpg.Pool, acme: Reseller, name: str) -> str:
    return (await resellers.get_subuser(pool, acme.account_id, name)).account_name


async def test_transfer_call_replay_of_the_same_transfer_moves_nothing(
    pool: asyncpg.Pool, acme: Reseller
) -> None:
    bob1 = await _internal(pool, acme, "bob1")
    assert not await resellers.transfer(
        pool, acme.account_id, "BOB1", Amount(10 * IPSX), to_subuser=True, reference="pay-42"
    )
    assert await _balances(pool, "acme", bob1) == [90 * IPSX, 10 * IPSX]
    assert await _movements(pool) == 1


@pytest.mark.parametrize(
    ("name", "amount", "to_subuser"),
    [
        ("bob2", 10 * IPSX, True),  # another sub-user
        ("bob1", 10 * IPSX, False),  # the other direction
        ("bob1", 50 * IPSX, True),  # another amount
        ("bob1", 10 * IPSX - 1, True),  # one base unit less
    ],
    ids=["subuser", "direction", "amount", "one-base-unit"],
)
async def test_transfer_call_reference_reused_for_another_transfer_raises(
    pool: asyncpg.Pool, acme: Reseller, name: str, amount: int, to_subuser: bool
) -> None:
    bob1, bob2 = await _internal(pool, acme, "bob1"), await _internal(pool, acme, "bob2")
    with pytest.raises(ReferenceReused, match="other terms"):
        await resellers.transfer(
            pool, acme.account_id, name, Amount(amount), to_subuser=to_subuser, reference="pay-42"
        )
    assert await _balances(pool, "acme", bob1, bob2) == [90 * IPSX, 10 * IPSX, 0]
    assert await _movements(pool) == 1
    assert await ledger.check_balances(pool) == {}


async def test_transfer_call_references_are_per_reseller(pool: asyncpg.Pool, acme: Reseller) -> None:
    zeta = await _reseller(pool, "zeta", "b")
    await resellers.create_subuser(pool, zeta.account_id, "bob1")
    assert await resellers.transfer(
        pool, zeta.account_id, "bob1", Amount(3 * IPSX), to_subuser=True, reference="pay-42"
    )
    assert await _balances(pool, "zeta", await _internal(pool, zeta, "bob1")) == [97 * IPSX, 3 * IPSX]


async def test_transfer_call_concurrent_uses_of_one_reference_move_once(
    pool: asyncpg.Pool, acme: Reseller
) -> None:
    bob2 = await _internal(pool, acme, "bob2")
    calls = [
        resellers.transfer(pool, acme.account_id, "bob2", Amount(amount), to_subuser=True, reference="race")
        for amount in (IPSX, 2 * IPSX, IPSX, 2 * IPSX)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [result for result in results if result is True] == [True]  # moved by one call only
    moved = await pool.fetchval(
        "SELECT t.amount::text FROM ledger_movements m JOIN ledger_transfers t ON t.movement_id = m.id"
        " WHERE m.reference = $1 AND m.kind = $2",
        f"reseller:{acme.account_id}:race",
        KIND_FUNDING,
    )
    for amount, result in zip((IPSX, 2 * IPSX, IPSX, 2 * IPSX), results, strict=True):
        if amount == int(moved):
            assert isinstance(result, bool)  # the first use, or a true replay of it
        else:
            assert isinstance(result, ReferenceReused)
    assert await _balances(pool, bob2) == [int(moved)]
    assert await _movements(pool) == 2
