"""Paying providers over the hub's channels: balance proofs the operator signs for their earnings.

The operator opens a payout channel to a provider on-chain (the chain watcher records it with the
role ``provider``) and, as the provider earns, signs balance proofs raising what the channel owes
it. A proof is a promise the provider can cash on-chain at any time by closing the channel; the
ledger books the payout when the chain settles it (``billing.chain``). So the operator never
promises more than the provider has earned and not yet been promised: its available earnings
less the balances of its open payout channels, and never more than a channel's deposit. A
withdrawal of earnings leaves the promised part alone (see :func:`promised`). Both take the
provider's funds lock (:func:`billing.ledger.lock_funds_in`) around their check and their write,
so a promise and a withdrawal never both count the same earnings as free.
"""

from __future__ import annotations

import asyncpg
from eth_account.signers.local import LocalAccount

from billing import channels
from billing.channels import Channel
from billing.ledger import Amount, lock_funds_in, provider_account
from contracts import proofs

_PROMISED = """
SELECT COALESCE(sum(c.proof_balance), 0) FROM channels c JOIN accounts a ON a.id = c.account_id
WHERE a.name = $1 AND c.role = 'provider' AND c.state <> 'settled'
"""

# In one statement, so a settlement (which lowers both) cannot commit between the two reads.
_UNPROMISED = f"""
SELECT (COALESCE((SELECT balance FROM ledger_balances WHERE account = $2), 0) - ({_PROMISED}))::text
"""  # noqa: S608


async def promised(pool: asyncpg.Pool, account_name: str) -> Amount:
    """What the operator's open payout channels to the provider already promise it."""
    total = await pool.fetchval(f"SELECT ({_PROMISED})::text", account_name)
    return Amount(int(total))


async def unpromised_in(conn: asyncpg.Connection, account_name: str) -> int:
    """The provider's earnings balance less what its open payout channels promise (negative when
    they promise more), read on ``conn``; hold the funds lock around it and what it decides."""
    return int(await conn.fetchval(_UNPROMISED, account_name, provider_account(account_name)))


async def promise_earnings(
    pool: asyncpg.Pool, operator: LocalAccount, domain: proofs.ChannelDomain
) -> list[Channel]:
    """Sign, on each provider's open payout channels from ``operator`` (oldest first), balance
    proofs that raise them by what it earned and was not promised yet, up to each deposit.
    Returns the channels whose proof this call raised."""
    rows = await pool.fetch(
        "SELECT c.channel_id, a.name FROM channels c JOIN accounts a ON a.id = c.account_id"
        " WHERE c.role = 'provider' AND c.state = 'open' AND c.sender = $1 AND c.contract = $2"
        " ORDER BY a.name, c.created_at, c.channel_id",
        operator.address,
        domain.verifying_contract,
    )
    by_provider: dict[str, list[str]] = {}
    for row in rows:
        by_provider.setdefault(row["name"], []).append(row["channel_id"])
    raised: list[Channel] = []
    for name, channel_ids in by_provider.items():
        async with pool.acquire() as conn, conn.transaction():
            await lock_funds_in(conn, provider_account(name))
            unpromised = await unpromised_in(conn, name)
            for channel_id in channel_ids:
                if unpromised <= 0:
                    break
                channel = await channels.lock_in(conn, channel_id)
                if channel is None or channel.state != "open":
                    continue
                more = min(unpromised, int(channel.deposit) - int(channel.proof_balance))
                if more <= 0:
                    continue
                cumulative = int(channel.proof_balance) + more
                # Signed here by the channel's sender (the query above selects the operator's
                # channels of this contract), within the deposit and above the stored proof: what
                # channels.record_proof checks holds by construction.
                signature = proofs.sign_balance_proof(domain, channel.id_bytes, cumulative, operator.key)
                raised.append(
                    await channels.update_in(
                        conn, channel, proof_balance=cumulative, proof_signature="0x" + signature.hex()
                    )
                )
                unpromised -= more
    return raised
