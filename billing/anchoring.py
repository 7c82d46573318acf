"""Anchoring: batches of settled deals → a Merkle root posted to ``DealAnchor`` on a schedule.

This module owns the batches' lifecycle: planning a batch, the ``anchor_batches`` and
``anchor_records`` rows written for it, its posts to the contract and its confirmations. The
records it holds are :mod:`billing.deal_record`'s, read by :mod:`billing.anchor_proofs`, which
also serves the proofs of anchored batches.

**A batch** holds up to ``max_batch`` settled deals not anchored yet, oldest settlement first. It
is posted as ``anchor(batchId, root, recordCount, totalAmount, totalBytes)`` from the operator
(the contract's owner), ``totalAmount`` being the sum of the charges and ``totalBytes`` of the
billable bytes; ``batchId`` is the contract's next id.

**Crash safety.** The batch and its records are written first, as ``pending``; then the
transaction is sent (its hash kept on the batch) and, once its block is ``confirmations`` deep,
the batch becomes ``anchored`` (only then are its proofs served: a reorganisation may still drop
a shallower block, and the batch is then posted again). Whatever the anchorer was doing when it
stopped, the next one finishes the pending batch before planning another: it reads the
contract's ``batchCount`` and that batch's root, and records the batch if the chain has it
(finding its transaction by its ``BatchAnchored`` log), waits for the transaction sent earlier if
the node still has it pending, or posts it again. A batch is never posted under two ids, nor a
deal put in two batches (``anchor_records`` is keyed by the deal). A chain whose batches disagree
with the database raises :class:`AnchorConflict`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import aiohttp
import asyncpg
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractLogicError, TimeExhausted, TransactionNotFound, Web3Exception

from billing import db
from billing.anchor_proofs import next_batch
from billing.deal_record import DealRecord
from billing.operator_node import OperatorNode, failure
from contracts import load
from contracts.merkle import MerkleTree, leaf_hash

log = logging.getLogger(__name__)

SECONDS: Final = 1.0


class AnchorError(RuntimeError):
    """Anchoring cannot go on without an operator looking."""


class AnchorConflict(AnchorError):
    """The contract's batch ``batch_id`` is not the database's (``chain_root`` is ``None`` when the
    contract has no such batch), or the contract holds batches the database does not know."""

    def __init__(self, contract: str, batch_id: int, reason: str, chain_root: str | None = None) -> None:
        super().__init__(f"DealAnchor {contract}, batch {batch_id}: {reason}")
        self.contract = contract
        self.batch_id = batch_id
        self.reason = reason
        self.chain_root = chain_root


class AnchorReverted(AnchorError):
    """The anchor transaction ``tx_hash`` reverted (the key is not the contract's owner?)."""

    def __init__(self, batch_id: int, tx_hash: str) -> None:
        super().__init__(f"anchoring batch {batch_id} reverted (transaction {tx_hash})")
        self.batch_id = batch_id
        self.tx_hash = tx_hash


@dataclass(frozen=True, slots=True)
class AnchorSettings:
    """Where DealAnchor is, who posts to it, and how often."""

    anchor_address: str  # the DealAnchor contract
    operator_key: str = field(repr=False)  # hex private key of its owner
    rpc_url: str = "http://127.0.0.1:8545"
    web3_factory: Callable[[], AsyncWeb3[Any]] | None = None  # instead of rpc_url; the caller closes it
    interval: float = 60 * SECONDS  # between batches
    max_batch: int = 1_000  # records per batch at most
    receipt_timeout: float = 120 * SECONDS  # for the anchor transaction to be mined
    confirmations: int = 6  # blocks on top of the anchor transaction's before the batch counts

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.interval <= 0 or self.receipt_timeout <= 0:
            raise ValueError("max_batch, interval and receipt_timeout must be positive")
        if self.confirmations < 0:
            raise ValueError("confirmations must be >= 0")


# ---- the batches, in the database ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch written ahead of its transaction (``tx_hash``: the last post sent, if any)."""

    contract: str
    batch_id: int
    root: str
    record_count: int
    total_amount: int
    total_bytes: int
    from_block: int
    tx_hash: str | None = None
    mined_in: int | None = None  # the block of its BatchAnchored log, once seen
    anchored: bool = False  # mined and ``confirmations`` deep: recorded as anchored


async def _pending(pool: asyncpg.Pool, contract: str) -> Batch | None:
    row = await pool.fetchrow(
        "SELECT contract, batch_id, root, record_count, total_amount::text, total_bytes::text,"
        " from_block, tx_hash FROM anchor_batches WHERE contract = $1 AND state = 'pending'",
        contract,
    )
    if row is None:
        return None
    return Batch(
        row["contract"], row["batch_id"], row["root"], row["record_count"], int(row["total_amount"]),
        int(row["total_bytes"]), row["from_block"], row["tx_hash"],
    )  # fmt: skip


async def _write_ahead(
    pool: asyncpg.Pool, batch: Batch, chain_id: int, records: Sequence[DealRecord], tree: MerkleTree
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO anchor_batches (contract, batch_id, chain_id, root, record_count, total_amount,"
            " total_bytes, from_block) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            batch.contract, batch.batch_id, chain_id, batch.root, batch.record_count,
            batch.total_amount, batch.total_bytes, batch.from_block,
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO anchor_records (deal_id, contract, batch_id, leaf_index, leaf, record, proof)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                (record.deal_id, batch.contract, batch.batch_id, tree.positions[leaf], _hex(leaf),
                 encoded, [_hex(node) for node in tree.proof(leaf)])
                for record in records
                for encoded in [record.encode()]
                for leaf in [leaf_hash(encoded)]
            ],
        )  # fmt: skip


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


# ---- the anchorer -----------------------------------------------------------------------------------


class Anchorer(OperatorNode):
    """Posts the batches of one DealAnchor contract; see the module docstring.

    Drive it with :meth:`run`, or step by step with :meth:`anchor_once` (or :meth:`prepare`,
    :meth:`post` and :meth:`record`). Close it with :meth:`aclose` (or ``async with``).
    """

    def __init__(self, pool: asyncpg.Pool, settings: AnchorSettings) -> None:
        super().__init__(
            rpc_url=settings.rpc_url, operator_key=settings.operator_key, web3_factory=settings.web3_factory
        )
        self._pool = pool
        self._settings = settings
        self.contract: ChecksumAddress = to_checksum_address(settings.anchor_address)
        self._anchor: AsyncContract = self._w3.eth.contract(address=self.contract, abi=load("DealAnchor").abi)

    async def owner(self) -> ChecksumAddress:
        """The contract's owner: the only account whose posts it accepts."""
        return to_checksum_address(await self._anchor.functions.owner().call())

    async def run(self, stop: asyncio.Event) -> None:
        """Anchor every ``interval`` until ``stop`` is set (a full batch, once confirmed, is
        followed by the next at once). A failing node or database is logged and retried; an
        :class:`AnchorError` ends the loop, raised."""
        while not stop.is_set():
            batch = None
            try:
                batch = await self.anchor_once()
            except (OSError, aiohttp.ClientError, Web3Exception, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:  # fmt: skip
                log.warning("anchoring failed, retrying: %s", failure(exc))
            if batch is not None and batch.anchored and batch.record_count >= self._settings.max_batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.interval)

    async def anchor_once(self) -> Batch | None:
        """Finish the pending batch, else anchor the next one; returns that batch (``anchored``
        once its block is deep enough, else mined and waiting for confirmations: call again), or
        ``None`` when there was nothing to anchor or another anchorer is at work.

        Raises :class:`AnchorConflict`, :class:`AnchorReverted`, or :class:`AnchorError` for a
        deal row no record can hold.
        """
        async with self._exclusive() as alone:
            if not alone:
                return None
            batch = await self.prepare()
            if batch is None:
                return None
            if not await self._on_chain(batch):
                await self.post(batch)
            return await self.record(batch)

    def _exclusive(self) -> contextlib.AbstractAsyncContextManager[bool]:
        """Whether this is the only anchorer of the contract now (a PostgreSQL advisory lock)."""
        return db.try_advisory_lock(self._pool, f"ipsx.billing.anchoring:{self.contract}")

    async def prepare(self) -> Batch | None:
        """The pending batch, else the next one written ahead (``None``: nothing to anchor)."""
        pending = await _pending(self._pool, self.contract)
        if pending is not None:
            return pending
        count = int(await self._anchor.functions.batchCount().call())
        known = await self._pool.fetchval(
            "SELECT COALESCE(MAX(batch_id), 0) FROM anchor_batches WHERE contract = $1", self.contract
        )
        if count != known:
            raise AnchorConflict(
                self.contract, count, f"the contract has {count} batches, this database knows {known}"
            )
        records = await next_batch(self._pool, self._settings.max_batch)
        if not records:
            return None
        try:
            tree = MerkleTree.from_records(record.encode() for record in records)
        except ValueError as error:  # a deal row no record can hold: an operator must look
            raise AnchorError(f"cannot anchor the next batch: {error}") from None
        batch = Batch(
            contract=self.contract,
            batch_id=count + 1,
            root=_hex(tree.root),
            record_count=len(records),
            total_amount=sum(record.charge for record in records),
            total_bytes=sum(record.billable_bytes for record in records),
            from_block=int(await self._w3.eth.block_number),
        )
        await _write_ahead(self._pool, batch, int(await self._w3.eth.chain_id), records, tree)
        log.info("batch %d planned: %d deals, root %s", batch.batch_id, batch.record_count, batch.root)
        return batch

    async def _on_chain(self, batch: Batch) -> bool:
        """Whether the contract holds ``batch`` (``False``: it is the next one to post)."""
        count = int(await self._anchor.functions.batchCount().call())
        if count < batch.batch_id - 1:
            raise AnchorConflict(self.contract, batch.batch_id, f"the contract has only {count} batches")
        if count == batch.batch_id - 1:
            return False
        root = _hex(bytes((await self._anchor.functions.getBatch(batch.batch_id).call())[0]))
        if root != batch.root:
            raise AnchorConflict(self.contract, batch.batch_id, f"anchored with root {root}", root)
        return True

    async def post(self, batch: Batch) -> None:
        """Post ``batch`` unless the transaction sent earlier is still pending, and wait until it
        is mined. A revert because the batch got on-chain meanwhile is no error."""
        if batch.tx_hash is not None and await self._pending_tx(batch.tx_hash):
            receipt = await self._receipt(batch.tx_hash)
        else:
            tx_hash = await self._send(batch)
            if tx_hash is None:
                return  # a post sent earlier got mined meanwhile
            await self._pool.execute(
                "UPDATE anchor_batches SET tx_hash = $3 WHERE contract = $1 AND batch_id = $2",
                batch.contract, batch.batch_id, tx_hash,
            )  # fmt: skip
            receipt = await self._receipt(tx_hash)
        if receipt["status"] != 1 and not await self._on_chain(batch):
            raise AnchorReverted(batch.batch_id, HexBytes(receipt["transactionHash"]).to_0x_hex())

    async def _pending_tx(self, tx_hash: str) -> bool:
        try:
            await self._w3.eth.get_transaction(HexBytes(tx_hash))
        except TransactionNotFound:
            return False  # dropped, or never reached the node: post again
        return True

    async def _receipt(self, tx_hash: str) -> Any:
        try:
            return await self._w3.eth.wait_for_transaction_receipt(
                HexBytes(tx_hash), timeout=self._settings.receipt_timeout
            )
        except TimeExhausted:
            raise TimeoutError(f"anchor transaction {tx_hash} not mined yet") from None

    async def _send(self, batch: Batch) -> str | None:
        """The hash of the transaction sent; ``None`` when the batch is on-chain already."""
        call = self._anchor.functions.anchor(
            batch.batch_id, HexBytes(batch.root), batch.record_count, batch.total_amount, batch.total_bytes
        )
        try:
            tx = await call.build_transaction(
                {
                    "from": self.operator,
                    "nonce": await self._w3.eth.get_transaction_count(self.operator, "pending"),
                    "chainId": await self._w3.eth.chain_id,
                }
            )
        except ContractLogicError as error:  # the gas estimate saw the revert
            if await self._on_chain(batch):
                return None
            raise AnchorReverted(batch.batch_id, f"(not sent: {error})") from None
        signed = self._operator.sign_transaction(tx)  # type: ignore[arg-type]
        return HexBytes(await self._w3.eth.send_raw_transaction(signed.raw_transaction)).to_0x_hex()

    async def record(self, batch: Batch) -> Batch:
        """Mark ``batch`` anchored with the transaction that holds it on-chain, once that is
        ``confirmations`` blocks deep; returns it with its block (``anchored`` False while it is
        shallower). Raises :class:`AnchorConflict` when the contract does not hold it."""
        if not await self._on_chain(batch):
            raise AnchorConflict(self.contract, batch.batch_id, "not on-chain (yet)")
        event = self._anchor.events.BatchAnchored()
        logs = await self._w3.eth.get_logs(
            {
                "address": self.contract,
                "fromBlock": batch.from_block,
                "toBlock": "latest",
                "topics": [HexBytes(event.topic), HexBytes(batch.batch_id.to_bytes(32, "big"))],
            }
        )
        if not logs:
            raise AnchorConflict(
                self.contract, batch.batch_id, f"no BatchAnchored log since {batch.from_block}"
            )
        tx_hash = HexBytes(logs[0]["transactionHash"]).to_0x_hex()
        block = int(logs[0]["blockNumber"])
        mined = Batch(
            batch.contract, batch.batch_id, batch.root, batch.record_count, batch.total_amount,
            batch.total_bytes, batch.from_block, tx_hash, block,
        )  # fmt: skip
        head = int(await self._w3.eth.block_number)
        if head - block < self._settings.confirmations:
            log.info("batch %d mined in block %d: %d of %d confirmations", batch.batch_id, block,
                     head - block, self._settings.confirmations)  # fmt: skip
            return mined
        await self._pool.execute(
            "UPDATE anchor_batches SET state = 'anchored', tx_hash = $3, block_number = $4,"
            " anchored_at = now() WHERE contract = $1 AND batch_id = $2 AND state = 'pending'",
            batch.contract, batch.batch_id, tx_hash, block,
        )  # fmt: skip
        log.info("batch %d anchored in block %d (tx %s)", batch.batch_id, block, tx_hash)
        return replace(mined, anchored=True)


async def anchor_once(pool: asyncpg.Pool, settings: AnchorSettings) -> Batch | None:
    """One :meth:`Anchorer.anchor_once` with a connection of its own."""
    async with Anchorer(pool, settings) as anchorer:
        return await anchorer.anchor_once()
