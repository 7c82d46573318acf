"""The payment channels IPSX is party to, as the chain watcher confirmed them, and the latest
balance proof held for each.

A *requester* channel runs from a requester's wallet to the operator; a *provider* (payout)
channel runs from the operator to a provider. Rows are written by ``billing.chain`` only once a
log is confirmed, so this table never shows a channel the chain may still take back. The proof
columns hold the highest balance proof the channel's sender signed: the payments code records
them with :func:`record_proof`, and the watcher submits the one of a requester channel when the
requester starts an uncooperative close with a lower balance.

A channel's state moves along :data:`TRANSITIONS`; :func:`update_in` is the one place that
changes it.

A requester channel the operator consented to close at a balance B is *frozen*
(``consented_balance``, set by ``billing.payments.consent``): until the consent expires
(``consent_expires_at``, the last block timestamp the contract takes it in) the requester may close at
B at any time. Its state stays what the chain says (``open``), but no proof above B is accepted on it
and it is no *usable* channel (:data:`USABLE`): nothing is invoiced on it, and a requester with no
usable channel is cut off (``billing.payments``). The freeze ends (:data:`FROZEN`) only once the
chain watcher of the channel's contract has applied a block stamped after the expiry: blocks are
stamped in increasing order, so every block that could still take the consent is then applied, and
a close at B would have been seen. Neither the database's clock nor a watcher that lags, stopped
or cut off from its node can end it early. The channel is then usable again, and the first proof
above B clears the spent consent. A consent without an expiry (given before the contract signed
one) freezes the channel for good.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from eth_utils.address import to_checksum_address

from billing.errors import BillingError
from billing.ledger import Amount
from contracts import proofs

ROLES: Final = ("requester", "provider")
STATES: Final = ("open", "closing", "settled")
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "open": frozenset({"open", "closing", "settled"}),  # top-up, uncooperative close, cooperative close
    "closing": frozenset({"closing", "settled"}),  # a newer proof raised the closing balance; settle
    "settled": frozenset(),  # the contract deleted it; its id never comes back
}
"""The states a channel may go to from each state (a same-state entry updates its columns)."""

_NOW: Final = "extract(epoch FROM now())"
CHAIN_PASSED_EXPIRY: Final = (
    "EXISTS (SELECT 1 FROM chain_cursors k WHERE k.name = 'channels:' || c.contract"
    " AND k.block_time > c.consent_expires_at)"
)
"""SQL (on ``channels c``): the contract's watcher has applied a block stamped after the consent's
expiry (``billing.chain`` keeps its cursor's block time)."""
CONSENT_IN_FORCE: Final = (
    "c.consented_balance IS NOT NULL AND (c.consent_expires_at IS NULL"
    f" OR (c.consent_expires_at >= {_NOW} AND NOT {CHAIN_PASSED_EXPIRY}))"
)
"""SQL (on ``channels c``): the operator's consent to close the channel has not expired, by the
database's clock nor by the chain's (a chain whose clock runs ahead refuses it before the
database's clock reaches the expiry): what the API shows, and what asking again returns."""
FROZEN: Final = (
    f"c.consented_balance IS NOT NULL AND (c.consent_expires_at IS NULL OR NOT {CHAIN_PASSED_EXPIRY})"
)
"""SQL (on ``channels c``): a consent was given and may still close the channel (see the module
docstring): nothing is billed on it."""
USABLE: Final = f"c.role = 'requester' AND c.state = 'open' AND NOT ({FROZEN})"
"""SQL (on ``channels c``): a requester channel that may carry new usage: open, not frozen."""

_CHANNEL_ID = re.compile(r"0x[0-9a-f]{64}", re.ASCII)
_SIGNATURE = re.compile(r"(?:0x)?[0-9a-fA-F]{130}", re.ASCII)
_UINT256_MAX: Final = 2**256 - 1


class ProofRejected(BillingError, ValueError):
    """A balance proof was refused; ``reason`` is one of ``unknown_channel``, ``not_open``,
    ``bad_signature``, ``wrong_signer``, ``above_deposit``, ``stale``, ``consented`` (above the
    balance the operator consented to close the channel at). Nothing was stored."""

    def __init__(self, reason: str, channel_id: str) -> None:
        super().__init__(f"balance proof for channel {channel_id} rejected: {reason}")
        self.reason = reason
        self.channel_id = channel_id


class ChannelStateError(BillingError):
    """A change from ``state`` to ``new_state`` that :data:`TRANSITIONS` does not allow: the chain
    and the table disagree, which is our bug or a reorg, never a peer's mistake."""

    def __init__(self, channel_id: str, state: str, new_state: str) -> None:
        super().__init__(f"channel {channel_id} cannot go from {state} to {new_state}")
        self.channel_id = channel_id
        self.state = state
        self.new_state = new_state


@dataclass(frozen=True, slots=True)
class Channel:
    channel_id: str  # 0x and 64 lower-case hex digits
    contract: str  # the PaymentChannels address, checksummed
    sender: str
    receiver: str
    role: str  # requester | provider
    account_id: int | None  # the requester or provider the channel serves
    account_name: str | None
    deposit: Amount
    state: str  # open | closing | settled
    closing_balance: Amount | None
    settle_after: int | None  # unix seconds (chain time): the challenge period's end
    proof_balance: Amount  # the highest balance proof held; 0 with none
    proof_signature: str | None  # its 65-byte signature as 0x-hex
    consented_balance: Amount | None  # the balance the operator last consented to close at; None: none
    consent_expires_at: int | None  # that consent's expiry (unix seconds); None: it never expires
    consent_in_force: bool  # the consent had not expired when read, by either clock (CONSENT_IN_FORCE)
    frozen: bool  # the consent may still close the channel: no usage billed on it, no proof above
    paid: Amount | None  # at settlement, to the receiver
    refunded: Amount | None  # at settlement, back to the sender
    opened_block: int
    created_at: datetime
    updated_at: datetime

    @property
    def id_bytes(self) -> bytes:
        """The channel id as the contract takes it (``bytes32``)."""
        return bytes.fromhex(self.channel_id[2:])


_SELECT = f"""
SELECT c.channel_id, c.contract, c.sender, c.receiver, c.role, c.account_id, a.name AS account_name,
       c.deposit::text AS deposit, c.state, c.closing_balance::text AS closing_balance, c.settle_after,
       c.proof_balance::text AS proof_balance, c.proof_signature,
       c.consented_balance::text AS consented_balance, c.consent_expires_at,
       ({CONSENT_IN_FORCE}) AS consent_in_force, ({FROZEN}) AS frozen, c.paid::text AS paid,
       c.refunded::text AS refunded, c.opened_block, c.created_at, c.updated_at
FROM channels c LEFT JOIN accounts a ON a.id = c.account_id
"""  # noqa: S608


def _amount(text: str | None) -> Amount | None:
    return None if text is None else Amount(int(text))


def _channel(row: asyncpg.Record) -> Channel:
    return Channel(
        channel_id=row["channel_id"],
        contract=row["contract"],
        sender=row["sender"],
        receiver=row["receiver"],
        role=row["role"],
        account_id=row["account_id"],
        account_name=row["account_name"],
        deposit=Amount(int(row["deposit"])),
        state=row["state"],
        closing_balance=_amount(row["closing_balance"]),
        settle_after=row["settle_after"],
        proof_balance=Amount(int(row["proof_balance"])),
        proof_signature=row["proof_signature"],
        consented_balance=_amount(row["consented_balance"]),
        consent_expires_at=row["consent_expires_at"],
        consent_in_force=row["consent_in_force"],
        frozen=row["frozen"],
        paid=_amount(row["paid"]),
        refunded=_amount(row["refunded"]),
        opened_block=row["opened_block"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def channel_key(channel_id: str | bytes) -> str:
    """The table's form of a channel id (0x and 64 lower-case hex digits); raises ``ValueError``."""
    text = "0x" + channel_id.hex() if isinstance(channel_id, bytes) else str(channel_id).lower()
    if not _CHANNEL_ID.fullmatch(text):
        raise ValueError("a channel id is 32 bytes")
    return text


async def get(pool: asyncpg.Pool, channel_id: str | bytes) -> Channel | None:
    """The channel, or ``None`` when unknown (or the id is malformed)."""
    try:
        key = channel_key(channel_id)
    except ValueError:
        return None
    row = await pool.fetchrow(_SELECT + " WHERE c.channel_id = $1", key)
    return None if row is None else _channel(row)


async def for_account(pool: asyncpg.Pool, account_id: int, role: str) -> list[Channel]:
    """The account's open channels in ``role`` (``requester`` or ``provider``), oldest first."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    rows = await pool.fetch(
        _SELECT + " WHERE c.account_id = $1 AND c.role = $2 AND c.state = 'open'"
        " ORDER BY c.opened_block, c.channel_id",
        account_id,
        role,
    )
    return [_channel(row) for row in rows]


async def listing(pool: asyncpg.Pool, *, contract: str | None = None) -> list[Channel]:
    """Every channel (of one contract, or all), in the order they were opened."""
    rows = await pool.fetch(
        _SELECT + " WHERE ($1::text IS NULL OR c.contract = $1) ORDER BY c.opened_block, c.channel_id",
        None if contract is None else to_checksum_address(contract),
    )
    return [_channel(row) for row in rows]


async def stale_closes(pool: asyncpg.Pool, *, now: int) -> list[Channel]:
    """Requester channels whose requester is closing them below the proof IPSX holds while the
    challenge period still runs at chain time ``now``: the ones to counter."""
    rows = await pool.fetch(
        _SELECT + " WHERE c.role = 'requester' AND c.state = 'closing' AND c.proof_signature IS NOT NULL"
        " AND c.closing_balance < c.proof_balance AND c.settle_after > $1 ORDER BY c.settle_after",
        now,
    )
    return [_channel(row) for row in rows]


def _signature_bytes(signature: bytes | str) -> bytes | None:
    if isinstance(signature, bytes):
        return signature
    if isinstance(signature, str) and _SIGNATURE.fullmatch(signature):
        return bytes.fromhex(signature.removeprefix("0x"))
    return None


async def record_proof(
    pool: asyncpg.Pool,
    channel_id: str | bytes,
    balance: int,
    signature: bytes | str,
    *,
    domain: proofs.ChannelDomain,
) -> Channel:
    """Store ``signature``, the channel sender's balance proof of ``balance`` (cumulative base
    units), as the channel's latest; returns the channel as stored.

    A proof equal to the stored balance is accepted and changes nothing. Raises ``ProofRejected``
    (see its reasons), ``ValueError`` for a ``balance`` that is no uint256 or a ``domain`` of
    another contract than the channel's (the caller's bug, not the signer's).
    """
    if not isinstance(balance, int) or isinstance(balance, bool) or not 0 <= balance <= _UINT256_MAX:
        raise ValueError("a balance is a uint256 of base units")
    try:
        key = channel_key(channel_id)
    except ValueError:
        raise ProofRejected("unknown_channel", str(channel_id)) from None
    channel = await get(pool, key)
    if channel is None:
        raise ProofRejected("unknown_channel", key)
    if channel.contract != domain.verifying_contract:
        raise ValueError(f"the domain is of {domain.verifying_contract}, the channel of {channel.contract}")
    if channel.state != "open":
        raise ProofRejected("not_open", key)
    raw = _signature_bytes(signature)
    if raw is None:
        raise ProofRejected("bad_signature", key)
    try:
        signer = proofs.recover_balance_proof_signer(domain, channel.id_bytes, balance, raw)
    except proofs.InvalidSignatureError:
        raise ProofRejected("bad_signature", key) from None
    if signer != channel.sender:
        raise ProofRejected("wrong_signer", key)
    async with pool.acquire() as conn, conn.transaction():
        # Checked again under the row lock: a concurrent proof, top-up or close may have landed.
        locked = await lock_in(conn, key)
        if locked is None:
            raise ProofRejected("unknown_channel", key)
        if locked.state != "open":
            raise ProofRejected("not_open", key)
        if balance > locked.deposit:
            raise ProofRejected("above_deposit", key)
        if locked.frozen and locked.consented_balance is not None and balance > locked.consented_balance:
            raise ProofRejected("consented", key)
        if balance < locked.proof_balance:
            raise ProofRejected("stale", key)
        if balance == locked.proof_balance:
            return locked
        # Past the freeze the consent can close nothing any more: a higher proof clears it.
        spent: dict[str, None] = (
            {} if locked.frozen else {"consented_balance": None, "consent_expires_at": None}
        )
        return await update_in(conn, locked, proof_balance=balance, proof_signature="0x" + raw.hex(), **spent)


# ---- the watcher's writes, inside its transactions ------------------------------------------


async def open_in(
    conn: asyncpg.Connection,
    *,
    channel_id: str,
    contract: str,
    sender: str,
    receiver: str,
    role: str,
    account_id: int,
    deposit: int,
    opened_block: int,
) -> bool:
    """Record a channel the chain opened; ``False`` when it was recorded already."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    created = await conn.fetchval(
        "INSERT INTO channels (channel_id, contract, sender, receiver, role, account_id, deposit,"
        " opened_block) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (channel_id) DO NOTHING RETURNING 1",
        channel_key(channel_id),
        to_checksum_address(contract),
        to_checksum_address(sender),
        to_checksum_address(receiver),
        role,
        account_id,
        deposit,
        opened_block,
    )
    return created is not None


async def lock_in(conn: asyncpg.Connection, channel_id: str | bytes) -> Channel | None:
    """The channel, row-locked until the caller's transaction ends; ``None`` when unknown."""
    row = await conn.fetchrow(_SELECT + " WHERE c.channel_id = $1 FOR UPDATE OF c", channel_key(channel_id))
    return None if row is None else _channel(row)


_UPDATABLE: Final = frozenset(
    {
        "deposit",
        "closing_balance",
        "settle_after",
        "proof_balance",
        "proof_signature",
        "consented_balance",
        "consent_expires_at",
        "paid",
        "refunded",
    }
)


async def update_in(
    conn: asyncpg.Connection, channel: Channel, *, state: str | None = None, **values: Any
) -> Channel:
    """Move ``channel`` to ``state`` (default: its own) and set the columns in ``values``; returns
    the updated channel. Raises ``ChannelStateError`` for a move :data:`TRANSITIONS` forbids."""
    new_state = channel.state if state is None else state
    if new_state not in TRANSITIONS[channel.state]:
        raise ChannelStateError(channel.channel_id, channel.state, new_state)
    unknown = set(values) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
    columns = sorted(values)
    assignments = "".join(f", {column} = ${i}" for i, column in enumerate(columns, start=3))
    await conn.execute(
        f"UPDATE channels SET state = $2, updated_at = now(){assignments} WHERE channel_id = $1",  # noqa: S608
        channel.channel_id,
        new_state,
        *(values[column] for column in columns),
    )
    row = await conn.fetchrow(_SELECT + " WHERE c.channel_id = $1", channel.channel_id)
    return _channel(row)
