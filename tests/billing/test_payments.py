"""Invoices and their payment by balance proofs, on the real PostgreSQL and Redis: billing settled
deals once, up to the channel's deposit; proofs checked and stored; who is cut off for unpaid
usage. Channels are recorded as the chain watcher records them; the proofs are real EIP-712
signatures (the contract's own checks of them are in tests/contracts)."""

from __future__ import annotations

import secrets

import asyncpg
import pytest
from eth_account import Account
from redis.asyncio import Redis

from billing import channels, payments
from billing.accounts import create_account
from billing.channels import ProofRejected
from billing.keys import PAYMENT_CUTOFF
from billing.payments import Invoicer, PaymentSettings, UnknownInvoice
from contracts import proofs

OPERATOR = Account.from_key(bytes.fromhex("a1" * 32))
ALICE = Account.from_key(bytes.fromhex("b2" * 32))
DOMAIN = proofs.ChannelDomain(chain_id=31337, verifying_contract="0x" + "cc" * 20)  # type: ignore[arg-type]
CHANNEL = "0x" + "11" * 32


@pytest.fixture
async def alice(pool: asyncpg.Pool) -> int:
    await pool.execute("TRUNCATE invoiced_deals, invoices, channels, chain_cursors, deals CASCADE")
    account = await create_account(pool, address=ALICE.address, name="alice")
    await open_channel(pool, account.id, CHANNEL, deposit=1000)
    return account.id


async def open_channel(pool: asyncpg.Pool, account_id: int, channel_id: str, deposit: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await channels.open_in(
            conn,
            channel_id=channel_id,
            contract=DOMAIN.verifying_contract,
            sender=ALICE.address,
            receiver=OPERATOR.address,
            role="requester",
            account_id=account_id,
            deposit=deposit,
            opened_block=1,
        )


async def settled(pool: asyncpg.Pool, charge: int, requester: str = "alice", state: str = "settled") -> str:
    """A deal as the market leaves it once settled, charging ``charge`` base units."""
    deal_id = f"r{secrets.token_hex(4)}_1"
    await pool.execute(
        "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb,"
        " price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state, record, charge, commission)"
        " VALUES ($1, 'r', 'o', $2, 'bob', 'e1', 1, 0, $3, 60, 0, false, $4, '{}', $3, 0)",
        deal_id,
        requester,
        charge,
        state,
    )
    return deal_id


def proof(balance: int, key: bytes = ALICE.key, channel: str = CHANNEL) -> str:
    return "0x" + proofs.sign_balance_proof(DOMAIN, bytes.fromhex(channel[2:]), balance, key).hex()


async def test_invoice_due_bills_settled_deals_once_with_the_cumulative_to_sign(
    pool: asyncpg.Pool, alice: int
) -> None:
    first, second = await settled(pool, 100), await settled(pool, 150)
    await settled(pool, 999, state="active")  # not settled yet: not billed
    (invoice,) = await payments.invoice_due(pool)
    assert (invoice.amount, invoice.cumulative, set(invoice.deal_ids)) == (250, 250, {first, second})
    assert await payments.invoice_due(pool) == []  # nothing new
    third = await settled(pool, 50)
    (later,) = await payments.invoice_due(pool)
    assert (later.amount, later.cumulative, later.deal_ids) == (50, 300, (third,))


async def test_an_invoice_never_goes_past_the_deposit(pool: asyncpg.Pool, alice: int) -> None:
    await settled(pool, 600)
    await settled(pool, 600)  # would bring it to 1,200 of a 1,000 deposit: waits for a top-up
    (invoice,) = await payments.invoice_due(pool)
    assert invoice.cumulative == 600
    assert await payments.unpaid(pool) == {"alice": 1200}  # the waiting deal is owed all the same


async def test_a_balance_proof_pays_the_invoice_and_the_earlier_ones(pool: asyncpg.Pool, alice: int) -> None:
    await settled(pool, 100)
    (one,) = await payments.invoice_due(pool)
    await settled(pool, 40)
    (two,) = await payments.invoice_due(pool)
    paid = await payments.pay(pool, two.invoice_id, proof(140), account="alice", domain=DOMAIN)
    assert (paid.state, paid.cumulative) == ("paid", 140)
    assert {i.invoice_id: i.state for i in await payments.listing(pool, account="alice")} == {
        one.invoice_id: "paid",
        two.invoice_id: "paid",
    }
    channel = await channels.get(pool, CHANNEL)
    assert channel is not None and channel.proof_balance == 140
    assert await payments.unpaid(pool) == {}
    # Paying it again changes nothing; an older proof for the first invoice is not needed any more.
    again = await payments.pay(pool, two.invoice_id, proof(140), account="alice", domain=DOMAIN)
    assert again.paid_at == paid.paid_at


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (lambda: proof(99), "wrong_signer"),  # a proof of another balance recovers another signer
        (lambda: proof(100, key=OPERATOR.key), "wrong_signer"),
        (lambda: "0x" + "00" * 65, "bad_signature"),
        (lambda: "0x1234", "bad_signature"),
    ],
)
async def test_a_bad_proof_pays_nothing(
    pool: asyncpg.Pool, alice: int, signature: object, reason: str
) -> None:
    await settled(pool, 100)
    (invoice,) = await payments.invoice_due(pool)
    with pytest.raises(ProofRejected) as info:
        await payments.pay(pool, invoice.invoice_id, signature(), account="alice", domain=DOMAIN)  # type: ignore[operator]
    assert info.value.reason == reason
    assert (await payments.listing(pool, account="alice"))[0].state == "open"
    assert await payments.unpaid(pool) == {"alice": 100}


async def test_another_accounts_invoice_is_unknown(pool: asyncpg.Pool, alice: int) -> None:
    await create_account(pool, address="0x" + "de" * 20, name="mallory")
    await settled(pool, 100)
    (invoice,) = await payments.invoice_due(pool)
    with pytest.raises(UnknownInvoice):
        await payments.pay(pool, invoice.invoice_id, proof(100), account="mallory", domain=DOMAIN)
    with pytest.raises(UnknownInvoice):
        await payments.pay(pool, invoice.invoice_id + 1, proof(100), account="alice", domain=DOMAIN)


async def test_a_requester_without_a_channel_has_prepaid(pool: asyncpg.Pool, alice: int) -> None:
    await create_account(pool, address="0x" + "ef" * 20, name="carol")
    await settled(pool, 500, requester="carol")
    assert await payments.invoice_due(pool) == []
    assert "carol" not in await payments.unpaid(pool)


async def test_the_invoicer_cuts_off_who_owes_above_the_limit_and_lets_them_back(
    pool: asyncpg.Pool, alice: int, redis: Redis
) -> None:
    invoicer = Invoicer(pool, redis, PaymentSettings(unpaid_limit=200))
    await settled(pool, 150)
    assert await invoicer.pass_once() == {}
    assert await redis.hgetall(PAYMENT_CUTOFF) == {}
    await settled(pool, 100)
    assert await invoicer.pass_once() == {"alice": 250}
    assert await redis.hgetall(PAYMENT_CUTOFF) == {b"alice": b"250"}
    newest = (await payments.listing(pool, account="alice"))[0]
    await payments.pay(pool, newest.invoice_id, proof(newest.cumulative), account="alice", domain=DOMAIN)
    assert await invoicer.pass_once() == {}
    assert await redis.hgetall(PAYMENT_CUTOFF) == {}
