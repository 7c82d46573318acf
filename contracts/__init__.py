"""IPSX smart contracts: compiled artifacts, their loader, and the Python side of their hashing.

The Solidity sources live in ``contracts/src``; ``python -m contracts.build`` compiles them with the
pinned npm ``solc`` into ``contracts/artifacts/<Name>.json``, which are committed so that nothing
here needs Node at run time. ``load(name)`` returns one artifact.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACTS_DIR", "CONTRACT_NAMES", "Artifact", "UnknownContractError", "load"]

PACKAGE_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = PACKAGE_DIR / "artifacts"
SOURCES_DIR = PACKAGE_DIR / "src"
CONTRACT_NAMES = ("IPSXToken", "TokenSale", "PaymentChannels", "DealAnchor")


class UnknownContractError(LookupError):
    """No committed artifact for the contract ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no artifact for contract {name!r} (known: {', '.join(CONTRACT_NAMES)})")
        self.name = name


@dataclass(frozen=True)
class Artifact:
    """One compiled contract, as committed in ``contracts/artifacts``.

    ``bytecode`` is the creation code and ``deployed_bytecode`` the runtime code, both 0x-prefixed
    hex. ``sources`` maps every source unit the contract was built from to its keccak256 (as solc's
    metadata records it) and ``source_hash`` is the sha256 over that map.
    """

    name: str
    abi: list[dict[str, Any]] = field(repr=False)
    bytecode: str = field(repr=False)
    deployed_bytecode: str = field(repr=False)
    compiler_version: str
    source_hash: str
    sources: dict[str, str] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        """Builds an artifact from the dictionary that ``contracts.build`` writes."""
        return cls(
            name=data["contractName"],
            abi=data["abi"],
            bytecode=data["bytecode"],
            deployed_bytecode=data["deployedBytecode"],
            compiler_version=data["compiler"]["version"],
            source_hash=data["sourceHash"],
            sources=data["sources"],
        )


@functools.cache
def load(name: str) -> Artifact:
    """Returns the committed artifact of contract ``name``; raises ``UnknownContractError``."""
    if name not in CONTRACT_NAMES:
        raise UnknownContractError(name)
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnknownContractError(name) from None
    return Artifact.from_json(json.loads(text))
