"""Withdrawals on the real PostgreSQL ledger: reserve, complete, reject, cancel, idempotency, races."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from billing import channels, holds, withdrawals
from billing.accounts import create_account
from billing.chain import _leave_books
from billing.errors import InsufficientFunds, InvalidAmount, UnknownAccount
from billing.ledger import COMMISSION, TREASURY, Amount, Leg, balance, check_balances, post_in, transfer
from billing.withdrawals import CHAIN, ReferenceReused, UnknownWithdrawal, WithdrawalResolved

ALICE_ADDRESS = "0x" + "a1" * 20
TX = "0x" + "ab" * 32
CHANNEL = "0x" + "31" * 32
OPERATOR = "0x" + "0e" * 20


@pytest.fixture
async def alice(pool: asyncpg.Pool) -> str:
    account = await create_account(pool, address=ALICE_ADDRESS, name="alice")
    await transfer(pool, debit=TREASURY, credit="requester:alice", amount=Amount(1000), kind="credit")
    await transfer(pool, debit=TREASURY, credit="provider:alice", amount=Amount(300), kind="credit")
    return account.name


async def test_request_call_reserves_the_amount_to_the_accounts_own_address(
    pool: asyncpg.Pool, alice: str
) -> None:
    withdrawal, created = await withdrawals.request(pool, account_name=alice, amount=Amount(400))
    assert created
    assert (withdrawal.state, withdrawal.amount, withdrawal.source) == ("pending", 400, "balance")
    assert withdrawal.address == (await pool.fetchval("SELECT address FROM accounts WHERE name = 'alice'"))
    assert await balance(pool, "requester:alice") == 600
    assert await holds.reserved(pool, "requester:alice") == 400
    assert await balance(pool, CHAIN) == 0


async def test_request_from_earnings_takes_the_provider_account(pool: asyncpg.Pool, alice: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(300), source="earnings")
    assert withdrawal.source == "earnings"
    assert await balance(pool, "provider:alice") == 0
    assert await balance(pool, "requester:alice") == 1000


async def test_request_above_available_funds_writes_nothing(pool: asyncpg.Pool, alice: str) -> None:
    with pytest.raises(InsufficientFunds):
        await withdrawals.request(pool, account_name=alice, amount=Amount(301), source="earnings")
    assert await pool.fetchval("SELECT count(*) FROM withdrawals") == 0
    assert await balance(pool, "provider:alice") == 300


@pytest.mark.parametrize("amount", [0, -1, 10**78, True, 1.5])
async def test_request_refuses_a_bad_amount(pool: asyncpg.Pool, alice: str, amount: object) -> None:
    with pytest.raises(InvalidAmount):
        await withdrawals.request(pool, account_name=alice, amount=amount)  # type: ignore[arg-type]


async def test_request_refuses_an_unknown_source_and_account(pool: asyncpg.Pool, alice: str) -> None:
    with pytest.raises(ValueError, match="source"):
        await withdrawals.request(pool, account_name=alice, amount=Amount(1), source="treasury")
    with pytest.raises(UnknownAccount):
        await withdrawals.request(pool, account_name="nobody", amount=Amount(1))


async def test_request_with_a_used_reference_returns_the_first_and_moves_nothing(
    pool: asyncpg.Pool, alice: str
) -> None:
    first, created = await withdrawals.request(pool, account_name=alice, amount=Amount(100), reference="r1")
    again, created_again = await withdrawals.request(
        pool, account_name=alice, amount=Amount(100), reference="r1"
    )
    assert (created, created_again, again.id) == (True, False, first.id)
    assert await balance(pool, "requester:alice") == 900
    with pytest.raises(ReferenceReused):
        await withdrawals.request(pool, account_name=alice, amount=Amount(101), reference="r1")
    with pytest.raises(ReferenceReused):
        await withdrawals.request(
            pool, account_name=alice, amount=Amount(100), reference="r1", source="earnings"
        )


async def test_complete_state_posts_the_hold_to_the_chain(pool: asyncpg.Pool, alice: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(250))
    done = await withdrawals.complete(pool, withdrawal.id, TX.upper().replace("0X", "0x"))
    assert (done.state, done.tx_hash, done.resolved_at is not None) == ("completed", TX, True)
    assert await balance(pool, "requester:alice") == 750
    assert await holds.reserved(pool, "requester:alice") == 0
    assert await balance(pool, CHAIN) == 250
    assert await check_balances(pool) == {}
    total = await pool.fetchval("SELECT sum(balance) FROM ledger_balances")
    assert total == 0


@pytest.mark.parametrize("action", ["reject", "cancel"])
async def test_reject_and_cancel_give_the_funds_back(pool: asyncpg.Pool, alice: str, action: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(250))
    if action == "reject":
        done = await withdrawals.reject(pool, withdrawal.id, "address under review")
        assert done.reason == "address under review"
    else:
        done = await withdrawals.cancel(pool, withdrawal.id, account_name=alice)
    assert done.state == ("rejected" if action == "reject" else "cancelled")
    assert await balance(pool, "requester:alice") == 1000
    assert await holds.reserved(pool, "requester:alice") == 0
    assert await balance(pool, CHAIN) == 0


async def test_a_withdrawal_resolves_exactly_once(pool: asyncpg.Pool, alice: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(100))
    await withdrawals.complete(pool, withdrawal.id, TX)
    with pytest.raises(WithdrawalResolved) as info:
        await withdrawals.reject(pool, withdrawal.id, "too late")
    assert info.value.state == "completed"
    with pytest.raises(WithdrawalResolved):
        await withdrawals.cancel(pool, withdrawal.id, account_name=alice)
    assert await balance(pool, CHAIN) == 100


async def test_cancel_of_another_accounts_withdrawal_is_unknown(pool: asyncpg.Pool, alice: str) -> None:
    await create_account(pool, address="0x" + "b2" * 20, name="bob")
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(100))
    with pytest.raises(UnknownWithdrawal):
        await withdrawals.cancel(pool, withdrawal.id, account_name="bob")
    with pytest.raises(UnknownWithdrawal):
        await withdrawals.complete(pool, withdrawal.id + 1, TX)
    assert (await withdrawals.get(pool, withdrawal.id)).state == "pending"  # type: ignore[union-attr]


async def test_complete_refuses_a_malformed_or_reused_transaction_hash(
    pool: asyncpg.Pool, alice: str
) -> None:
    one, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(1))
    two, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(2))
    for bad in ("0x1234", TX + "00", "ab" * 32, "0x" + "zz" * 32):
        with pytest.raises(ValueError, match="hex"):
            await withdrawals.complete(pool, one.id, bad)
    await withdrawals.complete(pool, one.id, TX)
    with pytest.raises(ValueError, match="already records"):
        await withdrawals.complete(pool, two.id, TX)
    assert (await withdrawals.get(pool, two.id)).state == "pending"  # type: ignore[union-attr]
    assert await balance(pool, CHAIN) == 1


@pytest.mark.parametrize("reason", ["", "x" * 201, "line\nbreak"])
async def test_reject_refuses_a_bad_reason(pool: asyncpg.Pool, alice: str, reason: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(1))
    with pytest.raises(ValueError, match="reason"):
        await withdrawals.reject(pool, withdrawal.id, reason)


async def test_parallel_requests_never_overdraw(pool: asyncpg.Pool, alice: str) -> None:
    results = await asyncio.gather(
        *(withdrawals.request(pool, account_name=alice, amount=Amount(70)) for _ in range(30)),
        return_exceptions=True,
    )
    made = [result for result in results if not isinstance(result, BaseException)]
    refused = [result for result in results if isinstance(result, InsufficientFunds)]
    assert (len(made), len(refused)) == (14, 16)  # 14 x 70 = 980 of the 1000
    assert await balance(pool, "requester:alice") == 20
    assert await holds.reserved(pool, "requester:alice") == 980
    assert await pool.fetchval("SELECT count(*) FROM withdrawals") == 14


async def test_listing_is_newest_first_and_filters(pool: asyncpg.Pool, alice: str) -> None:
    made = [(await withdrawals.request(pool, account_name=alice, amount=Amount(n)))[0] for n in (1, 2, 3)]
    await withdrawals.cancel(pool, made[1].id, account_name=alice)
    assert [w.amount for w in await withdrawals.listing(pool, account_name=alice)] == [3, 2, 1]
    assert [w.amount for w in await withdrawals.listing(pool, state="pending")] == [3, 1]
    assert [w.amount for w in await withdrawals.listing(pool, before=made[2].id, limit=1)] == [2]
    assert await withdrawals.listing(pool, account_name="bob") == []


# ---- the chain payer's states (billing.withdrawal_sender drives them; its tests use a real chain) ----


async def _claim(pool: asyncpg.Pool, withdrawal_id: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await withdrawals.claim_in(conn, withdrawal_id)


async def test_approve_state_marks_it_once_and_refuses_a_resolved_one(pool: asyncpg.Pool, alice: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(100))
    first = await withdrawals.approve(pool, withdrawal.id)
    again = await withdrawals.approve(pool, withdrawal.id)
    assert (first.state, first.approved_at is not None) == ("pending", True)
    assert again.approved_at == first.approved_at
    await withdrawals.complete(pool, withdrawal.id, TX)
    with pytest.raises(WithdrawalResolved) as info:
        await withdrawals.approve(pool, withdrawal.id)
    assert info.value.state == "completed"
    with pytest.raises(UnknownWithdrawal):
        await withdrawals.approve(pool, withdrawal.id + 1)


async def test_a_sending_withdrawal_refuses_everyone_but_the_sender(pool: asyncpg.Pool, alice: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(250))
    await _claim(pool, withdrawal.id)
    calls: tuple[Callable[[], Awaitable[withdrawals.Withdrawal]], ...] = (
        lambda: withdrawals.complete(pool, withdrawal.id, TX),
        lambda: withdrawals.reject(pool, withdrawal.id, "too late"),
        lambda: withdrawals.cancel(pool, withdrawal.id, account_name=alice),
        lambda: withdrawals.approve(pool, withdrawal.id),
    )
    for call in calls:
        with pytest.raises(WithdrawalResolved) as info:
            await call()
        assert info.value.state == "sending"
    assert await holds.reserved(pool, "requester:alice") == 250
    assert await balance(pool, CHAIN) == 0

    async with pool.acquire() as conn, conn.transaction():
        back = await withdrawals.requeue_in(conn, withdrawal.id)
    assert (back.state, back.resolved_at) == ("pending", None)
    assert await holds.reserved(pool, "requester:alice") == 250


async def test_a_failed_withdrawal_keeps_the_hold_until_the_operator_decides(
    pool: asyncpg.Pool, alice: str
) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(250))
    await _claim(pool, withdrawal.id)
    async with pool.acquire() as conn, conn.transaction():
        failed = await withdrawals.fail_in(conn, withdrawal.id, f"the transfer {TX} reverted in block 9")
        assert await withdrawals.claimable_in(conn, limit=10) == []  # not sent again unless approved
    assert (failed.state, failed.resolved_at, failed.reason) == (
        "failed", None, f"the transfer {TX} reverted in block 9",
    )  # fmt: skip
    assert await holds.reserved(pool, "requester:alice") == 250
    assert await balance(pool, "requester:alice") == 750

    rejected = await withdrawals.reject(pool, withdrawal.id, "sent by other means")
    assert rejected.state == "rejected"
    assert await balance(pool, "requester:alice") == 1000
    assert await holds.reserved(pool, "requester:alice") == 0
    assert await balance(pool, CHAIN) == 0


async def test_confirm_in_posts_the_hold_with_the_transfer_hash(pool: asyncpg.Pool, alice: str) -> None:
    withdrawal, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(250))
    with pytest.raises(WithdrawalResolved):  # only a withdrawal being sent is confirmed
        async with pool.acquire() as conn, conn.transaction():
            await withdrawals.confirm_in(conn, withdrawal.id, TX)
    await _claim(pool, withdrawal.id)
    async with pool.acquire() as conn, conn.transaction():
        done = await withdrawals.confirm_in(conn, withdrawal.id, TX)
    assert (done.state, done.tx_hash) == ("completed", TX)
    assert await balance(pool, CHAIN) == 250
    assert await check_balances(pool) == {}


async def test_claimable_in_takes_the_oldest_within_the_limit_and_skips_locked_rows(
    pool: asyncpg.Pool, alice: str
) -> None:
    small, big, smaller = [
        (await withdrawals.request(pool, account_name=alice, amount=Amount(n)))[0] for n in (100, 300, 50)
    ]

    async def claimable(**options: int) -> list[int]:
        async with pool.acquire() as conn, conn.transaction():
            return [w.id for w in await withdrawals.claimable_in(conn, **options)]

    assert await claimable(limit=10, approval_above=100) == [small.id, smaller.id]
    await withdrawals.approve(pool, big.id)
    assert await claimable(limit=10, approval_above=100) == [small.id, big.id, smaller.id]
    assert await claimable(limit=1) == [small.id]
    async with pool.acquire() as conn, conn.transaction():
        held = await withdrawals.claimable_in(conn, limit=1)
        assert [w.id for w in held] == [small.id]
        assert await claimable(limit=10) == [big.id, smaller.id]  # another sender skips the locked row


async def open_requester_channel(pool: asyncpg.Pool, name: str, deposit: int, proof: int = 0) -> None:
    """What the chain watcher records for a requester channel: the row and the deposit's credit;
    ``proof`` is the balance the requester signed (and was charged) since."""
    await pool.execute("TRUNCATE channels CASCADE")
    account_id = await pool.fetchval("SELECT id FROM accounts WHERE name = $1", name)
    async with pool.acquire() as conn, conn.transaction():
        await channels.open_in(
            conn, channel_id=CHANNEL, contract="0x" + "cc" * 20, sender=ALICE_ADDRESS, receiver=OPERATOR,
            role="requester", account_id=account_id, deposit=deposit, opened_block=1,
        )  # fmt: skip
        await post_in(
            conn, [Leg(CHAIN, f"requester:{name}", Amount(deposit))], kind="deposit", reference="open"
        )
        if proof:
            channel = await channels.lock_in(conn, CHANNEL)
            assert channel is not None
            await channels.update_in(conn, channel, proof_balance=proof, proof_signature="0x" + "00" * 65)
            await post_in(conn, [Leg(f"requester:{name}", COMMISSION, Amount(proof))], kind="charge")


async def test_request_leaves_what_an_open_channel_backs(pool: asyncpg.Pool, alice: str) -> None:
    await open_requester_channel(pool, alice, deposit=100, proof=30)  # 70 refunded at settlement
    assert await balance(pool, "requester:alice") == 1070
    with pytest.raises(InsufficientFunds) as info:
        await withdrawals.request(pool, account_name=alice, amount=Amount(1001))
    assert (info.value.needed, info.value.available) == (1001, 1000)
    assert await pool.fetchval("SELECT count(*) FROM withdrawals") == 0
    assert await balance(pool, "requester:alice") == 1070
    made, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(1000))
    await withdrawals.complete(pool, made.id, TX)

    async with pool.acquire() as conn, conn.transaction():  # the watcher settles: 70 refunded
        channel = await channels.lock_in(conn, CHANNEL)
        assert channel is not None
        await channels.update_in(conn, channel, state="settled", paid=30, refunded=70)
        await _leave_books(conn, "requester:alice", 70, "settle", ("refund", "unpaid_usage"))
    assert await balance(pool, TREASURY) == -1300  # the fixture's credits only: no shortfall covered
    assert await balance(pool, "requester:alice") == 0
    assert await check_balances(pool) == {}


async def test_request_may_take_a_settled_channels_leftover(pool: asyncpg.Pool, alice: str) -> None:
    await open_requester_channel(pool, alice, deposit=100)
    async with pool.acquire() as conn, conn.transaction():  # settled with nothing refunded
        channel = await channels.lock_in(conn, CHANNEL)
        assert channel is not None
        await channels.update_in(conn, channel, state="settled", paid=100, refunded=0)
    made, _ = await withdrawals.request(pool, account_name=alice, amount=Amount(1100))
    assert made.state == "pending"
