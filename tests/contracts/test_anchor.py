"""DealAnchor and contracts.merkle: anchored batches, proofs built in Python and checked on both sides."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import merkle
from contracts.deploy import deploy_contract
from tests.contracts.chain import Chain, events, reverts


def record(i: int) -> bytes:
    """A deal record as billing could encode it: (deal id, requester, provider, bytes, amount)."""
    return encode(
        ["uint256", "address", "address", "uint256", "uint256"],
        [i, "0x" + f"{i:040x}", "0x" + f"{i + 1:040x}", 1000 * i, 10**15 * i],
    )


@pytest.fixture
def anchor(chain: Chain) -> Any:
    return deploy_contract(chain.w3, "DealAnchor", chain.accounts[0], sender=chain.accounts[1])


# ---- off-chain tree ----------------------------------------------------------------------------


def test_tree_of_one_record() -> None:
    tree = merkle.MerkleTree.from_records([b"only"])
    assert tree.root == merkle.leaf_hash(b"only")
    assert tree.record_proof(b"only") == []


def test_root_does_not_depend_on_order_and_proves_every_record() -> None:
    records = [record(i) for i in range(11)]
    tree = merkle.MerkleTree.from_records(records)
    assert merkle.MerkleTree.from_records(reversed(records)).root == tree.root
    for r in records:
        assert merkle.verify(tree.root, merkle.leaf_hash(r), tree.record_proof(r))
    assert not merkle.verify(tree.root, merkle.leaf_hash(record(11)), tree.record_proof(records[0]))


def test_tree_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        merkle.MerkleTree.from_leaves([])
    with pytest.raises(ValueError, match="duplicate"):
        merkle.MerkleTree.from_records([b"a", b"a"])
    with pytest.raises(ValueError, match="32 bytes"):
        merkle.MerkleTree.from_leaves([b"short"])
    with pytest.raises(KeyError):
        merkle.MerkleTree.from_records([b"a", b"b"]).record_proof(b"c")


def test_inner_node_is_not_a_leaf() -> None:
    tree = merkle.MerkleTree.from_records([record(i) for i in range(4)])
    inner = tree.levels[1][0]
    # the inner node verifies as a *leaf hash* with its sibling, but no record hashes to it
    assert merkle.verify(tree.root, inner, [tree.levels[1][1]])
    assert merkle.leaf_hash(tree.levels[0][0] + tree.levels[0][1]) != inner


@settings(max_examples=40, deadline=None)
@given(st.sets(st.binary(max_size=40), min_size=1, max_size=40))
def test_every_record_of_any_batch_verifies(records: set[bytes]) -> None:
    tree = merkle.MerkleTree.from_records(records)
    depth = len(tree.levels) - 1
    assert 2 ** (depth - 1) < len(records) <= 2**depth or len(records) == 1
    for r in records:
        assert merkle.verify(tree.root, merkle.leaf_hash(r), tree.record_proof(r))


# ---- on-chain ----------------------------------------------------------------------------------


def test_anchor_call_state_event(chain: Chain, anchor: Any) -> None:
    tree = merkle.MerkleTree.from_records([record(i) for i in range(5)])
    receipt = chain.transact(anchor.functions.anchor(1, tree.root, 5, 15 * 10**15, 15_000), chain.accounts[0])
    assert events(anchor, "BatchAnchored", receipt) == [
        {"batchId": 1, "root": tree.root, "recordCount": 5, "totalAmount": 15 * 10**15, "totalBytes": 15_000}
    ]
    stamp = chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert tuple(anchor.functions.getBatch(1).call()) == (tree.root, 5, stamp, 15 * 10**15, 15_000)
    assert anchor.functions.batchCount().call() == 1
    assert anchor.functions.owner().call() == chain.accounts[0]


def test_anchor_reverts(chain: Chain, anchor: Any) -> None:
    operator, stranger = chain.accounts[0], chain.accounts[1]
    root = merkle.leaf_hash(b"x")
    with reverts(anchor, "OwnableUnauthorizedAccount", stranger):
        anchor.functions.anchor(1, root, 1, 0, 0).transact({"from": stranger})
    with reverts(anchor, "UnexpectedBatchId", 1, 2):
        anchor.functions.anchor(2, root, 1, 0, 0).transact({"from": operator})
    with reverts(anchor, "EmptyBatch"):
        anchor.functions.anchor(1, b"\0" * 32, 1, 0, 0).transact({"from": operator})
    with reverts(anchor, "EmptyBatch"):
        anchor.functions.anchor(1, root, 0, 0, 0).transact({"from": operator})
    chain.transact(anchor.functions.anchor(1, root, 1, 0, 0), operator)
    # a replayed batch is refused, and batch 1 keeps its root
    with reverts(anchor, "UnexpectedBatchId", 2, 1):
        anchor.functions.anchor(1, merkle.leaf_hash(b"y"), 1, 0, 0).transact({"from": operator})
    assert bytes(anchor.functions.getBatch(1).call()[0]) == root


def test_verify_on_chain_matches_python(chain: Chain, anchor: Any) -> None:
    records = [record(i) for i in range(7)]
    tree = merkle.MerkleTree.from_records(records)
    chain.transact(anchor.functions.anchor(1, tree.root, len(records), 0, 0), chain.accounts[0])
    for r in records:
        proof = tree.record_proof(r)
        assert bytes(anchor.functions.leafOf(r).call()) == merkle.leaf_hash(r)
        assert anchor.functions.verify(1, merkle.leaf_hash(r), proof).call() is True
        assert anchor.functions.verifyRecord(1, r, proof).call() is True
    # a record outside the batch, a proof of another record, a tampered record
    outsider = record(99)
    assert anchor.functions.verifyRecord(1, outsider, tree.record_proof(records[0])).call() is False
    assert anchor.functions.verifyRecord(1, records[1], tree.record_proof(records[0])).call() is False
    assert (
        anchor.functions.verifyRecord(1, records[0][:-1] + b"\1", tree.record_proof(records[0])).call()
        is False
    )
    with reverts(anchor, "UnknownBatch", 2):
        anchor.functions.verifyRecord(2, records[0], tree.record_proof(records[0])).call()
    with reverts(anchor, "UnknownBatch", 0):
        anchor.functions.getBatch(0).call()
