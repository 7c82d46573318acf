"""The operator's closing consent freezes a requester channel until it expires, and invoices go
to the oldest usable channel with room, on the real PostgreSQL and Redis. Until the consent's
expiry (PaymentChannels.cooperativeClose refuses it after) the requester may close at its balance B,
so nothing more may be owed on the channel: no invoice, no proof above B, and a requester left with
no usable channel is cut off. Once the chain watcher has applied a block stamped after the expiry,
the channel is usable again.

The passing of time is the consent's expiry moved into the past (:func:`age`), by the database's
clock, and the watcher's cursor moved to a block stamped around it (:func:`chain_at`)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import channels, payments
from billing.channels import ProofRejected
from billing.keys import PAYMENT_CUTOFF
from billing.payments import ConsentRefused, Invoicer, PaymentSettings
from tests.billing.test_payments import CHANNEL, DOMAIN, open_channel, proof, settled

SECOND = "0x" + "22" * 32
HOUR = 3600

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


async def consent(pool: asyncpg.Pool, channel_id: str = CHANNEL) -> channels.Channel:
    return await payments.consent(pool, await channel(pool, channel_id), ttl=HOUR)


async def db_now(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT floor(extract(epoch FROM now()))::bigint"))


async def age(pool: asyncpg.Pool, seconds_past_expiry: int) -> None:
    """Let time pass until the channel's consent expired ``seconds_past_expiry`` ago."""
    await pool.execute(
        "UPDATE channels SET consent_expires_at = $2 WHERE channel_id = $1",
        CHANNEL,
        await db_now(pool) - seconds_past_expiry,
    )


async def chain_at(pool: asyncpg.Pool, seconds_past_expiry: int) -> None:
    """The contract's watcher has applied a block stamped ``seconds_past_expiry`` after the
    channel's consent expired (as ``billing.chain`` saves its cursor)."""
    contract, expires_at = await pool.fetchrow(
        "SELECT contract, consent_expires_at FROM channels WHERE channel_id = $1", CHANNEL
    )
    await pool.execute(
        "INSERT INTO chain_cursors (name, block, block_hash, block_time) VALUES ($1, 1, '0x', $2)"
        " ON CONFLICT (name) DO UPDATE SET block_time = $2",
        f"channels:{contract}",
        expires_at + seconds_past_expiry,
    )


async def test_consent_state_freezes_the_channel_at_the_proof_balance(pool: asyncpg.Pool, alice: int) -> None:
    await paid_up_to(pool, 300)
    before = await db_now(pool)
    frozen = await consent(pool)
    after = await db_now(pool)
    assert (frozen.consented_balance, frozen.state, frozen.frozen, frozen.consent_in_force) == (
        300,
        "open",
        True,
        True,
    )
    assert frozen.consent_expires_at is not None
    assert before + HOUR <= frozen.consent_expires_at <= after + HOUR
    # Usage after the consent is billed on no channel: the requester could close at 300 until then.
    await settled(pool, 100)
    assert await payments.invoice_due(pool) == []
    with pytest.raises(ProofRejected) as above:
        await channels.record_proof(pool, CHANNEL, 400, proof(400), domain=DOMAIN)
    assert above.value.reason == "consented"
    assert (await channel(pool)).proof_balance == 300
    # The consent asked for again is the same consent: same balance, same expiry.
    again = await consent(pool)
    assert (again.consented_balance, again.consent_expires_at) == (300, frozen.consent_expires_at)


async def test_consent_state_ends_once_the_chain_is_past_the_expiry(pool: asyncpg.Pool, alice: int) -> None:
    await paid_up_to(pool, 300)
    await consent(pool)
    await settled(pool, 100)
    # Expired by the database's clock, but the watcher has applied no block stamped after the
    # expiry (it lags its confirmations, or it is stopped): a close at 300 may still be on its way.
    await age(pool, 3600)
    for behind in (None, -10, 0):  # no cursor yet, a block before the expiry, a block stamped at it
        if behind is not None:
            await chain_at(pool, behind)
        expired = await channel(pool)
        assert (expired.consent_in_force, expired.frozen) == (False, True)
        assert await payments.invoice_due(pool) == []
        with pytest.raises(ProofRejected) as above:
            await channels.record_proof(pool, CHANNEL, 400, proof(400), domain=DOMAIN)
        assert above.value.reason == "consented"
    # A block stamped after the expiry is applied: no block can take the consent any more, and a
    # close at 300 would have been seen. The channel is invoiced and paid again.
    await chain_at(pool, 1)
    assert not (await channel(pool)).frozen
    (invoice,) = await payments.invoice_due(pool)
    assert (invoice.channel_id, invoice.cumulative) == (CHANNEL, 400)
    paid = await payments.pay(pool, invoice.invoice_id, proof(400), account="alice", domain=DOMAIN)
    assert paid.state == "paid"
    # The spent consent is cleared with the first proof above its balance.
    used = await channel(pool)
    assert (used.proof_balance, used.consented_balance, used.consent_expires_at) == (400, None, None)
    assert await payments.unpaid(pool) == {}


async def test_consent_state_of_an_expired_consent_lets_the_requester_back_in(
    pool: asyncpg.Pool, alice: int, redis: Redis
) -> None:
    invoicer = Invoicer(pool, redis, PaymentSettings(unpaid_limit=10**6))
    await consent(pool)
    assert await invoicer.pass_once() == {"alice": 0}  # no usable channel left
    await age(pool, 60)
    await chain_at(pool, 1)
    assert await invoicer.pass_once() == {}
    assert await redis.hgetall(PAYMENT_CUTOFF) == {}


async def test_consent_call_after_the_expiry_gives_a_new_consent(pool: asyncpg.Pool, alice: int) -> None:
    await paid_up_to(pool, 300)
    await consent(pool)
    await age(pool, 10)  # expired: the contract refuses it, and the channel is frozen still
    before = await db_now(pool)
    renewed = await consent(pool)
    assert renewed.consented_balance == 300
    assert renewed.consent_expires_at is not None and renewed.consent_expires_at >= before + HOUR
    assert (renewed.consent_in_force, renewed.frozen) == (True, True)


async def test_consent_call_after_the_chain_passed_the_expiry_gives_a_new_consent(
    pool: asyncpg.Pool, alice: int
) -> None:
    # The chain's clock runs ahead of the database's: its watcher applied a block stamped after
    # the expiry while the database still counts the consent in force. The contract refuses the
    # old consent, so asking again must not hand it back.
    await paid_up_to(pool, 300)
    first = await consent(pool)
    assert first.consent_expires_at is not None and first.consent_expires_at > await db_now(pool)
    await chain_at(pool, 1)
    spent = await channel(pool)
    assert (spent.consent_in_force, spent.frozen) == (False, False)
    renewed = await consent(pool)
    assert renewed.consented_balance == 300
    assert renewed.consent_expires_at == first.consent_expires_at + 1 + HOUR  # from the chain's clock
    assert (renewed.consent_in_force, renewed.frozen) == (True, True)


async def test_consent_state_without_expiry_freezes_for_good(pool: asyncpg.Pool, alice: int) -> None:
    await consent(pool)
    # A consent given before consents expired: its contract takes it for good.
    await pool.execute("UPDATE channels SET consent_expires_at = NULL WHERE channel_id = $1", CHANNEL)
    legacy = await channel(pool)
    assert (legacy.consent_in_force, legacy.frozen) == (True, True)
    assert (await consent(pool)).consent_expires_at is None
    await settled(pool, 100)
    assert await payments.invoice_due(pool) == []


async def test_consent_call_refuses_a_ttl_below_one_second(pool: asyncpg.Pool, alice: int) -> None:
    with pytest.raises(ValueError, match="at least one second"):
        await payments.consent(pool, await channel(pool), ttl=0)
    assert (await channel(pool)).consented_balance is None


async def test_consent_state_cuts_off_a_requester_left_without_a_usable_channel(
    pool: asyncpg.Pool, alice: int, redis: Redis
) -> None:
    invoicer = Invoicer(pool, redis, PaymentSettings(unpaid_limit=10**6))
    assert await invoicer.pass_once() == {}
    await consent(pool)
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
        await consent(pool)
    assert (unpaid.value.reason, unpaid.value.owed) == ("unpaid_usage", 100)
    (invoice,) = await payments.invoice_due(pool)
    with pytest.raises(ConsentRefused) as invoiced:
        await consent(pool)
    assert (invoiced.value.reason, invoiced.value.owed) == ("unpaid_usage", 100)
    await payments.pay(pool, invoice.invoice_id, proof(100), account="alice", domain=DOMAIN)
    await settled(pool, 50, state="active")  # would be billed once settled: not on a frozen channel
    with pytest.raises(ConsentRefused) as running:
        await consent(pool)
    assert (running.value.reason, running.value.running) == ("deals_running", 1)
    assert not (await channel(pool)).frozen
    # With another usable channel the running deal is billed there: the consent is given.
    await open_channel(pool, alice, SECOND, deposit=500)
    assert (await consent(pool)).consented_balance == 100


async def test_consent_call_is_refused_on_a_closing_channel(pool: asyncpg.Pool, alice: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        locked = await channels.lock_in(conn, CHANNEL)
        assert locked is not None
        await channels.update_in(conn, locked, state="closing", closing_balance=0, settle_after=1)
    with pytest.raises(ConsentRefused) as closing:
        await consent(pool)
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
    await consent(pool)
    await settled(pool, 70)
    (invoice,) = await payments.invoice_due(pool)
    assert (invoice.channel_id, invoice.cumulative) == (SECOND, 70)


async def test_consent_expiry_counts_from_the_chain_when_its_clock_runs_ahead(
    pool: asyncpg.Pool, alice: int
) -> None:
    # The watcher's last block is stamped 1,000 s after the database's now: the requester still
    # gets the whole ttl by the chain's clock, which the contract judges the expiry by.
    await paid_up_to(pool, 300)
    contract = await pool.fetchval("SELECT contract FROM channels WHERE channel_id = $1", CHANNEL)
    ahead = await db_now(pool) + 1000
    await pool.execute(
        "INSERT INTO chain_cursors (name, block, block_hash, block_time) VALUES ($1, 1, '0x', $2)",
        f"channels:{contract}",
        ahead,
    )
    frozen = await consent(pool)
    assert frozen.consent_expires_at == ahead + HOUR


async def test_consent_calls_on_two_channels_at_once_leave_a_running_deal_one(
    pool: asyncpg.Pool, alice: int
) -> None:
    # Each consent alone would be given (the other channel can bill the running deal); both at
    # once would leave it none. They are taken one at a time: the second sees the first's freeze.
    await open_channel(pool, alice, SECOND, deposit=500)
    await settled(pool, 50, state="active")
    first, second = await asyncio.gather(
        consent(pool, CHANNEL), consent(pool, SECOND), return_exceptions=True
    )
    outcomes = sorted([type(first).__name__, type(second).__name__])
    assert outcomes == ["Channel", "ConsentRefused"], (first, second)
    refused = first if isinstance(first, ConsentRefused) else second
    assert isinstance(refused, ConsentRefused) and refused.reason == "deals_running"
    usable = await pool.fetchval(f"SELECT count(*) FROM channels c WHERE {channels.USABLE}")
    assert usable == 1
