"""The channel store on the real PostgreSQL: balance proofs recorded, and every reason to refuse one.

The channels are written as the watcher writes them (``open_in``/``update_in``); proofs are signed
with eth-account keys in the EIP-712 domain of a PaymentChannels address, no chain needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from billing import accounts, channels
from billing.channels import Channel, ChannelStateError, ProofRejected
from contracts import proofs

TOKEN = 10**18
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = proofs.ChannelDomain(chain_id=31337, verifying_contract=CONTRACT)  # type: ignore[arg-type]
OPERATOR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
SENDER: LocalAccount = Account.from_key("0x" + "11" * 32)
OTHER: LocalAccount = Account.from_key("0x" + "22" * 32)
CHANNEL_ID = "0x" + "ab" * 32
DEPOSIT = 100 * TOKEN


@pytest.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The billing pool with the channel tables emptied."""
    await pool.execute("TRUNCATE channels, chain_logs, chain_cursors RESTART IDENTITY CASCADE")
    yield pool


async def open_channel(
    pool: asyncpg.Pool, channel_id: str = CHANNEL_ID, *, role: str = "requester"
) -> Channel:
    """A channel from SENDER (account alice) to the operator, as the watcher records it."""
    account = await accounts.account_for_address(pool, SENDER.address)
    async with pool.acquire() as conn, conn.transaction():
        await channels.open_in(
            conn,
            channel_id=channel_id,
            contract=CONTRACT,
            sender=SENDER.address,
            receiver=OPERATOR,
            role=role,
            account_id=account.id,
            deposit=DEPOSIT,
            opened_block=7,
        )
    channel = await channels.get(pool, channel_id)
    assert channel is not None
    return channel


def sign(balance: int, key: LocalAccount = SENDER, domain: proofs.ChannelDomain = DOMAIN) -> bytes:
    return proofs.sign_balance_proof(domain, bytes.fromhex(CHANNEL_ID[2:]), balance, key.key)


async def rejected(
    pool: asyncpg.Pool, balance: int, signature: bytes | str, channel_id: str = CHANNEL_ID
) -> str:
    with pytest.raises(ProofRejected) as raised:
        await channels.record_proof(pool, channel_id, balance, signature, domain=DOMAIN)
    return raised.value.reason


async def test_record_proof_state(db: asyncpg.Pool) -> None:
    await open_channel(db)
    signature = sign(30 * TOKEN)
    channel = await channels.record_proof(db, CHANNEL_ID, 30 * TOKEN, signature, domain=DOMAIN)
    assert (channel.proof_balance, channel.proof_signature) == (30 * TOKEN, "0x" + signature.hex())
    assert await channels.get(db, CHANNEL_ID) == channel

    higher = sign(DEPOSIT)  # up to the whole deposit, given as hex
    channel = await channels.record_proof(
        db, CHANNEL_ID.upper().replace("0X", "0x"), DEPOSIT, higher.hex(), domain=DOMAIN
    )
    assert (channel.proof_balance, channel.proof_signature) == (DEPOSIT, "0x" + higher.hex())


async def test_record_proof_equal_balance_is_accepted_unchanged(db: asyncpg.Pool) -> None:
    await open_channel(db)
    first = await channels.record_proof(db, CHANNEL_ID, 30 * TOKEN, sign(30 * TOKEN), domain=DOMAIN)
    again = await channels.record_proof(db, CHANNEL_ID, 30 * TOKEN, sign(30 * TOKEN), domain=DOMAIN)
    assert again == first


async def test_record_proof_rejects_unknown_channel(db: asyncpg.Pool) -> None:
    await open_channel(db)
    assert await rejected(db, TOKEN, sign(TOKEN), channel_id="0x" + "cd" * 32) == "unknown_channel"
    assert await rejected(db, TOKEN, sign(TOKEN), channel_id="0xabab") == "unknown_channel"


async def test_record_proof_rejects_a_channel_not_open(db: asyncpg.Pool) -> None:
    channel = await open_channel(db)
    async with db.acquire() as conn:
        await channels.update_in(conn, channel, state="closing", closing_balance=0, settle_after=10**10)
    assert await rejected(db, TOKEN, sign(TOKEN)) == "not_open"


async def test_record_proof_rejects_malformed_signatures(db: asyncpg.Pool) -> None:
    await open_channel(db)
    good = sign(TOKEN)
    assert await rejected(db, TOKEN, good[:64]) == "bad_signature"
    assert await rejected(db, TOKEN, "0x" + "zz" * 65) == "bad_signature"
    assert await rejected(db, TOKEN, good[:64] + bytes([29])) == "bad_signature"  # v neither 27 nor 28
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(good[32:64], "big")
    high_s = good[:32] + (n - s).to_bytes(32, "big") + bytes([55 - good[64]])  # same signer, upper s
    assert await rejected(db, TOKEN, high_s) == "bad_signature"


async def test_record_proof_rejects_another_signer(db: asyncpg.Pool) -> None:
    await open_channel(db)
    assert await rejected(db, TOKEN, sign(TOKEN, key=OTHER)) == "wrong_signer"
    # The sender's signature of another balance recovers another address.
    assert await rejected(db, 2 * TOKEN, sign(TOKEN)) == "wrong_signer"
    # Signed for another deployment (chain id): not a proof for this contract.
    elsewhere = proofs.ChannelDomain(chain_id=1, verifying_contract=CONTRACT)  # type: ignore[arg-type]
    assert await rejected(db, TOKEN, sign(TOKEN, domain=elsewhere)) == "wrong_signer"
    assert (await channels.get(db, CHANNEL_ID)).proof_balance == 0  # type: ignore[union-attr]


async def test_record_proof_rejects_a_balance_above_the_deposit(db: asyncpg.Pool) -> None:
    await open_channel(db)
    assert await rejected(db, DEPOSIT + 1, sign(DEPOSIT + 1)) == "above_deposit"


async def test_record_proof_rejects_a_stale_balance(db: asyncpg.Pool) -> None:
    await open_channel(db)
    await channels.record_proof(db, CHANNEL_ID, 30 * TOKEN, sign(30 * TOKEN), domain=DOMAIN)
    assert await rejected(db, 30 * TOKEN - 1, sign(30 * TOKEN - 1)) == "stale"
    assert (await channels.get(db, CHANNEL_ID)).proof_balance == 30 * TOKEN  # type: ignore[union-attr]


async def test_record_proof_refuses_a_domain_of_another_contract(db: asyncpg.Pool) -> None:
    await open_channel(db)
    other = proofs.ChannelDomain(chain_id=31337, verifying_contract="0x" + "99" * 20)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="domain"):
        await channels.record_proof(db, CHANNEL_ID, TOKEN, sign(TOKEN, domain=other), domain=other)
    with pytest.raises(ValueError, match="uint256"):
        await channels.record_proof(db, CHANNEL_ID, -1, sign(TOKEN), domain=DOMAIN)


async def test_for_account_lists_open_channels_in_a_role(db: asyncpg.Pool) -> None:
    first = await open_channel(db)
    second = await open_channel(db, "0x" + "cd" * 32)
    await open_channel(db, "0x" + "ef" * 32, role="provider")
    assert first.account_id is not None
    async with db.acquire() as conn:
        await channels.update_in(conn, second, state="settled", paid=0, refunded=DEPOSIT)
    (listed,) = await channels.for_account(db, first.account_id, "requester")
    assert listed.channel_id == CHANNEL_ID
    (payout,) = await channels.for_account(db, first.account_id, "provider")
    assert payout.channel_id == "0x" + "ef" * 32
    assert await channels.for_account(db, first.account_id + 1, "requester") == []
    with pytest.raises(ValueError):
        await channels.for_account(db, first.account_id, "operator")


async def test_update_in_follows_the_transitions(db: asyncpg.Pool) -> None:
    channel = await open_channel(db)
    async with db.acquire() as conn, conn.transaction():
        settled = await channels.update_in(conn, channel, state="settled", paid=DEPOSIT, refunded=0)
        assert (settled.state, settled.paid, settled.refunded) == ("settled", DEPOSIT, 0)
        with pytest.raises(ChannelStateError) as raised:
            await channels.update_in(conn, settled, state="open")
        assert (raised.value.state, raised.value.new_state) == ("settled", "open")
        with pytest.raises(ChannelStateError):
            await channels.update_in(conn, settled, deposit=1)  # a settled channel changes no more
    with pytest.raises(ValueError):
        async with db.acquire() as conn:
            await channels.update_in(conn, channel, sender=OPERATOR)


async def test_open_in_is_idempotent(db: asyncpg.Pool) -> None:
    channel = await open_channel(db)
    async with db.acquire() as conn:
        again = await channels.open_in(
            conn,
            channel_id=CHANNEL_ID,
            contract=CONTRACT,
            sender=SENDER.address,
            receiver=OPERATOR,
            role="requester",
            account_id=channel.account_id or 0,
            deposit=1,
            opened_block=8,
        )
    assert again is False
    assert await channels.get(db, CHANNEL_ID) == channel
