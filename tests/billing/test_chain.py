"""The chain watcher on a real anvil node and a real PostgreSQL database.

Every test drives the chain with synchronous web3 calls and the watcher with ``poll_once`` (or
``run`` with its stop already set), so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
import pytest

from billing import accounts, channels, ledger
from billing.chain import ChainSettings, DeepReorg
from billing.ledger import TREASURY, provider_account, requester_account
from billing.withdrawals import CHAIN

if TYPE_CHECKING:
    from tests.billing.chainstack import ChainStack as Stack

pytest_plugins = ("tests.billing.chainstack",)

TOKEN = 10**18
CONFIRMATIONS = 3  # the chain stack's watchers wait for as many
CHALLENGE_PERIOD_HALF = 500  # seconds; the chain stack's challenge period is 1000


@pytest.fixture
def stack(chain_stack: Stack) -> Stack:
    return chain_stack


async def movements(pool: asyncpg.Pool, kind: str) -> list[tuple[str, str, int]]:
    """Every leg of ``kind``, as (debit, credit, amount), in order."""
    rows = await pool.fetch(
        "SELECT debit_account, credit_account, amount::text FROM ledger_transfers"
        " WHERE kind = $1 ORDER BY id",
        kind,
    )
    return [(row[0], row[1], int(row[2])) for row in rows]


async def alice(stack: Stack) -> accounts.Account:
    return await accounts.create_account(stack.pool, address=stack.requesters[0], name="alice")


async def test_poll_once_deposit_credited_only_once_confirmed(stack: Stack) -> None:
    await alice(stack)
    channel_id = stack.open(stack.requesters[0], stack.operator, 100 * TOKEN)
    watcher = stack.watcher()
    stack.mine(CONFIRMATIONS - 1)  # the open's block has CONFIRMATIONS - 1 blocks on top

    assert await watcher.poll_once() == 0
    assert await channels.get(stack.pool, channel_id) is None
    assert await ledger.balance(stack.pool, requester_account("alice")) == 0

    stack.mine(1)
    assert await watcher.poll_once() == 1
    assert await ledger.balance(stack.pool, requester_account("alice")) == 100 * TOKEN
    assert await ledger.balance(stack.pool, CHAIN) == -100 * TOKEN
    assert await movements(stack.pool, "deposit") == [(CHAIN, "requester:alice", 100 * TOKEN)]
    channel = await channels.get(stack.pool, channel_id)
    assert channel is not None
    assert (channel.role, channel.state, channel.account_name, channel.deposit) == (
        "requester", "open", "alice", 100 * TOKEN,
    )  # fmt: skip
    assert (channel.sender, channel.receiver) == (stack.requesters[0], stack.operator)

    stack.mine(5)
    assert await watcher.poll_once() == 0
    assert await ledger.balance(stack.pool, requester_account("alice")) == 100 * TOKEN


async def test_poll_once_unknown_sender_gets_an_account(stack: Stack) -> None:
    sender = stack.requesters[1]
    stack.open(sender, stack.operator, 7 * TOKEN)
    stack.mine()
    assert await stack.watcher().poll_once() == 1
    account = await accounts.get_account_by_address(stack.pool, sender)
    assert account is not None
    assert account.name == f"w_{sender.lower()[2:10]}"
    assert await ledger.balance(stack.pool, requester_account(account.name)) == 7 * TOKEN


async def test_poll_once_ignores_channels_ipsx_is_not_party_to(stack: Stack) -> None:
    stack.open(stack.requesters[0], stack.requesters[1], 5 * TOKEN)
    stack.mine()
    assert await stack.watcher().poll_once() == 0
    assert await channels.listing(stack.pool) == []
    assert await stack.pool.fetchval("SELECT count(*) FROM chain_logs") == 0
    assert await accounts.list_accounts(stack.pool) == []


async def test_poll_once_top_up_credits_the_amount(stack: Stack) -> None:
    await alice(stack)
    channel_id = stack.open(stack.requesters[0], stack.operator, 10 * TOKEN)
    stack.top_up(stack.requesters[0], channel_id, 5 * TOKEN)
    stack.top_up(stack.requesters[0], channel_id, 1)
    stack.mine()
    assert await stack.watcher().poll_once() == 3
    assert await movements(stack.pool, "deposit") == [
        (CHAIN, "requester:alice", 10 * TOKEN),
        (CHAIN, "requester:alice", 5 * TOKEN),
        (CHAIN, "requester:alice", 1),
    ]
    channel = await channels.get(stack.pool, channel_id)
    assert channel is not None and channel.deposit == 15 * TOKEN + 1 == stack.on_chain(channel_id)[3]


async def test_poll_once_restarted_watcher_applies_nothing_twice(stack: Stack) -> None:
    await alice(stack)
    channel_id = stack.open(stack.requesters[0], stack.operator, 10 * TOKEN)
    stack.mine()
    first = stack.watcher(max_range=1)  # one block per eth_getLogs: many ranges
    assert await first.poll_once() == 1

    stack.top_up(stack.requesters[0], channel_id, 2 * TOKEN)
    stack.mine()
    # A crash after the logs were applied but before the cursor was saved: the next watcher
    # starts again from the first block and must find every log applied already.
    await stack.pool.execute("DELETE FROM chain_cursors")
    second = stack.watcher()
    assert await second.poll_once() == 1  # the top-up only
    assert await stack.watcher().poll_once() == 0
    assert await ledger.balance(stack.pool, requester_account("alice")) == 12 * TOKEN
    assert await stack.pool.fetchval("SELECT count(*) FROM chain_logs") == 2


async def test_poll_once_cursor_keeps_the_last_confirmed_block(stack: Stack) -> None:
    stack.open(stack.requesters[0], stack.operator, TOKEN)
    stack.mine(10)
    watcher = stack.watcher()
    await watcher.poll_once()
    head = stack.block()
    row = await stack.pool.fetchrow("SELECT block, block_hash, block_time FROM chain_cursors")
    assert row["block"] == head - CONFIRMATIONS
    block = stack.chain.w3.eth.get_block(head - CONFIRMATIONS)
    assert row["block_hash"] == block["hash"].to_0x_hex()
    assert row["block_time"] == block["timestamp"]  # what ends the freezes of expired consents


async def test_run_polls_until_stopped(stack: Stack) -> None:
    await alice(stack)
    stack.open(stack.requesters[0], stack.operator, 3 * TOKEN)
    stack.mine()
    stop = asyncio.Event()
    stop.set()  # run polls once, then sees the stop
    await stack.watcher().run(stop)
    assert await ledger.balance(stack.pool, requester_account("alice")) == 3 * TOKEN


async def test_poll_once_deep_reorg_stops_applying(stack: Stack) -> None:
    await alice(stack)
    fork_point = stack.chain.snapshot()
    stack.open(stack.requesters[0], stack.operator, 10 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    assert await watcher.poll_once() == 1
    cursor_block = await stack.pool.fetchval("SELECT block FROM chain_cursors")

    # Another branch, longer than the first, where the cursor's block is a different block.
    stack.chain.revert(fork_point)
    stack.chain.transact(stack.token.functions.transfer(stack.outsider, 1), stack.requesters[1])
    stack.open(stack.requesters[0], stack.operator, 20 * TOKEN)
    stack.mine(10)
    assert stack.block() > cursor_block + CONFIRMATIONS

    with pytest.raises(DeepReorg) as raised:
        await watcher.poll_once()
    assert raised.value.block == cursor_block
    assert raised.value.chain_hash != raised.value.stored_hash
    with pytest.raises(DeepReorg):
        await stack.watcher().run(asyncio.Event())  # a restarted watcher stops too
    assert await stack.pool.fetchval("SELECT count(*) FROM chain_logs") == 1
    assert await ledger.balance(stack.pool, requester_account("alice")) == 10 * TOKEN
    assert await stack.pool.fetchval("SELECT block FROM chain_cursors") == cursor_block


async def settle_usage(stack: Stack, name: str, amount: int) -> None:
    """The requester's charges settled in deals: they moved to a provider and the commission."""
    await ledger.post(
        stack.pool,
        [
            ledger.Leg(requester_account(name), provider_account("bob"), ledger.Amount(amount * 9 // 10)),
            ledger.Leg(requester_account(name), ledger.COMMISSION, ledger.Amount(amount - amount * 9 // 10)),
        ],
        kind="charge",
    )


async def test_poll_once_counters_a_stale_close_then_refunds_at_settle(stack: Stack) -> None:
    await alice(stack)
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 100 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    await watcher.poll_once()
    await channels.record_proof(
        stack.pool, channel_id, 40 * TOKEN, stack.sign(requester, channel_id, 40 * TOKEN), domain=stack.domain
    )
    await settle_usage(stack, "alice", 40 * TOKEN)

    stack.close(requester, channel_id, 10 * TOKEN)  # the requester claims it owes only 10
    stack.mine()
    operator_nonce = stack.nonce(stack.operator)
    assert await watcher.poll_once() == 1
    channel = await channels.get(stack.pool, channel_id)
    assert channel is not None
    assert (channel.state, channel.closing_balance) == ("closing", 10 * TOKEN)
    assert stack.on_chain(channel_id)[4] == 40 * TOKEN  # countered at once, from the operator
    assert stack.nonce(stack.operator) == operator_nonce + 1

    stack.mine()
    assert await watcher.poll_once() == 1  # ClosingBalanceUpdated
    assert stack.nonce(stack.operator) == operator_nonce + 1  # not sent again
    channel = await channels.get(stack.pool, channel_id)
    assert channel is not None and channel.closing_balance == 40 * TOKEN

    tokens_before = stack.tokens(requester)
    stack.settle(channel_id)
    refunded = stack.tokens(requester) - tokens_before
    assert refunded == 60 * TOKEN
    stack.mine()
    assert await watcher.poll_once() == 1
    assert await movements(stack.pool, "refund") == [("requester:alice", CHAIN, refunded)]
    assert await movements(stack.pool, "unpaid_usage") == []
    assert await ledger.balance(stack.pool, requester_account("alice")) == 0
    channel = await channels.get(stack.pool, channel_id)
    assert channel is not None
    assert (channel.state, channel.paid, channel.refunded) == ("settled", 40 * TOKEN, 60 * TOKEN)


async def test_poll_once_counters_after_a_restart_mid_challenge(stack: Stack) -> None:
    await alice(stack)
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 50 * TOKEN)
    stack.mine()
    first = stack.watcher()
    await first.poll_once()
    signature = stack.sign(requester, channel_id, 30 * TOKEN)
    await channels.record_proof(stack.pool, channel_id, 30 * TOKEN, signature, domain=stack.domain)
    stack.close(requester, channel_id, 0)
    stack.mine()
    assert await first.apply_confirmed() == 1  # the close is applied, then the process dies
    await first.aclose()
    assert stack.on_chain(channel_id)[4] == 0

    stack.chain.travel(CHALLENGE_PERIOD_HALF)
    second = stack.watcher()
    assert await second.poll_once() == 0
    assert stack.on_chain(channel_id)[4] == 30 * TOKEN
    nonce = stack.nonce(stack.operator)
    third = stack.watcher()  # restarted again before the counter is confirmed: not sent twice
    assert await third.poll_once() == 0
    assert stack.nonce(stack.operator) == nonce


async def test_poll_once_sends_one_counter_while_it_is_pending(stack: Stack) -> None:
    await alice(stack)
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 50 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    await watcher.poll_once()
    signature = stack.sign(requester, channel_id, 30 * TOKEN)
    await channels.record_proof(stack.pool, channel_id, 30 * TOKEN, signature, domain=stack.domain)
    stack.close(requester, channel_id, 0)
    stack.mine()
    w3 = stack.chain.w3
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        assert await watcher.poll_once() == 1
        pending = w3.eth.get_transaction_count(stack.operator, "pending")
        assert pending == stack.nonce(stack.operator) + 1  # the counter waits in the mempool
        assert await watcher.poll_once() == 0
        assert w3.eth.get_transaction_count(stack.operator, "pending") == pending
    finally:
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    stack.mine(1)
    assert stack.on_chain(channel_id)[4] == 30 * TOKEN


async def test_poll_once_no_counter_when_the_close_is_not_stale(stack: Stack) -> None:
    await alice(stack)
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 50 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    await watcher.poll_once()
    signature = stack.sign(requester, channel_id, 30 * TOKEN)
    await channels.record_proof(stack.pool, channel_id, 30 * TOKEN, signature, domain=stack.domain)
    stack.close(requester, channel_id, 35 * TOKEN)  # more than the proof: nothing to counter
    stack.mine()
    nonce = stack.nonce(stack.operator)
    assert await watcher.poll_once() == 1
    assert stack.nonce(stack.operator) == nonce
    assert stack.on_chain(channel_id)[4] == 35 * TOKEN


async def test_poll_once_no_counter_after_the_challenge_period(stack: Stack) -> None:
    await alice(stack)
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 50 * TOKEN)
    stack.mine()
    signature = stack.sign(requester, channel_id, 30 * TOKEN)
    watcher = stack.watcher()
    await watcher.poll_once()
    await channels.record_proof(stack.pool, channel_id, 30 * TOKEN, signature, domain=stack.domain)
    stack.close(requester, channel_id, 0)
    stack.chain.travel(2 * CHALLENGE_PERIOD_HALF + 1)  # the watcher was down the whole period
    stack.mine()
    nonce = stack.nonce(stack.operator)
    assert await watcher.poll_once() == 1
    assert stack.nonce(stack.operator) == nonce


async def test_poll_once_cooperative_close_refunds_the_rest(stack: Stack) -> None:
    await alice(stack)
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 100 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    await watcher.poll_once()
    await settle_usage(stack, "alice", 30 * TOKEN)
    before = stack.tokens(requester)
    stack.cooperative_close(requester, stack.operator, channel_id, 30 * TOKEN)
    stack.mine()
    assert await watcher.poll_once() == 1
    assert stack.tokens(requester) - before == 70 * TOKEN
    assert await movements(stack.pool, "refund") == [("requester:alice", CHAIN, 70 * TOKEN)]
    assert await ledger.balance(stack.pool, requester_account("alice")) == 0
    assert await ledger.balance(stack.pool, CHAIN) == -30 * TOKEN  # the 30 paid now back the earnings
    channel = await channels.get(stack.pool, channel_id)
    assert channel is not None and (channel.state, channel.paid) == ("settled", 30 * TOKEN)


async def test_poll_once_usage_beyond_the_proof_is_covered_by_the_treasury(stack: Stack) -> None:
    await alice(stack)
    requester = stack.requesters[0]
    channel_id = stack.open(requester, stack.operator, 100 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    await watcher.poll_once()
    await settle_usage(stack, "alice", 50 * TOKEN)  # used 50, signed for 30
    stack.cooperative_close(requester, stack.operator, channel_id, 30 * TOKEN)
    stack.mine()
    assert await watcher.poll_once() == 1
    assert await movements(stack.pool, "unpaid_usage") == [(TREASURY, "requester:alice", 20 * TOKEN)]
    assert await movements(stack.pool, "refund") == [("requester:alice", CHAIN, 70 * TOKEN)]
    assert await ledger.balance(stack.pool, requester_account("alice")) == 0
    assert await ledger.check_balances(stack.pool) == {}


async def test_poll_once_payout_channel_settle_pays_the_provider_out(stack: Stack) -> None:
    provider = stack.provider
    bob = await accounts.create_account(stack.pool, address=provider, name="bob")
    await ledger.transfer(
        stack.pool,
        debit=TREASURY,
        credit=provider_account("bob"),
        amount=ledger.Amount(25 * TOKEN),
        kind="earn",
    )
    channel_id = stack.open(stack.operator, provider, 40 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    assert await watcher.poll_once() == 1
    assert await ledger.balance(stack.pool, CHAIN) == 0  # the operator's own wallet funds it
    (channel,) = await channels.for_account(stack.pool, bob.id, "provider")
    assert (channel.channel_id, channel.account_name, channel.role) == (channel_id, "bob", "provider")

    before = stack.tokens(provider)
    stack.cooperative_close(stack.operator, provider, channel_id, 25 * TOKEN)
    stack.mine()
    assert await watcher.poll_once() == 1
    assert stack.tokens(provider) - before == 25 * TOKEN
    assert await movements(stack.pool, "payout") == [("provider:bob", CHAIN, 25 * TOKEN)]
    assert await ledger.balance(stack.pool, provider_account("bob")) == 0
    assert await movements(stack.pool, "overpaid_payout") == []


async def test_poll_once_payout_above_earnings_is_covered_by_the_treasury(stack: Stack) -> None:
    provider = stack.provider
    channel_id = stack.open(stack.operator, provider, 40 * TOKEN)  # an unknown provider: new account
    stack.mine()
    watcher = stack.watcher()
    await watcher.poll_once()
    stack.close(provider, channel_id, 15 * TOKEN, stack.sign(stack.operator, channel_id, 15 * TOKEN))
    stack.settle(channel_id)
    stack.mine()
    assert await watcher.poll_once() == 2
    account = await accounts.get_account_by_address(stack.pool, provider)
    assert account is not None
    assert await movements(stack.pool, "overpaid_payout") == [
        (TREASURY, f"provider:{account.name}", 15 * TOKEN)
    ]
    assert await movements(stack.pool, "payout") == [(f"provider:{account.name}", CHAIN, 15 * TOKEN)]


def test_chain_settings_hide_the_key_and_check_values() -> None:
    settings = ChainSettings(channels_address="0x" + "11" * 20, operator_key="0x" + "ab" * 32)
    assert "abab" not in repr(settings)
    assert settings.confirmations == 6
    with pytest.raises(ValueError):
        ChainSettings(channels_address="0x" + "11" * 20, operator_key="0x" + "ab" * 32, max_range=0)
