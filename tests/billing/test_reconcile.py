"""Reconciliation of the ledger and the channels table with a real anvil chain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from billing import accounts, channels, ledger, withdrawals
from billing.ledger import COMMISSION, TREASURY, Amount, Leg, provider_account, requester_account
from billing.reconcile import Report, format_report, reconcile
from billing.withdrawals import CHAIN

if TYPE_CHECKING:
    from tests.billing.chainstack import ChainStack as Stack

pytest_plugins = ("tests.billing.chainstack",)

TOKEN = 10**18


@pytest.fixture
def stack(chain_stack: Stack) -> Stack:
    return chain_stack


@pytest.fixture
async def aw3(stack: Stack) -> AsyncIterator[AsyncWeb3[Any]]:
    w3 = AsyncWeb3(AsyncHTTPProvider(stack.rpc_url))
    yield w3
    await w3.provider.disconnect()


async def check(stack: Stack, aw3: AsyncWeb3[Any]) -> Report:
    return await reconcile(stack.pool, aw3, stack.channels.address, stack.token.address)


def failing(report: Report) -> set[str]:
    return {c.name for c in report.failures}


def short(channel_id: str) -> str:
    return f"channel {channel_id[:10]}"


async def charge(stack: Stack, requester: str, amount: int) -> None:
    """Usage settled in deals: 90 % to the provider bob, 10 % commission."""
    to_bob = amount * 9 // 10
    legs = [
        Leg(requester_account(requester), provider_account("bob"), Amount(to_bob)),
        Leg(requester_account(requester), COMMISSION, Amount(amount - to_bob)),
    ]
    await ledger.post(stack.pool, legs, kind="charge")


async def full_cycle(stack: Stack) -> tuple[str, str]:
    """Deposit and top-up, usage, a proof, a payout channel, a withdrawal, both channels closed
    cooperatively; returns (requester channel, payout channel)."""
    alice, carol = stack.requesters[0], stack.requesters[1]
    await accounts.create_account(stack.pool, address=alice, name="alice")
    await accounts.create_account(stack.pool, address=stack.provider, name="bob")
    await accounts.create_account(stack.pool, address=carol, name="carol")
    requester_channel = stack.open(alice, stack.operator, 100 * TOKEN)
    stack.top_up(alice, requester_channel, 20 * TOKEN)
    payout_channel = stack.open(stack.operator, stack.provider, 50 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    assert await watcher.poll_once() == 3

    await charge(stack, "alice", 30 * TOKEN)
    proof = stack.sign(alice, requester_channel, 30 * TOKEN)
    await channels.record_proof(stack.pool, requester_channel, 30 * TOKEN, proof, domain=stack.domain)
    await ledger.credit_account(stack.pool, "carol", Amount(5 * TOKEN), "promo-1")
    withdrawal, _ = await withdrawals.request(stack.pool, account_name="carol", amount=Amount(5 * TOKEN))
    await withdrawals.complete(stack.pool, withdrawal.id, "0x" + "77" * 32)

    stack.cooperative_close(alice, stack.operator, requester_channel, 30 * TOKEN)
    stack.cooperative_close(stack.operator, stack.provider, payout_channel, 27 * TOKEN)
    stack.mine()
    assert await watcher.poll_once() == 2
    return requester_channel, payout_channel


async def test_reconcile_ok_while_channels_are_open(stack: Stack, aw3: AsyncWeb3[Any]) -> None:
    await accounts.create_account(stack.pool, address=stack.requesters[0], name="alice")
    channel_id = stack.open(stack.requesters[0], stack.operator, 100 * TOKEN)
    stack.top_up(stack.requesters[0], channel_id, 3)
    stack.open(stack.operator, stack.provider, 50 * TOKEN)
    stack.mine()
    await stack.watcher().poll_once()

    report = await check(stack, aw3)
    assert report.ok, format_report(report)
    checks = {c.name: c for c in report.checks}
    assert checks["PaymentChannels token balance"].actual == 150 * TOKEN + 3
    assert checks[f"{short(channel_id)}: deposits credited"].expected == 100 * TOKEN + 3
    assert checks["external:chain balance"].expected == -(100 * TOKEN + 3)
    assert report.shortfalls == ()


async def test_reconcile_ok_after_a_full_cycle(stack: Stack, aw3: AsyncWeb3[Any]) -> None:
    requester_channel, payout_channel = await full_cycle(stack)
    report = await check(stack, aw3)
    assert report.ok, format_report(report)
    checks = {c.name: c for c in report.checks}
    assert checks[f"{short(requester_channel)}: refund in the ledger"].actual == 90 * TOKEN
    assert checks[f"{short(payout_channel)}: payout in the ledger"].actual == 27 * TOKEN
    assert checks[f"{short(requester_channel)}: state"].expected == "settled"
    assert checks["PaymentChannels token balance"].expected == 0
    # -120 deposited + 90 refunded + 27 paid out + 5 withdrawn
    assert checks["external:chain balance"].actual == 2 * TOKEN
    assert stack.tokens(stack.channels.address) == 0
    text = format_report(report)
    assert text.splitlines()[0] == f"Reconciliation at block {report.block}: OK"
    assert "MISMATCH" not in text


async def test_reconcile_reports_an_extra_deposit_movement(stack: Stack, aw3: AsyncWeb3[Any]) -> None:
    await full_cycle(stack)
    await ledger.post(
        stack.pool,
        [Leg(CHAIN, requester_account("alice"), Amount(1))],
        kind="deposit",
        reference="chain:0xfake:0",
    )
    report = await check(stack, aw3)
    assert not report.ok
    assert failing(report) == {"deposits credited (all)", "external:chain balance"}
    (extra,) = [c for c in report.failures if c.name == "deposits credited (all)"]
    assert extra.actual == extra.expected + 1  # type: ignore[operator]
    text = format_report(report)
    assert "MISMATCH (2 of" in text.splitlines()[0]
    assert text.splitlines()[1].startswith("  MISMATCH")


async def test_reconcile_reports_a_table_deposit_the_chain_does_not_hold(
    stack: Stack, aw3: AsyncWeb3[Any]
) -> None:
    await accounts.create_account(stack.pool, address=stack.requesters[0], name="alice")
    channel_id = stack.open(stack.requesters[0], stack.operator, 10 * TOKEN)
    stack.mine()
    await stack.watcher().poll_once()
    await stack.pool.execute("UPDATE channels SET deposit = deposit + 1")
    report = await check(stack, aw3)
    assert failing(report) == {f"{short(channel_id)}: deposit", "PaymentChannels token balance"}


async def test_reconcile_reports_a_refund_that_differs_from_the_chain(
    stack: Stack, aw3: AsyncWeb3[Any]
) -> None:
    requester_channel, _ = await full_cycle(stack)
    await stack.pool.execute("UPDATE ledger_transfers SET amount = amount - 1 WHERE kind = 'refund'")
    report = await check(stack, aw3)
    assert failing(report) == {f"{short(requester_channel)}: refund in the ledger"}


async def test_reconcile_reports_a_close_below_the_proof(stack: Stack, aw3: AsyncWeb3[Any]) -> None:
    alice = stack.requesters[0]
    await accounts.create_account(stack.pool, address=alice, name="alice")
    channel_id = stack.open(alice, stack.operator, 50 * TOKEN)
    stack.mine()
    watcher = stack.watcher()
    await watcher.poll_once()
    proof = stack.sign(alice, channel_id, 40 * TOKEN)
    await channels.record_proof(stack.pool, channel_id, 40 * TOKEN, proof, domain=stack.domain)
    await charge(stack, "alice", 40 * TOKEN)
    stack.close(alice, channel_id, 10 * TOKEN)
    stack.settle(channel_id)  # the watcher was not there to counter during the whole period
    stack.mine()
    assert await watcher.apply_confirmed() == 2

    report = await check(stack, aw3)
    assert failing(report) == {f"{short(channel_id)}: paid at least the proof held"}
    (unpaid,) = report.failures
    assert (unpaid.expected, unpaid.actual) == (10 * TOKEN, 40 * TOKEN)
    (shortfall,) = report.shortfalls
    assert (shortfall.channel_id, shortfall.account, shortfall.kind, shortfall.amount) == (
        channel_id, "requester:alice", "unpaid_usage", 30 * TOKEN,
    )  # fmt: skip
    text = format_report(report)
    assert f"channel {channel_id}: unpaid_usage of {30 * TOKEN} (30 IPSX) to requester:alice" in text


async def test_reconcile_reads_the_chain_at_the_watchers_cursor(stack: Stack, aw3: AsyncWeb3[Any]) -> None:
    alice = stack.requesters[0]
    await accounts.create_account(stack.pool, address=alice, name="alice")
    channel_id = stack.open(alice, stack.operator, 10 * TOKEN)
    stack.mine()
    await stack.watcher().poll_once()
    stack.top_up(alice, channel_id, 5 * TOKEN)  # not confirmed yet: the ledger does not have it
    report = await check(stack, aw3)
    assert report.ok, format_report(report)
    assert report.block < stack.block()
    latest = await reconcile(
        stack.pool, aw3, stack.channels.address, stack.token.address, block=stack.block()
    )
    assert failing(latest) == {
        f"{short(channel_id)}: deposit",
        f"{short(channel_id)}: deposits credited",
        "PaymentChannels token balance",
        "deposits credited (all)",
        "external:chain balance",
    }


async def test_reconcile_with_no_channels(stack: Stack, aw3: AsyncWeb3[Any]) -> None:
    report = await check(stack, aw3)
    assert report.ok
    assert [c.name for c in report.checks] == [
        "PaymentChannels token balance",
        "deposits credited (all)",
        "external:chain balance",
    ]
    assert await ledger.balance(stack.pool, TREASURY) == 0
