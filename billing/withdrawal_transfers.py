"""The chain payer's transfers in PostgreSQL (``withdrawal_transfers``, migration 020): each
transaction signed for a withdrawal, with its raw bytes, stored before it is broadcast.

``billing.withdrawal_sender`` signs, broadcasts and follows them; the operator's listing
(``ipsx chain withdrawals``) reads them with :func:`transfers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from eth_account.datastructures import SignedTransaction
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes

from billing.withdrawals import Withdrawal


@dataclass(frozen=True, slots=True)
class Transfer:
    """One signed transaction for one withdrawal (see migration 020 for its states)."""

    id: int
    withdrawal_id: int
    chain_id: int
    token: str
    sender: str
    recipient: str
    amount: int
    nonce: int
    tx_hash: str
    raw_tx: bytes = field(repr=False)
    state: str  # signed | confirmed | reverted | mismatch | dropped
    broadcasts: int
    last_error: str | None
    block_number: int | None


_TRANSFER = """id, withdrawal_id, chain_id, token, sender, recipient, amount::text, nonce, tx_hash,
               raw_tx, state, broadcasts, last_error, block_number"""


def _transfer(row: asyncpg.Record) -> Transfer:
    return Transfer(
        int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5], int(row[6]), int(row[7]), row[8],
        bytes(row[9]), row[10], int(row[11]), row[12], None if row[13] is None else int(row[13]),
    )  # fmt: skip


async def transfers(pool: asyncpg.Pool, withdrawal_id: int) -> list[Transfer]:
    """Every transfer signed for the withdrawal, oldest first."""
    rows = await pool.fetch(
        f"SELECT {_TRANSFER} FROM withdrawal_transfers WHERE withdrawal_id = $1 ORDER BY id",  # noqa: S608
        withdrawal_id,
    )
    return [_transfer(row) for row in rows]


async def unresolved(pool: asyncpg.Pool, chain_id: int, sender: str) -> list[Transfer]:
    rows = await pool.fetch(
        f"SELECT {_TRANSFER} FROM withdrawal_transfers"  # noqa: S608
        " WHERE state = 'signed' AND chain_id = $1 AND sender = $2 ORDER BY nonce",
        chain_id,
        sender,
    )
    return [_transfer(row) for row in rows]


async def next_stored_nonce_in(conn: asyncpg.Connection, chain_id: int, sender: str) -> int:
    value = await conn.fetchval(
        "SELECT COALESCE(MAX(nonce) + 1, 0) FROM withdrawal_transfers WHERE chain_id = $1 AND sender = $2",
        chain_id,
        sender,
    )
    return int(value)


async def store_in(
    conn: asyncpg.Connection,
    withdrawal: Withdrawal,
    chain_id: int,
    token: str,
    sender: str,
    nonce: int,
    signed: SignedTransaction,
) -> Transfer:
    """Store a signed transfer of ``withdrawal``, before anything is broadcast."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO withdrawal_transfers
            (withdrawal_id, chain_id, token, sender, recipient, amount, nonce, tx_hash, raw_tx)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_TRANSFER}
        """,  # noqa: S608
        withdrawal.id, chain_id, token, sender, to_checksum_address(withdrawal.address),
        int(withdrawal.amount), nonce, HexBytes(signed.hash).to_0x_hex(), bytes(signed.raw_transaction),
    )  # fmt: skip
    return _transfer(row)


async def note_broadcast(pool: asyncpg.Pool, transfer: Transfer, error: str | None) -> None:
    await pool.execute(
        "UPDATE withdrawal_transfers SET broadcasts = broadcasts + $2, last_error = $3 WHERE id = $1",
        transfer.id,
        0 if error else 1,
        error,
    )


async def resolve_in(conn: asyncpg.Connection, transfer: Transfer, state: str, block: int | None) -> bool:
    """Mark the transfer ``state``; ``False`` when another sender resolved it already."""
    done = await conn.fetchval(
        "UPDATE withdrawal_transfers SET state = $2, block_number = $3, resolved_at = now()"
        " WHERE id = $1 AND state = 'signed' RETURNING 1",
        transfer.id,
        state,
        block,
    )
    return done is not None
