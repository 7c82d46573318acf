"""Paying providers over the hub's channels: balance proofs the operator signs for their earnings.

The operator opens a payout channel to a provider on-chain (the chain watcher records it with the
role ``provider``) and, as the provider earns, signs balance proofs raising what the channel owes
it. A proof is a promise the provider can cash on-chain at any time by closing the channel; the
ledger books the payout when the chain settles it (``billing.chain``). So the operator never
promises more than the provider has earned and not yet been promised: its available earnings
less the balances of its open payout channels, and never more than a channel's deposit. A
withdrawal of earnings leaves the promised part alone (see :func:`promised`).
"""

from __future__ import annotations

import asyncpg
from eth_account.signers.local import LocalAccount

from billing import channels
from billing.channels import Channel
from billing.ledger import Amount, balance, provider_account
from contracts import proofs


async def promised(pool: asyncpg.Pool, account_name: str) -> Amount:
    """What the operator's open payout channels to the provider already promise it."""
    total = await pool.fetchval(
        "SELECT COALESCE(sum(c.proof_balance), 0)::text"
        " FROM channels c JOIN accounts a ON a.id = c.account_id"
        " WHERE a.name = $1 AND c.role = 'provider' AND c.state <> 'settled'",
        account_name,
    )
    return Amount(int(total))


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
        unpromised = int(await balance(pool, provider_account(name))) - int(await promised(pool, name))
        for channel_id in channel_ids:
            if unpromised <= 0:
                break
            channel = await channels.get(pool, channel_id)
            if channel is None or channel.state != "open":
                continue
            more = min(unpromised, int(channel.deposit) - int(channel.proof_balance))
            if more <= 0:
                continue
            cumulative = int(channel.proof_balance) + more
            signature = proofs.sign_balance_proof(domain, channel.id_bytes, cumulative, operator.key)
            raised.append(await channels.record_proof(pool, channel_id, cumulative, signature, domain=domain))
            unpromised -= more
    return raised
