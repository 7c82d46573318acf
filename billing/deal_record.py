"""The deal record: what of a settled deal is anchored, and its canonical bytes. No I/O.

A settled deal is anchored as its canonical record: the Solidity ABI encoding (``abi.encode``,
so a contract can decode it too) of, in this order::

    uint8   version          1
    string  dealId
    string  requester        account names, as the deals table holds them
    string  provider
    string  exitId
    uint256 pricePerGb       IPSX base units
    uint256 pricePerHour     IPSX base units
    uint64  billableBytes
    uint256 charge           IPSX base units: what the requester paid
    uint256 commission       IPSX base units: the operator's part of the charge
    uint64  settledAt        unix seconds

Its tree leaf is ``keccak256(keccak256(record))`` (:mod:`contracts.merkle`, ``DealAnchor.leafOf``).
The record also has a JSON form, the one the API serves and ``ipsx verify`` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError, EncodingError

from contracts.merkle import leaf_hash

RECORD_VERSION: Final = 1
RECORD_TYPES: Final = (
    "uint8", "string", "string", "string", "string", "uint256", "uint256", "uint64", "uint256",
    "uint256", "uint64",
)  # fmt: skip
_AMOUNTS: Final = ("price_per_gb", "price_per_hour", "charge", "commission")


@dataclass(frozen=True, slots=True)
class DealRecord:
    """The anchored facts of one settled deal; amounts in base units (see the module docstring)."""

    deal_id: str
    requester: str
    provider: str
    exit_id: str
    price_per_gb: int
    price_per_hour: int
    billable_bytes: int
    charge: int
    commission: int
    settled_at: int

    def _values(self) -> tuple[Any, ...]:
        return (RECORD_VERSION, self.deal_id, self.requester, self.provider, self.exit_id,
                self.price_per_gb, self.price_per_hour, self.billable_bytes, self.charge,
                self.commission, self.settled_at)  # fmt: skip

    def encode(self) -> bytes:
        """The canonical bytes; raises ``ValueError`` for a value out of its ABI type's range."""
        try:
            return bytes(abi_encode(RECORD_TYPES, self._values()))
        except EncodingError as error:
            raise ValueError(f"deal {self.deal_id!r} cannot be encoded: {error}") from None

    @property
    def leaf(self) -> bytes:
        return leaf_hash(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> DealRecord:
        """The record ``data`` encodes; ``ValueError`` unless it is canonical and version 1."""
        try:
            values = abi_decode(RECORD_TYPES, data)
        except (DecodingError, ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"not an encoded deal record: {error}") from None
        if values[0] != RECORD_VERSION:
            raise ValueError(f"unknown record version {values[0]}")
        record = cls(*values[1:])
        if record.encode() != data:
            raise ValueError("not the canonical encoding of its record")
        return record

    def to_json(self) -> dict[str, Any]:
        """Amounts as decimal strings (exact), counts and times as integers."""
        out: dict[str, Any] = {"version": RECORD_VERSION}
        for name in _FIELDS:
            value = getattr(self, name)
            out[name] = str(value) if name in _AMOUNTS else value
        return out

    @classmethod
    def from_json(cls, data: Any) -> DealRecord:
        """The inverse of :meth:`to_json`; ``ValueError`` on anything else (untrusted input)."""
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise ValueError("not a version 1 deal record")
        values: dict[str, Any] = {}
        for name in _FIELDS:
            value = data.get(name)
            if name in _AMOUNTS:
                if not isinstance(value, str) or not value.isdigit() or len(value) > 78:
                    raise ValueError(f"{name} must be base units as a decimal string")
                value = int(value)
            elif name in ("billable_bytes", "settled_at"):
                if type(value) is not int or value < 0:
                    raise ValueError(f"{name} must be a non-negative integer")
            elif not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            values[name] = value
        return cls(**values)


_FIELDS: Final = tuple(item.name for item in fields(DealRecord))
