"""The chain payer's transfers in PostgreSQL (``withdrawal_transfers``, migration 020, and their
signed versions, ``withdrawal_transfer_versions``, migration 021): each nonce the sender gives a
withdrawal, and every transaction signed with it (the first, then each fee replacement), with its
raw bytes, stored before it is broadcast.

``billing.withdrawal_sender`` signs, broadcasts and follows them; the operator's listing
(``ipsx chain withdrawals``) reads them with :func:`transfers`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
from eth_account.datastructures import SignedTransaction
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes

from billing.transfer_fees import Fees, signed_fees
from billing.withdrawals import Withdrawal


@dataclass(frozen=True, slots=True)
class Version:
    """One signed transaction of a transfer: version 0 first, each fee replacement the next."""

    id: int
    transfer_id: int
    version: int
    tx_hash: str
    raw_tx: bytes = field(repr=False)
    fees: Fees
    signed_block: int | None  # the head when it was signed (None: stored before migration 021)
    broadcasts: int  # times a node accepted it
    last_error: str | None  # what a node said when it last refused it
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Transfer:
    """The transfer a withdrawal was given with one nonce (see migrations 020 and 021 for its
    states), and every version signed for it, oldest first (never empty)."""

    id: int
    withdrawal_id: int
    chain_id: int
    token: str
    sender: str
    recipient: str
    amount: int
    nonce: int
    state: str  # signed | confirmed | reverted | mismatch | dropped
    block_number: int | None  # where the mined version is (confirmed, reverted, mismatch)
    mined_hash: str | None  # which version was mined (confirmed, reverted, mismatch)
    versions: tuple[Version, ...]

    @property
    def latest(self) -> Version:
        """The newest version: the one the sender broadcasts."""
        return self.versions[-1]


_TRANSFER = """id, withdrawal_id, chain_id, token, sender, recipient, amount::text, nonce, state,
               block_number, mined_hash"""
_VERSION = "id, transfer_id, version, tx_hash, raw_tx, signed_block, broadcasts, last_error, created_at"


def _version(row: asyncpg.Record) -> Version:
    raw = bytes(row[4])
    return Version(
        int(row[0]), int(row[1]), int(row[2]), row[3], raw, signed_fees(raw),
        None if row[5] is None else int(row[5]), int(row[6]), row[7], row[8],
    )  # fmt: skip


async def _with_versions(conn: asyncpg.Connection, rows: Iterable[asyncpg.Record]) -> list[Transfer]:
    rows = list(rows)
    found = await conn.fetch(
        f"SELECT {_VERSION} FROM withdrawal_transfer_versions"  # noqa: S608
        " WHERE transfer_id = ANY($1::bigint[]) ORDER BY transfer_id, version",
        [int(row[0]) for row in rows],
    )
    versions: dict[int, list[Version]] = {}
    for version_row in found:
        version = _version(version_row)
        versions.setdefault(version.transfer_id, []).append(version)
    return [_transfer(row, tuple(versions[int(row[0])])) for row in rows]


def _transfer(row: asyncpg.Record, versions: tuple[Version, ...]) -> Transfer:
    return Transfer(
        int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5], int(row[6]), int(row[7]), row[8],
        None if row[9] is None else int(row[9]), row[10], versions,
    )  # fmt: skip


async def transfers(pool: asyncpg.Pool, withdrawal_id: int) -> list[Transfer]:
    """Every transfer signed for the withdrawal, oldest first, each with its versions."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            f"SELECT {_TRANSFER} FROM withdrawal_transfers WHERE withdrawal_id = $1 ORDER BY id",  # noqa: S608
            withdrawal_id,
        )
        return await _with_versions(conn, rows)


async def unresolved(pool: asyncpg.Pool, chain_id: int, sender: str) -> list[Transfer]:
    """The sender's transfers still ``signed``, in nonce order, each with its versions."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            f"SELECT {_TRANSFER} FROM withdrawal_transfers"  # noqa: S608
            " WHERE state = 'signed' AND chain_id = $1 AND sender = $2 ORDER BY nonce",
            chain_id,
            sender,
        )
        return await _with_versions(conn, rows)


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
    block: int,
) -> Transfer:
    """Store a signed transfer of ``withdrawal`` (its version 0, signed at head ``block``), before
    anything is broadcast."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO withdrawal_transfers (withdrawal_id, chain_id, token, sender, recipient, amount, nonce)
        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_TRANSFER}
        """,  # noqa: S608
        withdrawal.id, chain_id, token, sender, to_checksum_address(withdrawal.address),
        int(withdrawal.amount), nonce,
    )  # fmt: skip
    await _insert_version(conn, int(row[0]), 0, signed, block)
    (transfer,) = await _with_versions(conn, [row])
    return transfer


async def store_version_in(
    conn: asyncpg.Connection, transfer: Transfer, signed: SignedTransaction, block: int
) -> Transfer | None:
    """Store a replacement of the transfer's newest version (same nonce, signed at head ``block``),
    before it is broadcast. Returns the transfer with it, or ``None`` when the transfer is resolved
    or has a newer version already (another sender got there first): nothing is stored then."""
    current = await conn.fetchrow(
        f"SELECT {_TRANSFER} FROM withdrawal_transfers WHERE id = $1 FOR UPDATE",  # noqa: S608
        transfer.id,
    )
    newest = await conn.fetchval(
        "SELECT max(version) FROM withdrawal_transfer_versions WHERE transfer_id = $1", transfer.id
    )
    if current is None or current[8] != "signed" or newest != transfer.latest.version:
        return None
    await _insert_version(conn, transfer.id, transfer.latest.version + 1, signed, block)
    (stored,) = await _with_versions(conn, [current])
    return stored


async def _insert_version(
    conn: asyncpg.Connection, transfer_id: int, version: int, signed: SignedTransaction, block: int
) -> None:
    await conn.execute(
        "INSERT INTO withdrawal_transfer_versions (transfer_id, version, tx_hash, raw_tx, signed_block)"
        " VALUES ($1, $2, $3, $4, $5)",
        transfer_id, version, HexBytes(signed.hash).to_0x_hex(), bytes(signed.raw_transaction), block,
    )  # fmt: skip


async def note_broadcast(pool: asyncpg.Pool, version: Version, error: str | None) -> None:
    """Count an accepted broadcast of the version, or record why the node refused it."""
    await pool.execute(
        "UPDATE withdrawal_transfer_versions SET broadcasts = broadcasts + $2, last_error = $3 WHERE id = $1",
        version.id,
        0 if error else 1,
        error,
    )


async def resolve_in(
    conn: asyncpg.Connection, transfer: Transfer, state: str, block: int | None, mined: Version | None
) -> bool:
    """Mark the transfer ``state``, ``mined`` being the version in ``block`` (``None`` for
    ``dropped``); ``False`` when another sender resolved it already."""
    done = await conn.fetchval(
        "UPDATE withdrawal_transfers SET state = $2, block_number = $3, mined_hash = $4, resolved_at = now()"
        " WHERE id = $1 AND state = 'signed' RETURNING 1",
        transfer.id,
        state,
        block,
        None if mined is None else mined.tx_hash,
    )
    return done is not None
