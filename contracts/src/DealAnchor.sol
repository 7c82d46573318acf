// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title Anchor of deal and usage records
/// @notice The operator (owner) posts, per batch of records, the Merkle root of the batch with its
/// record count and totals. Batch ids are sequential from 1, so a gap or a replay is impossible.
/// Leaves are double-hashed, leaf = keccak256(keccak256(record)), and pairs are hashed sorted
/// (OpenZeppelin MerkleProof), so an inner node can never pass as a leaf.
contract DealAnchor is Ownable {
    struct Batch {
        bytes32 root;
        uint64 recordCount;
        uint64 anchoredAt;
        // Sum of the records' amounts in IPSX base units, and of their bytes.
        uint256 totalAmount;
        uint256 totalBytes;
    }

    /// @notice Number of anchored batches, which is also the id of the last one.
    uint256 public batchCount;
    mapping(uint256 batchId => Batch) private _batches;

    event BatchAnchored(
        uint256 indexed batchId,
        bytes32 root,
        uint64 recordCount,
        uint256 totalAmount,
        uint256 totalBytes
    );

    error UnexpectedBatchId(uint256 expected, uint256 batchId);
    error EmptyBatch();
    error UnknownBatch(uint256 batchId);

    constructor(address operator) Ownable(operator) {}

    /// @notice Records batch `batchId` (must be `batchCount + 1`); operator only.
    function anchor(
        uint256 batchId,
        bytes32 root,
        uint64 recordCount,
        uint256 totalAmount,
        uint256 totalBytes
    ) external onlyOwner {
        if (batchId != batchCount + 1) revert UnexpectedBatchId(batchCount + 1, batchId);
        if (root == bytes32(0) || recordCount == 0) revert EmptyBatch();
        batchCount = batchId;
        _batches[batchId] = Batch({
            root: root,
            recordCount: recordCount,
            anchoredAt: uint64(block.timestamp),
            totalAmount: totalAmount,
            totalBytes: totalBytes
        });
        emit BatchAnchored(batchId, root, recordCount, totalAmount, totalBytes);
    }

    /// @notice The anchored batch; reverts for an unknown id.
    function getBatch(uint256 batchId) public view returns (Batch memory batch) {
        batch = _batches[batchId];
        if (batch.root == bytes32(0)) revert UnknownBatch(batchId);
    }

    /// @notice The tree leaf of a record: keccak256(keccak256(record)).
    function leafOf(bytes calldata record) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(record)));
    }

    /// @notice Whether `leaf` is in batch `batchId`'s tree; reverts for an unknown batch.
    function verify(uint256 batchId, bytes32 leaf, bytes32[] calldata proof) public view returns (bool) {
        return MerkleProof.verifyCalldata(proof, getBatch(batchId).root, leaf);
    }

    /// @notice Whether `record` (its encoded bytes) is in batch `batchId`; reverts for an unknown batch.
    function verifyRecord(
        uint256 batchId,
        bytes calldata record,
        bytes32[] calldata proof
    ) external view returns (bool) {
        return verify(batchId, leafOf(record), proof);
    }
}
