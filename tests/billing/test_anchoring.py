"""Anchoring settled deals on a real anvil and a real PostgreSQL database (both this module's own).

Every test deploys a fresh ``DealAnchor`` owned by the operator (so batch ids start at 1) and
starts from empty deal and anchor tables. Settled deals are inserted as the market leaves them.
A crash is simulated by dropping an :class:`Anchorer` between its steps and starting a new one,
as a restarted process would.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from eth_typing import ChecksumAddress

from billing import anchor_proofs
from billing.anchoring import AnchorConflict, Anchorer, AnchorError, AnchorReverted, AnchorSettings
from billing.deal_record import DealRecord
from contracts import merkle
from contracts.deploy import deploy_contract
from tests.billing.conftest import create_and_migrate, drop_database
from tests.contracts.chain import Chain, anvil_chain, events

TOKEN = 10**18
WAIT = 30.0  # seconds another task gets to reach a state (a deadline, not a measurement)
TABLES = "anchor_records, anchor_batches, deal_transitions, deals"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with anvil_chain(tmp_path_factory.mktemp("anchoring-anvil")) as chain:
        yield chain


@pytest.fixture(scope="module")
def anchoring_db() -> Iterator[str]:
    name = f"ipsx_test_anchoring_{os.getpid()}"
    yield asyncio.run(create_and_migrate(name))
    asyncio.run(drop_database(name))


@dataclass
class Stack:
    chain: Chain
    pool: asyncpg.Pool
    anchor: Any  # the DealAnchor web3 contract
    anchorers: list[Anchorer] = field(default_factory=list)
    settled_at: int = 1_764_000_000

    @property
    def operator(self) -> ChecksumAddress:
        return self.chain.accounts[1]

    def settings(self, **overrides: Any) -> AnchorSettings:
        values: dict[str, Any] = {
            "anchor_address": self.anchor.address,
            "operator_key": self.chain.keys[self.operator].key.to_0x_hex(),
            "rpc_url": str(self.chain.w3.provider.endpoint_uri),  # type: ignore[attr-defined]
            "interval": 0.01,
            "max_batch": 100,
            "confirmations": 0,
        }
        values.update(overrides)
        return AnchorSettings(**values)

    def anchorer(self, **overrides: Any) -> Anchorer:
        """A new anchorer over the test's database, as a (re)started process would make."""
        anchorer = Anchorer(self.pool, self.settings(**overrides))
        self.anchorers.append(anchorer)
        return anchorer

    async def settle(self, count: int = 1, *, state: str = "settled", charge: int = 3 * TOKEN) -> list[str]:
        """``count`` deals as the market leaves them once settled; returns their ids."""
        ids = []
        for _ in range(count):
            self.settled_at += 1
            deal_id = f"r{self.settled_at}_1"
            record = {"deal_id": deal_id, "settled_at": self.settled_at if state == "settled" else None}
            await self.pool.execute(
                "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id,"
                " price_per_gb, price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state,"
                " record, charge, commission, billable_bytes)"
                " VALUES ($1, 'r', 'o', 'alice', 'bob', 'exit-1', $2, 0, $3, 60, 0, false, $4, $5::jsonb,"
                " $6, $7, $8)",
                deal_id, TOKEN, 5 * TOKEN, state, orjson.dumps(record).decode(), charge, charge // 10,
                self.settled_at % 10_000,
            )  # fmt: skip
            ids.append(deal_id)
        return ids

    def batch_count(self) -> int:
        return int(self.anchor.functions.batchCount().call())

    def nonce(self) -> int:
        return int(self.chain.w3.eth.get_transaction_count(self.operator))


@pytest.fixture
async def stack(chain: Chain, anchoring_db: str) -> AsyncIterator[Stack]:
    pool = await asyncpg.create_pool(anchoring_db, min_size=1, max_size=6)
    await pool.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    anchor = deploy_contract(chain.w3, "DealAnchor", chain.accounts[1], sender=chain.accounts[0])
    stack = Stack(chain, pool, anchor)
    try:
        yield stack
    finally:
        for anchorer in stack.anchorers:
            await anchorer.aclose()
        await pool.close()


# ---- the record ----------------------------------------------------------------------------------

RECORD = DealRecord("r1_1", "alice", "bob", "exit-1", TOKEN, 2 * TOKEN, 12_345, 7 * TOKEN, 7 * TOKEN // 10, 1)


def test_record_encode_call_matches_the_contract_leaf(stack: Stack) -> None:
    encoded = RECORD.encode()
    assert DealRecord.decode(encoded) == RECORD
    assert DealRecord.from_json(RECORD.to_json()) == RECORD
    assert RECORD.to_json()["charge"] == str(7 * TOKEN)  # exact base units, as a string
    assert bytes(stack.anchor.functions.leafOf(encoded).call()) == merkle.leaf_hash(encoded) == RECORD.leaf


@pytest.mark.parametrize(
    "data",
    [RECORD.encode() + b"\0", RECORD.encode()[:-32], b"", b"\x01" * 31],
    ids=["trailing byte", "truncated", "empty", "short"],
)
def test_record_decode_refuses_what_is_not_canonical(data: bytes) -> None:
    with pytest.raises(ValueError):
        DealRecord.decode(data)


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"charge": 7},
        {"charge": "-1"},
        {"settled_at": "1"},
        {"deal_id": None},
        {"billable_bytes": True},
    ],
)
def test_record_from_json_refuses_wrong_types(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DealRecord.from_json({**RECORD.to_json(), **change})


def test_record_encode_refuses_values_out_of_range() -> None:
    with pytest.raises(ValueError, match="cannot be encoded"):
        DealRecord("d", "a", "b", "e", 2**256, 0, 0, 0, 0, 0).encode()


# ---- next_batch ----------------------------------------------------------------------------------


async def test_next_batch_state_settled_deals_oldest_first(stack: Stack) -> None:
    first = await stack.settle(3)
    await stack.settle(1, state="active")  # not settled: never anchored
    assert [r.deal_id for r in await anchor_proofs.next_batch(stack.pool, 10)] == first
    assert [r.deal_id for r in await anchor_proofs.next_batch(stack.pool, 2)] == first[:2]
    (record, *_) = await anchor_proofs.next_batch(stack.pool, 1)
    assert (record.charge, record.commission, record.price_per_gb) == (3 * TOKEN, 3 * TOKEN // 10, TOKEN)


# ---- anchor_once ---------------------------------------------------------------------------------


async def test_anchor_once_call_state_event(stack: Stack) -> None:
    deals = await stack.settle(3)
    batch = await stack.anchorer().anchor_once()
    assert batch is not None and batch.batch_id == 1 and batch.record_count == 3
    # the chain: the batch with its root, count and totals, and its event
    root, count, _, total_amount, total_bytes = stack.anchor.functions.getBatch(1).call()
    records = await anchor_proofs.next_batch(stack.pool, 10)
    assert records == []
    assert "0x" + bytes(root).hex() == batch.root
    assert (count, total_amount, total_bytes) == (3, 9 * TOKEN, batch.total_bytes)
    receipt = stack.chain.w3.eth.get_transaction_receipt(batch.tx_hash)  # type: ignore[arg-type]
    (event,) = events(stack.anchor, "BatchAnchored", receipt)
    assert (event["batchId"], event["recordCount"], event["totalAmount"]) == (1, 3, 9 * TOKEN)
    # the database: one anchored batch, each deal in it once
    row = await stack.pool.fetchrow("SELECT * FROM anchor_batches")
    assert (row["state"], row["tx_hash"], row["block_number"]) == (
        "anchored",
        batch.tx_hash,
        receipt["blockNumber"],
    )
    assert row["chain_id"] == stack.chain.chain_id and row["contract"] == stack.anchor.address
    anchored = await stack.pool.fetch("SELECT deal_id, batch_id FROM anchor_records ORDER BY deal_id")
    assert [(r["deal_id"], r["batch_id"]) for r in anchored] == [(d, 1) for d in sorted(deals)]
    # nothing left: no transaction; new deals: the next batch
    nonce = stack.nonce()
    assert await stack.anchorer().anchor_once() is None
    assert stack.nonce() == nonce
    later = await stack.settle(2)
    second = await stack.anchorer().anchor_once()
    assert second is not None and (second.batch_id, second.record_count) == (2, 2)
    assert {p.deal_id for d in later if (p := await anchor_proofs.proof_for(stack.pool, d))} == set(later)
    assert stack.batch_count() == 2


async def test_anchor_once_state_batches_hold_max_batch_deals(stack: Stack) -> None:
    await stack.settle(5)
    anchorer = stack.anchorer(max_batch=2)
    sizes = []
    while (batch := await anchorer.anchor_once()) is not None:
        sizes.append((batch.batch_id, batch.record_count))
    assert sizes == [(1, 2), (2, 2), (3, 1)]
    assert stack.batch_count() == 3


async def test_anchor_once_concurrent_anchorers_anchor_each_deal_once(stack: Stack) -> None:
    await stack.settle(4)
    results = await asyncio.gather(*(stack.anchorer().anchor_once() for _ in range(3)))
    anchored = [batch for batch in results if batch is not None]
    assert [batch.batch_id for batch in anchored] == [1]  # the others found the lock taken
    assert stack.batch_count() == 1
    assert await stack.pool.fetchval("SELECT count(*) FROM anchor_records") == 4


# ---- proofs --------------------------------------------------------------------------------------


async def test_proof_for_verifies_off_chain_and_on_chain(stack: Stack) -> None:
    deals = await stack.settle(5)
    assert await anchor_proofs.proof_for(stack.pool, deals[0]) is None  # not anchored yet
    batch = await stack.anchorer().anchor_once()
    assert batch is not None
    for deal_id in deals:
        found = await anchor_proofs.proof_for(stack.pool, deal_id)
        assert found is not None and found.batch_id == 1 and found.tx_hash == batch.tx_hash
        assert found.record == (await anchor_proofs.current_record(stack.pool, deal_id)).encode()  # type: ignore[union-attr]
        assert found.leaf == merkle.leaf_hash(found.record)
        assert found.verifies()
        assert stack.anchor.functions.verify(1, found.leaf, found.proof).call() is True
        assert stack.anchor.functions.verifyRecord(1, found.record, found.proof).call() is True


async def test_proof_for_tampered_record_fails_off_chain_and_on_chain(stack: Stack) -> None:
    (deal_id, *_) = await stack.settle(3)
    assert await stack.anchorer().anchor_once() is not None
    found = await anchor_proofs.proof_for(stack.pool, deal_id)
    assert found is not None
    # the books changed after anchoring: one base unit more charged
    await stack.pool.execute("UPDATE deals SET charge = charge + 1 WHERE deal_id = $1", deal_id)
    tampered = await anchor_proofs.current_record(stack.pool, deal_id)
    assert tampered is not None and tampered.charge == 3 * TOKEN + 1
    assert not found.verifies(tampered.encode())
    assert stack.anchor.functions.verify(1, tampered.leaf, found.proof).call() is False
    assert stack.anchor.functions.verifyRecord(1, tampered.encode(), found.proof).call() is False
    assert found.verifies()  # the record anchored still does


# ---- crashes and conflicts -----------------------------------------------------------------------


async def test_anchor_once_after_a_crash_between_post_and_record_records_the_batch_once(stack: Stack) -> None:
    deals = await stack.settle(3)
    crashed = stack.anchorer()
    planned = await crashed.prepare()
    assert planned is not None
    await crashed.post(planned)  # mined on-chain, never recorded: the process died here
    assert stack.batch_count() == 1
    assert await anchor_proofs.proof_for(stack.pool, deals[0]) is None
    nonce = stack.nonce()

    batch = await stack.anchorer().anchor_once()  # the restarted process
    assert batch is not None and (batch.batch_id, batch.root) == (1, planned.root)
    assert stack.nonce() == nonce  # adopted, not posted again
    assert stack.batch_count() == 1
    row = await stack.pool.fetchrow("SELECT state, tx_hash FROM anchor_batches WHERE batch_id = 1")
    assert row["state"] == "anchored" and row["tx_hash"] == batch.tx_hash
    found = await anchor_proofs.proof_for(stack.pool, deals[0])
    assert found is not None and found.verifies()
    assert stack.anchor.functions.verify(1, found.leaf, found.proof).call() is True


async def test_anchor_once_after_a_crash_before_post_posts_the_planned_batch(stack: Stack) -> None:
    first = await stack.settle(2)
    planned = await stack.anchorer().prepare()  # written ahead, then the process died
    assert planned is not None and stack.batch_count() == 0
    await stack.settle(1)  # settled after the plan: not in that batch
    batch = await stack.anchorer().anchor_once()
    assert batch is not None and (batch.batch_id, batch.root, batch.record_count) == (1, planned.root, 2)
    assert {r["deal_id"] for r in await stack.pool.fetch("SELECT deal_id FROM anchor_records")} == set(first)
    assert (await stack.anchorer().anchor_once()) is not None and stack.batch_count() == 2


async def test_anchor_once_after_a_crash_while_the_post_is_pending_waits_for_it(stack: Stack) -> None:
    await stack.settle(2)
    w3 = stack.chain.w3
    w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        crashed = stack.anchorer()
        planned = await crashed.prepare()
        assert planned is not None
        posting = asyncio.create_task(crashed.post(planned))
        await _until(stack.pool, "SELECT tx_hash IS NOT NULL FROM anchor_batches WHERE batch_id = 1")
        posting.cancel()  # the process died with its transaction in the node's pool
        with pytest.raises(asyncio.CancelledError):
            await posting
        nonce = stack.nonce()
        restarted = asyncio.create_task(stack.anchorer().anchor_once())
        await asyncio.sleep(0)
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        batch = await asyncio.wait_for(restarted, WAIT)
    finally:
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
    assert batch is not None and batch.batch_id == 1
    assert stack.nonce() == nonce + 1  # the one transaction sent before the crash, nothing more
    assert stack.batch_count() == 1


async def test_anchor_once_state_a_batch_counts_only_once_confirmations_deep(stack: Stack) -> None:
    deals = await stack.settle(2)
    anchorer = stack.anchorer(confirmations=2)
    mined = await anchorer.anchor_once()
    assert mined is not None and not mined.anchored
    receipt = stack.chain.w3.eth.get_transaction_receipt(mined.tx_hash)  # type: ignore[arg-type]
    assert mined.mined_in == receipt["blockNumber"]
    # On-chain already, but not deep enough: still pending here, and no proof is served yet.
    assert stack.batch_count() == 1
    assert await stack.pool.fetchval("SELECT state FROM anchor_batches WHERE batch_id = 1") == "pending"
    assert await anchor_proofs.proof_for(stack.pool, deals[0]) is None
    nonce = stack.nonce()
    stack.chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    waiting = await stack.anchorer(confirmations=2).anchor_once()  # a restart finds it pending
    assert waiting is not None and not waiting.anchored and waiting.batch_id == 1
    stack.chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    done = await anchorer.anchor_once()
    assert done is not None and done.anchored and (done.batch_id, done.tx_hash) == (1, mined.tx_hash)
    assert stack.nonce() == nonce  # waiting sent nothing: the one post
    row = await stack.pool.fetchrow("SELECT state, block_number FROM anchor_batches WHERE batch_id = 1")
    assert (row["state"], row["block_number"]) == ("anchored", receipt["blockNumber"])
    assert {p.deal_id for d in deals if (p := await anchor_proofs.proof_for(stack.pool, d))} == set(deals)


def test_anchor_settings_refuse_negative_confirmations(stack: Stack) -> None:
    with pytest.raises(ValueError, match="confirmations"):
        stack.settings(confirmations=-1)


async def test_anchor_once_conflict_when_the_chain_has_a_batch_the_database_lacks(stack: Stack) -> None:
    await stack.settle(2)
    stack.chain.transact(stack.anchor.functions.anchor(1, b"\x01" * 32, 1, 0, 0), stack.operator)
    with pytest.raises(AnchorConflict, match="the contract has 1 batches, this database knows 0"):
        await stack.anchorer().anchor_once()
    assert await stack.pool.fetchval("SELECT count(*) FROM anchor_batches") == 0


async def test_anchor_once_conflict_when_the_chain_anchored_another_root(stack: Stack) -> None:
    await stack.settle(2)
    planned = await stack.anchorer().prepare()
    assert planned is not None
    stack.chain.transact(stack.anchor.functions.anchor(1, b"\x01" * 32, 1, 0, 0), stack.operator)
    with pytest.raises(AnchorConflict) as raised:
        await stack.anchorer().anchor_once()
    assert raised.value.batch_id == 1 and raised.value.chain_root == "0x" + "01" * 32
    assert await stack.pool.fetchval("SELECT state FROM anchor_batches") == "pending"


async def test_anchor_once_revert_when_the_key_is_not_the_owner(stack: Stack) -> None:
    await stack.settle(1)
    outsider = stack.chain.keys[stack.chain.accounts[5]].key.to_0x_hex()
    with pytest.raises(AnchorReverted):
        await stack.anchorer(operator_key=outsider).anchor_once()
    assert stack.batch_count() == 0
    assert await stack.anchorer().owner() == stack.operator


async def test_anchor_once_refuses_a_deal_no_record_can_hold(stack: Stack) -> None:
    (deal_id,) = await stack.settle(1)
    await stack.pool.execute("UPDATE deals SET billable_bytes = -1 WHERE deal_id = $1", deal_id)
    with pytest.raises(AnchorError, match=f"deal '{deal_id}' cannot be encoded"):
        await stack.anchorer().anchor_once()
    assert await stack.pool.fetchval("SELECT count(*) FROM anchor_batches") == 0
    assert stack.batch_count() == 0


async def test_run_anchors_until_stopped(stack: Stack) -> None:
    await stack.settle(3)
    stop = asyncio.Event()
    running = asyncio.create_task(stack.anchorer(max_batch=2).run(stop))
    await _until(stack.pool, "SELECT count(*) = 2 FROM anchor_batches WHERE state = 'anchored'")
    stop.set()
    await asyncio.wait_for(running, WAIT)
    assert stack.batch_count() == 2


async def _until(pool: asyncpg.Pool, query: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await pool.fetchval(query):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT} s: {query}")
        await asyncio.sleep(0.02)
