"""The operator's closing consent freezes a requester channel, and invoices go to the oldest
usable channel with room, on the real PostgreSQL and Redis. The consent never expires on-chain
(PaymentChannels.cooperativeClose), so once given at a balance B nothing more may be owed on the
channel: no invoice, no proof above B, and a requester left with no usable channel is cut off."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import channels, payments
from billing.channels import ProofRejected
from billing.keys import PAYMENT_CUTOFF
from billing.payments import ConsentRefused, Invoicer, PaymentSettings
from tests.billing.test_payments import CHANNEL, DOMAIN, open_channel, proof, settled

SECOND = "0x" + "22" * 32

pytest_plugins = ("tests.billing.test_payments",)  # its ``alice`` fixture: a channel of 1,000


async def paid_up_to(pool: asyncpg.Pool, charge: int) -> None:
    """Alice's settled deal of ``charge``, invoiced and paid with her proof of the cumulative."""
    await settled(pool, charge)
    (invoice,) = await payments.invoice_due(pool)
    await payments.pay(pool, invoice.invoice_id, proof(invoice.cumulative), account="alice", domain=DOMAIN)


async def channel(pool: asyncpg.Pool, channel_id: str = CHANNEL) -> channels.Channel:
    found = await channels.get(pool, channel_id)
    assert found is not None
    return found


async def test_consent_state_freezes_the_channel_at_the_proof_balance(pool: asyncpg.Pool, alice: int) -> None:
    await paid_up_to(pool, 300)
    frozen = await payments.consent(pool, await channel(pool))
    assert (frozen.consented_balance, frozen.state, frozen.frozen) == (300, "open", True)
    # Usage after the consent is billed on no channel: the requester could close at 300 any time.
    await settled(pool, 100)
    assert await payments.invoice_due(pool) == []
    with pytest.raises(ProofRejected) as above:
        await channels.record_proof(pool, CHANNEL, 400, proof(400), domain=DOMAIN)
    assert above.value.reason == "consented"
    assert (await channel(pool)).proof_balance == 300
    # The consent asked for again is for the same balance.
    again = await payments.consent(pool, await channel(pool))
    assert again.consented_balance == 300


async def test_consent_state_cuts_off_a_requester_left_without_a_usable_channel(
    pool: asyncpg.Pool, alice: int, redis: Redis
) -> None:
    invoicer = Invoicer(pool, redis, PaymentSettings(unpaid_limit=10**6))
    assert await invoicer.pass_once() == {}
    await payments.consent(pool, await channel(pool))
    assert await invoicer.pass_once() == {"alice": 0}
    assert await redis.hgetall(PAYMENT_CUTOFF) == {b"alice": b"0"}
    await open_channel(pool, alice, SECOND, deposit=500)  # a new channel: served again
    assert await invoicer.pass_once() == {}
    await settled(pool, 40)
    await invoicer.pass_once()
    (invoice,) = await payments.listing(pool, account="alice")
    assert (invoice.channel_id, invoice.cumulative) == (SECOND, 40)


async def test_consent_call_is_refused_while_usage_is_unpaid_or_deals_run(
    pool: asyncpg.Pool, alice: int
) -> None:
    await settled(pool, 100)
    with pytest.raises(ConsentRefused) as unpaid:
        await payments.consent(pool, await channel(pool))
    assert (unpaid.value.reason, unpaid.value.owed) == ("unpaid_usage", 100)
    (invoice,) = await payments.invoice_due(pool)
    with pytest.raises(ConsentRefused) as invoiced:
        await payments.consent(pool, await channel(pool))
    assert (invoiced.value.reason, invoiced.value.owed) == ("unpaid_usage", 100)
    await payments.pay(pool, invoice.invoice_id, proof(100), account="alice", domain=DOMAIN)
    await settled(pool, 50, state="active")  # would be billed once settled: not on a frozen channel
    with pytest.raises(ConsentRefused) as running:
        await payments.consent(pool, await channel(pool))
    assert (running.value.reason, running.value.running) == ("deals_running", 1)
    assert not (await channel(pool)).frozen
    # With another usable channel the running deal is billed there: the consent is given.
    await open_channel(pool, alice, SECOND, deposit=500)
    assert (await payments.consent(pool, await channel(pool))).consented_balance == 100


async def test_consent_call_is_refused_on_a_closing_channel(pool: asyncpg.Pool, alice: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        locked = await channels.lock_in(conn, CHANNEL)
        assert locked is not None
        await channels.update_in(conn, locked, state="closing", closing_balance=0, settle_after=1)
    with pytest.raises(ConsentRefused) as closing:
        await payments.consent(pool, await channel(pool))
    assert (closing.value.reason, closing.value.state) == ("not_open", "closing")
    assert not (await channel(pool)).frozen


async def test_invoice_due_call_moves_to_the_next_channel_once_the_deposit_is_used(
    pool: asyncpg.Pool, alice: int
) -> None:
    await paid_up_to(pool, 1000)  # the first channel's whole deposit
    await open_channel(pool, alice, SECOND, deposit=500)
    await settled(pool, 200)
    (invoice,) = await payments.invoice_due(pool)
    assert (invoice.channel_id, invoice.amount, invoice.cumulative) == (SECOND, 200, 200)
    paid = await payments.pay(
        pool, invoice.invoice_id, proof(200, channel=SECOND), account="alice", domain=DOMAIN
    )
    assert paid.state == "paid"
    assert await payments.unpaid(pool) == {}


async def test_invoice_due_call_skips_a_frozen_channel(pool: asyncpg.Pool, alice: int) -> None:
    await open_channel(pool, alice, SECOND, deposit=500)
    await payments.consent(pool, await channel(pool))
    await settled(pool, 70)
    (invoice,) = await payments.invoice_due(pool)
    assert (invoice.channel_id, invoice.cumulative) == (SECOND, 70)
