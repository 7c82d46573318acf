"""The hub's payout proofs on the real PostgreSQL: providers are promised what they earned and
not yet been promised, never past a channel's deposit, with real operator signatures; what is
promised cannot be withdrawn as well."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable

import asyncpg
import pytest
from eth_account import Account

from billing import channels, holds, payouts, withdrawals
from billing.accounts import create_account
from billing.errors import InsufficientFunds
from billing.ledger import TREASURY, Amount, balance, transfer
from contracts import proofs

OPERATOR = Account.from_key(bytes.fromhex("a1" * 32))
BOB = Account.from_key(bytes.fromhex("c3" * 32))
DOMAIN = proofs.ChannelDomain(chain_id=31337, verifying_contract="0x" + "cc" * 20)  # type: ignore[arg-type]
FIRST, SECOND = "0x" + "21" * 32, "0x" + "22" * 32


@pytest.fixture
async def bob(pool: asyncpg.Pool) -> int:
    await pool.execute("TRUNCATE invoiced_deals, invoices, channels CASCADE")
    account = await create_account(pool, address=BOB.address, name="bob")
    await payout_channel(pool, account.id, FIRST, deposit=1000)
    return account.id


async def payout_channel(pool: asyncpg.Pool, account_id: int, channel_id: str, deposit: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await channels.open_in(
            conn,
            channel_id=channel_id,
            contract=DOMAIN.verifying_contract,
            sender=OPERATOR.address,
            receiver=BOB.address,
            role="provider",
            account_id=account_id,
            deposit=deposit,
            opened_block=1,
        )


async def earn(pool: asyncpg.Pool, amount: int) -> None:
    await transfer(pool, debit=TREASURY, credit="provider:bob", amount=Amount(amount), kind="payout")


async def test_earnings_are_promised_once_with_the_operators_signature(pool: asyncpg.Pool, bob: int) -> None:
    await earn(pool, 300)
    (raised,) = await payouts.promise_earnings(pool, OPERATOR, DOMAIN)
    assert (raised.channel_id, raised.proof_balance) == (FIRST, 300)
    assert raised.proof_signature is not None
    signer = proofs.recover_balance_proof_signer(
        DOMAIN, bytes.fromhex(FIRST[2:]), 300, bytes.fromhex(raised.proof_signature[2:])
    )
    assert signer == OPERATOR.address
    assert await payouts.promise_earnings(pool, OPERATOR, DOMAIN) == []  # nothing new earned
    await earn(pool, 50)
    (again,) = await payouts.promise_earnings(pool, OPERATOR, DOMAIN)
    assert again.proof_balance == 350
    assert await payouts.promised(pool, "bob") == 350


async def test_a_deposit_caps_a_channel_and_the_rest_goes_to_the_next(pool: asyncpg.Pool, bob: int) -> None:
    await payout_channel(pool, bob, SECOND, deposit=500)
    await earn(pool, 1200)
    raised = await payouts.promise_earnings(pool, OPERATOR, DOMAIN)
    assert sorted((c.channel_id, c.proof_balance) for c in raised) == [(FIRST, 1000), (SECOND, 200)]
    await earn(pool, 1000)
    (last,) = await payouts.promise_earnings(pool, OPERATOR, DOMAIN)
    assert (last.channel_id, last.proof_balance) == (SECOND, 500)  # both full: 700 wait for a channel
    assert await payouts.promised(pool, "bob") == 1500


async def test_another_operators_channel_is_left_alone(pool: asyncpg.Pool, bob: int) -> None:
    await earn(pool, 100)
    stranger = Account.create()
    assert await payouts.promise_earnings(pool, stranger, DOMAIN) == []
    channel = await channels.get(pool, FIRST)
    assert channel is not None and channel.proof_balance == 0


async def test_promised_earnings_cannot_be_withdrawn_too(pool: asyncpg.Pool, bob: int) -> None:
    await earn(pool, 400)
    await payouts.promise_earnings(pool, OPERATOR, DOMAIN)
    await earn(pool, 100)
    with pytest.raises(InsufficientFunds) as info:
        await withdrawals.request(pool, account_name="bob", amount=Amount(101), source="earnings")
    assert info.value.available == 100
    made, _ = await withdrawals.request(pool, account_name="bob", amount=Amount(100), source="earnings")
    assert made.state == "pending"


async def racing(pool: asyncpg.Pool, *calls: Awaitable[object]) -> list[object]:
    """Run ``calls`` at once with writes to withdrawals and channels held back until every call
    waits on a lock: each has read what it checks before any of them writes."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE withdrawals, channels IN EXCLUSIVE MODE")  # reads still pass
        results = asyncio.gather(*calls, return_exceptions=True)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        while True:  # the lock waits show in pg_stat_activity; no event tells of them
            if await pool.fetchval(waiting) >= len(calls):
                break
            await asyncio.sleep(0.01)
    return list(await results)


async def test_parallel_earnings_withdrawals_never_take_promised_funds(pool: asyncpg.Pool, bob: int) -> None:
    await earn(pool, 60)
    await payouts.promise_earnings(pool, OPERATOR, DOMAIN)
    await earn(pool, 40)  # 100 earned, 60 promised: 40 free
    request = functools.partial(
        withdrawals.request, pool, account_name="bob", amount=Amount(40), source="earnings"
    )
    results = await racing(pool, request(), request())
    made = [result for result in results if not isinstance(result, BaseException)]
    refused = [result for result in results if isinstance(result, InsufficientFunds)]
    assert (len(made), len(refused)) == (1, 1)
    assert refused[0].available == 0
    assert await balance(pool, "provider:bob") == await payouts.promised(pool, "bob") == 60


async def test_parallel_promise_and_withdrawal_never_share_earnings(pool: asyncpg.Pool, bob: int) -> None:
    await earn(pool, 100)
    results = await racing(
        pool,
        payouts.promise_earnings(pool, OPERATOR, DOMAIN),
        withdrawals.request(pool, account_name="bob", amount=Amount(100), source="earnings"),
    )
    assert all(isinstance(result, list | tuple | InsufficientFunds) for result in results)
    # Either the withdrawal holds the 100 or a proof promises it; never both.
    assert await payouts.promised(pool, "bob") + await holds.reserved(pool, "provider:bob") == 100
    assert await payouts.promised(pool, "bob") <= await balance(pool, "provider:bob")
