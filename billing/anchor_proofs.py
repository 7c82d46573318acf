"""Deal records and their proofs, read from PostgreSQL.

The records of settled deals as the deals table holds them: those in no batch yet, oldest
settlement first (:func:`next_batch`, what :mod:`billing.anchoring` builds a batch from), and one
deal's as it is now (:func:`current_record`, what the API serves beside the proof). And where a
deal is anchored (:func:`proof_for`, served to the API and so to ``ipsx verify``): its record as
anchored, leaf and proof from ``anchor_records``, and its batch from ``anchor_batches``, once
that batch is recorded ``anchored``, never while it is only pending or mined.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from hexbytes import HexBytes

from billing.deal_record import DealRecord
from contracts.merkle import leaf_hash, verify


@dataclass(frozen=True, slots=True)
class AnchorProof:
    """Where a deal is anchored: its record as anchored, leaf, proof and the batch's root."""

    deal_id: str
    record: bytes
    leaf: bytes
    leaf_index: int
    proof: list[bytes]
    batch_id: int
    root: bytes
    record_count: int
    contract: str
    chain_id: int
    tx_hash: str
    block_number: int

    def verifies(self, record: bytes | None = None) -> bool:
        """Whether ``record`` (default: the one anchored) is proven under the root, off-chain."""
        return verify(self.root, leaf_hash(self.record if record is None else record), self.proof)


_RECORD_COLUMNS = """
    deal_id, requester, provider, exit_id, price_per_gb::text, price_per_hour::text, billable_bytes,
    charge::text, commission::text, (record->>'settled_at')::bigint AS settled_at
"""
_SETTLED = """
    state = 'settled' AND charge IS NOT NULL AND commission IS NOT NULL
    AND billable_bytes IS NOT NULL AND record->>'settled_at' IS NOT NULL
"""


def _record(row: asyncpg.Record) -> DealRecord:
    return DealRecord(
        deal_id=row["deal_id"], requester=row["requester"], provider=row["provider"],
        exit_id=row["exit_id"], price_per_gb=int(row["price_per_gb"]),
        price_per_hour=int(row["price_per_hour"]), billable_bytes=int(row["billable_bytes"]),
        charge=int(row["charge"]), commission=int(row["commission"]), settled_at=int(row["settled_at"]),
    )  # fmt: skip


async def next_batch(pool: asyncpg.Pool | asyncpg.Connection, limit: int) -> list[DealRecord]:
    """Up to ``limit`` settled deals in no batch yet, oldest settlement first."""
    rows = await pool.fetch(
        f"SELECT {_RECORD_COLUMNS} FROM deals d WHERE {_SETTLED}"  # noqa: S608 (constants only)
        " AND NOT EXISTS (SELECT 1 FROM anchor_records a WHERE a.deal_id = d.deal_id)"
        " ORDER BY (record->>'settled_at')::bigint, deal_id LIMIT $1",
        limit,
    )
    return [_record(row) for row in rows]


async def current_record(pool: asyncpg.Pool, deal_id: str) -> DealRecord | None:
    """The record of ``deal_id`` as the deals table holds it now (``None``: not a settled deal)."""
    row = await pool.fetchrow(
        f"SELECT {_RECORD_COLUMNS} FROM deals WHERE deal_id = $1 AND {_SETTLED}",  # noqa: S608
        deal_id,
    )
    return None if row is None else _record(row)


async def proof_for(pool: asyncpg.Pool, deal_id: str) -> AnchorProof | None:
    """Where ``deal_id`` is anchored, or ``None`` while it is in no mined batch."""
    row = await pool.fetchrow(
        """
        SELECT r.deal_id, r.record, r.leaf, r.leaf_index, r.proof, b.batch_id, b.root, b.record_count,
               b.contract, b.chain_id, b.tx_hash, b.block_number
        FROM anchor_records r JOIN anchor_batches b USING (contract, batch_id)
        WHERE r.deal_id = $1 AND b.state = 'anchored'
        """,
        deal_id,
    )
    if row is None:
        return None
    return AnchorProof(
        deal_id=row["deal_id"], record=bytes(row["record"]), leaf=HexBytes(row["leaf"]),
        leaf_index=row["leaf_index"], proof=[HexBytes(node) for node in row["proof"]],
        batch_id=row["batch_id"], root=HexBytes(row["root"]), record_count=row["record_count"],
        contract=row["contract"], chain_id=row["chain_id"], tx_hash=row["tx_hash"],
        block_number=row["block_number"],
    )  # fmt: skip
