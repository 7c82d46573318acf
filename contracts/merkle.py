"""Merkle trees of deal and usage records, verifiable by ``DealAnchor.verify`` (OpenZeppelin MerkleProof).

Rules, the same on both sides:

- a record is an opaque byte string (its canonical encoding is the caller's); its leaf is
  ``keccak256(keccak256(record))``, as ``DealAnchor.leafOf`` computes. The double hash (also used by
  OpenZeppelin's StandardMerkleTree) keeps a 64-byte inner node from ever passing as a leaf;
- a parent is ``keccak256(min(a, b) || max(a, b))`` (sorted pairs), so a proof is just the siblings
  from the leaf up, with no left/right flags;
- leaves are sorted, so the root does not depend on the order records were given in; a level with an
  odd count carries its last node up unchanged. The layout is therefore not the JS
  ``@openzeppelin/merkle-tree`` one (roots differ), but every proof verifies with ``MerkleProof``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from eth_utils.crypto import keccak

__all__ = ["MerkleTree", "hash_pair", "leaf_hash", "process_proof", "verify"]


def leaf_hash(record: bytes) -> bytes:
    """The tree leaf of ``record``: keccak256(keccak256(record))."""
    return keccak(keccak(record))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """The parent of two nodes, hashed in sorted order (OpenZeppelin ``Hashes.commutativeKeccak256``)."""
    return keccak(a + b) if a < b else keccak(b + a)


def process_proof(leaf: bytes, proof: Iterable[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf``."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node


def verify(root: bytes, leaf: bytes, proof: Iterable[bytes]) -> bool:
    """Whether ``proof`` proves ``leaf`` under ``root`` (same answer as ``MerkleProof.verify``)."""
    return process_proof(leaf, proof) == root


@dataclass(frozen=True)
class MerkleTree:
    """A tree over a non-empty set of distinct 32-byte leaves; ``levels[0]`` are the sorted leaves."""

    levels: tuple[tuple[bytes, ...], ...] = field(repr=False)
    positions: dict[bytes, int] = field(repr=False, compare=False)

    @classmethod
    def from_records(cls, records: Iterable[bytes]) -> MerkleTree:
        """The tree of ``records`` (encoded records, hashed with ``leaf_hash``)."""
        return cls.from_leaves(leaf_hash(record) for record in records)

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """The tree of ``leaves``; raises ``ValueError`` if empty, not 32 bytes, or duplicated."""
        level = tuple(sorted(leaves))
        if not level:
            raise ValueError("a Merkle tree needs at least one leaf")
        if any(len(leaf) != 32 for leaf in level):
            raise ValueError("every leaf must be 32 bytes")
        if len(set(level)) != len(level):
            raise ValueError("duplicate leaves")
        levels = [level]
        while len(level) > 1:
            pairs = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                pairs.append(level[-1])
            level = tuple(pairs)
            levels.append(level)
        return cls(levels=tuple(levels), positions={leaf: i for i, leaf in enumerate(levels[0])})

    @property
    def root(self) -> bytes:
        """The 32-byte root to anchor."""
        return self.levels[-1][0]

    @property
    def leaves(self) -> Sequence[bytes]:
        """The leaves, sorted."""
        return self.levels[0]

    def proof(self, leaf: bytes) -> list[bytes]:
        """The siblings from ``leaf`` up to the root; raises ``KeyError`` if ``leaf`` is not in the tree."""
        index = self.positions.get(leaf)
        if index is None:
            raise KeyError(leaf.hex())
        siblings = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                siblings.append(level[sibling])
            index //= 2
        return siblings

    def record_proof(self, record: bytes) -> list[bytes]:
        """The proof of an encoded record (see ``proof``)."""
        return self.proof(leaf_hash(record))
