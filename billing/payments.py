"""Paying for usage over payment channels: invoices, the balance proofs that pay them, and who is
cut off for unpaid usage.

A requester that opened a channel to the operator (the hub) pays for its settled deals with
balance proofs: each invoice bills the settled deals not billed before and names the cumulative
balance its proof must state (the previous invoice's plus its amount, never past the deposit).
The requester's payment agent checks an invoice against its own budget and signs that balance;
:func:`pay` verifies the proof (``billing.channels.record_proof``: signature, signer, deposit,
staleness) and marks the invoice, and every earlier one of the channel, paid.

A requester's *unpaid* amount is what its settled usage costs beyond the proofs it signed: open
invoices, and settled deals not invoiced yet. Above a limit the gateways refuse its new
connections with 402 until it pays. A requester without a channel (funded by an operator credit)
has prepaid and is never cut off here.

Invoices go on a requester's oldest *usable* channel (open, not frozen by a closing consent:
``channels.USABLE``) that still has room below its deposit. Once the operator consents to close a
channel at a balance (:func:`consent`), the requester may close it at that balance until the
consent expires, so the channel is frozen until the chain watcher has seen a block past the
expiry (``channels.FROZEN``): nothing more is billed on it, and a requester whose channels are all
frozen or closing is cut off like one over the limit, until it opens another channel or the
consent expires unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field

import asyncpg
from eth_account.signers.local import LocalAccount
from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing import channels, db, payouts
from billing.channels import Channel
from billing.errors import BillingError
from billing.keys import PAYMENT_CUTOFF
from billing.ledger import Amount
from contracts import proofs
from matching.deals import TERMINAL

log = logging.getLogger("ipsx.billing.payments")


class UnknownInvoice(BillingError, LookupError):
    def __init__(self, invoice_id: int) -> None:
        super().__init__(f"no invoice {invoice_id}")
        self.invoice_id = invoice_id


class ConsentRefused(BillingError):
    """The operator's closing consent is not given; ``reason`` is ``not_open`` (``state`` says what
    the channel is), ``unpaid_usage`` (``owed`` base units are unpaid) or ``deals_running`` (the
    requester has ``running`` deals not settled and no other usable channel to bill them on)."""

    def __init__(self, reason: str, channel_id: str, *, state: str = "open", owed: int = 0, running: int = 0):
        super().__init__(f"no closing consent for channel {channel_id}: {reason}")
        self.reason = reason
        self.channel_id = channel_id
        self.state = state
        self.owed = owed
        self.running = running


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: int
    channel_id: str
    account: str  # the requester's account name
    amount: Amount
    cumulative: Amount  # the balance the proof that pays it states
    deal_ids: tuple[str, ...]
    state: str  # open | paid
    created_at: dt.datetime
    paid_at: dt.datetime | None


_SELECT = """
SELECT i.invoice_id, i.channel_id, a.name, i.amount::text, i.cumulative::text,
       COALESCE((SELECT array_agg(d.deal_id ORDER BY d.deal_id) FROM invoiced_deals d
                 WHERE d.invoice_id = i.invoice_id), '{}') AS deal_ids,
       i.state, i.created_at, i.paid_at
FROM invoices i JOIN accounts a ON a.id = i.account_id
"""


def _invoice(row: asyncpg.Record) -> Invoice:
    return Invoice(
        int(row[0]), row[1], row[2], Amount(int(row[3])), Amount(int(row[4])), tuple(row[5]), row[6],
        row[7], row[8],
    )  # fmt: skip


# Settled deals with a charge that no invoice billed yet, oldest first.
_UNBILLED = """
SELECT d.deal_id, d.charge::text AS charge FROM deals d
WHERE d.requester = $1 AND d.state = 'settled' AND d.charge > 0
  AND NOT EXISTS (SELECT 1 FROM invoiced_deals b WHERE b.deal_id = d.deal_id)
ORDER BY d.updated_at, d.deal_id
"""


_USABLE_CHANNELS = f"""
SELECT c.account_id, c.channel_id, a.name FROM channels c JOIN accounts a ON a.id = c.account_id
WHERE {channels.USABLE} ORDER BY c.account_id, c.opened_block, c.created_at, c.channel_id
"""  # noqa: S608


async def invoice_due(pool: asyncpg.Pool) -> list[Invoice]:
    """Bill every channel-funded requester's settled deals not billed yet: one invoice per
    requester with such deals, on its oldest usable channel with room for the oldest of them,
    up to that channel's deposit (deals beyond it wait for a top-up or another channel). Returns
    the invoices made."""
    made: list[Invoice] = []
    rows = await pool.fetch(_USABLE_CHANNELS)
    by_account: dict[int, list[asyncpg.Record]] = {}
    for row in rows:
        by_account.setdefault(row["account_id"], []).append(row)
    for candidates in by_account.values():
        for row in candidates:  # a channel whose deposit is used up bills nothing: try the next
            invoice = await _invoice_channel(pool, row["channel_id"], row["name"])
            if invoice is not None:
                made.append(invoice)
                break
    return made


async def _invoice_channel(pool: asyncpg.Pool, channel_id: str, account: str) -> Invoice | None:
    async with pool.acquire() as conn, conn.transaction():
        channel = await channels.lock_in(conn, channel_id)  # one invoicer per channel at a time
        if channel is None or channel.state != "open" or channel.frozen or channel.account_id is None:
            return None
        billed = await conn.fetchval(
            "SELECT max(cumulative)::text FROM invoices WHERE channel_id = $1", channel.channel_id
        )
        base = max(int(billed or 0), int(channel.proof_balance))
        deals: list[tuple[str, int]] = []
        total = 0
        for deal in await conn.fetch(_UNBILLED, account):
            charge = int(deal["charge"])
            if base + total + charge > channel.deposit:
                break
            deals.append((deal["deal_id"], charge))
            total += charge
        if not deals:
            return None
        invoice_id = await conn.fetchval(
            "INSERT INTO invoices (channel_id, account_id, amount, cumulative) VALUES ($1, $2, $3, $4)"
            " RETURNING invoice_id",
            channel.channel_id,
            channel.account_id,
            total,
            base + total,
        )
        await conn.executemany(
            "INSERT INTO invoiced_deals (deal_id, invoice_id, charge) VALUES ($1, $2, $3)",
            [(deal_id, invoice_id, charge) for deal_id, charge in deals],
        )
        row = await conn.fetchrow(_SELECT + " WHERE i.invoice_id = $1", invoice_id)
    return _invoice(row)


async def pay(
    pool: asyncpg.Pool, invoice_id: int, signature: str, *, account: str, domain: proofs.ChannelDomain
) -> Invoice:
    """Pay one of ``account``'s invoices with its balance proof for the invoice's cumulative
    amount; that invoice and every earlier one of its channel are then paid. Paying a paid
    invoice again changes nothing. Raises ``UnknownInvoice`` (also for another account's) and
    ``channels.ProofRejected`` with the proof's fault."""
    row = await pool.fetchrow(_SELECT + " WHERE i.invoice_id = $1", invoice_id)
    if row is None or row[2] != account:
        raise UnknownInvoice(invoice_id)
    invoice = _invoice(row)
    if invoice.state == "paid":
        return invoice
    channel = await channels.record_proof(
        pool, invoice.channel_id, invoice.cumulative, signature, domain=domain
    )
    await pool.execute(
        "UPDATE invoices SET state = 'paid', paid_at = now()"
        " WHERE channel_id = $1 AND cumulative <= $2 AND state = 'open'",
        channel.channel_id,
        int(channel.proof_balance),
    )
    return _invoice(await pool.fetchrow(_SELECT + " WHERE i.invoice_id = $1", invoice_id))


async def listing(
    pool: asyncpg.Pool, *, account: str, state: str | None = None, before: int | None = None, limit: int = 100
) -> list[Invoice]:
    """The account's invoices, newest first."""
    rows = await pool.fetch(
        _SELECT + " WHERE a.name = $1 AND ($2::text IS NULL OR i.state = $2)"
        " AND ($3::bigint IS NULL OR i.invoice_id < $3) ORDER BY i.invoice_id DESC LIMIT $4",
        account,
        state,
        before,
        limit,
    )
    return [_invoice(row) for row in rows]


# What the account ``p`` (id, name) owes: open invoices plus settled deals not billed yet.
_OWED = """
COALESCE((SELECT sum(amount) FROM invoices i WHERE i.account_id = p.id AND i.state = 'open'), 0)
+ COALESCE((SELECT sum(d.charge) FROM deals d
            WHERE d.requester = p.name AND d.state = 'settled' AND d.charge > 0
              AND NOT EXISTS (SELECT 1 FROM invoiced_deals b WHERE b.deal_id = d.deal_id)), 0)
"""

# Every channel-funded requester (a requester channel not settled), whether it has a usable one.
_PAYERS = f"""
WITH payers AS (
    SELECT a.id, a.name, bool_or({channels.USABLE}) AS usable
    FROM channels c JOIN accounts a ON a.id = c.account_id
    WHERE c.role = 'requester' AND c.state <> 'settled' GROUP BY a.id, a.name
)
SELECT p.name, p.usable, ({_OWED})::text AS owed FROM payers p
"""  # noqa: S608


async def unpaid(pool: asyncpg.Pool) -> dict[str, int]:
    """Every channel-funded requester's unpaid amount (open invoices plus settled deals not
    billed yet), by account name; requesters that owe nothing are left out."""
    rows = await pool.fetch(_PAYERS)
    return {row["name"]: int(row["owed"]) for row in rows if int(row["owed"]) > 0}


async def without_channel(pool: asyncpg.Pool) -> dict[str, int]:
    """Channel-funded requesters with no usable channel left (every one frozen by a closing
    consent, closing or settled), with what they owe (maybe 0): new usage could be billed on no
    channel, so they are served no more until they open another."""
    rows = await pool.fetch(_PAYERS)
    return {row["name"]: int(row["owed"]) for row in rows if not row["usable"]}


async def consent(pool: asyncpg.Pool, channel: Channel, *, ttl: int) -> Channel:
    """Freeze the requester ``channel`` at its latest proof's balance, the balance the operator then
    consents to close it at until ``consent_expires_at``, ``ttl`` seconds from now by the
    database's clock or by the last block the contract's watcher applied, whichever is later (a
    chain whose clock runs ahead still leaves the requester ``ttl``); returns the channel, frozen.
    A consent that has not expired is returned as it is (same balance, same expiry), so a consent
    asked for again is the same consent; once it has expired, by the database's clock or by the
    chain's (``channels.CONSENT_IN_FORCE``), asking again is asking anew.

    Given only when nothing is owed and, unless another usable channel can bill them, no deal of
    the requester is still running: from here on nothing is billed on the channel. Raises
    ``ConsentRefused``; ``ValueError`` for a channel that is no requester's or a ``ttl`` below 1.
    """
    if channel.role != "requester" or channel.account_id is None or channel.account_name is None:
        raise ValueError(f"channel {channel.channel_id} is no requester's")
    if ttl < 1:
        raise ValueError("a consent lasts at least one second")
    async with pool.acquire() as conn, conn.transaction():
        # One consent of a requester at a time: two at once would each count the other's channel
        # as still usable, and leave a running deal no channel to be billed on.
        await db.advisory_lock_in(conn, f"ipsx.billing.consent:{channel.account_id}")
        # Under the row lock the invoicer takes too: no invoice lands on it between check and freeze.
        locked = await channels.lock_in(conn, channel.channel_id)
        if locked is None or locked.state != "open":
            state = "settled" if locked is None else locked.state
            raise ConsentRefused("not_open", channel.channel_id, state=state)
        if locked.consent_in_force:
            return locked
        owed = int(
            await conn.fetchval(
                f"SELECT ({_OWED})::text FROM accounts p WHERE p.id = $1",  # noqa: S608
                locked.account_id,
            )
            or 0
        )
        if owed > 0:
            raise ConsentRefused("unpaid_usage", locked.channel_id, owed=owed)
        others = await conn.fetchval(
            f"SELECT count(*) FROM channels c WHERE c.account_id = $1 AND {channels.USABLE}"  # noqa: S608
            " AND c.channel_id <> $2",
            locked.account_id,
            locked.channel_id,
        )
        running = await conn.fetchval(
            "SELECT count(*) FROM deals WHERE requester = $1 AND NOT (state = ANY($2::text[]))",
            locked.account_name,
            sorted(str(state.value) for state in TERMINAL),
        )
        if running and not others:
            raise ConsentRefused("deals_running", locked.channel_id, running=int(running))
        now = int(
            await conn.fetchval(
                "SELECT greatest(floor(extract(epoch FROM now()))::bigint,"
                " (SELECT block_time FROM chain_cursors WHERE name = 'channels:' || $1))",
                locked.contract,
            )
        )
        return await channels.update_in(
            conn, locked, consented_balance=int(locked.proof_balance), consent_expires_at=now + ttl
        )


# -- the invoicer: bills, and tells the gateways who is cut off ------------------------------


@dataclass(frozen=True, slots=True)
class PaymentSettings:
    unpaid_limit: int = 10**18  # base units of settled usage a requester may owe before 402
    interval: float = 2.0  # seconds between two invoicing passes
    # how long the operator's consent to close a requester channel lasts (whole seconds): the
    # requester has that long to submit it, and the channel is frozen until the chain is past it
    # (see consent)
    consent_ttl: int = 60 * 60
    # The hub's side: the operator's wallet and the channels' domain, to promise providers their
    # earnings over its payout channels (billing.payouts); None: no payouts signed here.
    operator: LocalAccount | None = field(default=None, repr=False)
    domain: proofs.ChannelDomain | None = None


class Invoicer:
    """Bills settled deals and keeps the gateways' cut-off list current, every ``interval``."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis, settings: PaymentSettings) -> None:
        self._pool = pool
        self._redis = redis
        self.settings = settings

    async def pass_once(self) -> dict[str, int]:
        """Invoice what is due, promise providers their earnings (with an operator wallet), then
        publish who is cut off: who owes more than the limit, and who has no usable channel left
        (:func:`without_channel`); returns them with what they owe."""
        await invoice_due(self._pool)
        if self.settings.operator is not None and self.settings.domain is not None:
            await payouts.promise_earnings(self._pool, self.settings.operator, self.settings.domain)
        owing = await unpaid(self._pool)
        over = {name: owed for name, owed in owing.items() if owed > self.settings.unpaid_limit}
        over.update(await without_channel(self._pool))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(PAYMENT_CUTOFF)
            if over:
                pipe.hset(PAYMENT_CUTOFF, mapping={name: str(owed) for name, owed in over.items()})
            await pipe.execute()
        return over

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.pass_once()
            except (asyncpg.PostgresError, OSError, RedisError):
                log.warning("invoicing pass failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.interval)
