"""What a transaction offers per gas, and what the chain payer offers when it replaces one.

Pure functions, no I/O: ``billing.withdrawal_sender`` asks the node what the chain wants (twice the
latest base fee plus the node's suggested tip, or the gas price before EIP-1559) and decides with
these whether a stored transfer is priced out and what its replacement offers;
``billing.withdrawal_transfers`` reads the fees back from the raw transactions it stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

import rlp  # type: ignore[import-untyped]
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes

GWEI: Final = 10**9  # wei
# A replacement offers at least 9/8 of each fee of the version it replaces (+12.5 %): geth, erigon,
# nethermind and anvil refuse one less than 10 % above, and rounding must never leave it short.
BUMP: Final = (9, 8)


@dataclass(frozen=True, slots=True)
class Fees:
    """What a transaction offers per gas, in wei."""

    max_fee: int  # maxFeePerGas, or the gas price of a legacy transaction
    priority_fee: int  # maxPriorityFeePerGas (the gas price again for a legacy transaction)
    legacy: bool = False  # a chain without a base fee: one gas price

    def fields(self) -> dict[str, int]:
        """The transaction fields that carry them."""
        if self.legacy:
            return {"gasPrice": self.max_fee}
        return {"maxFeePerGas": self.max_fee, "maxPriorityFeePerGas": self.priority_fee}


def signed_fees(raw_tx: bytes) -> Fees:
    """The fees a signed raw transaction offers (legacy, EIP-2930 or EIP-1559); raises
    ``ValueError`` for bytes that are none of them."""
    if not raw_tx:
        raise ValueError("an empty transaction")
    try:
        if raw_tx[0] >= 0xC0:  # an RLP list: a legacy transaction (nonce, gasPrice, ...)
            price = int.from_bytes(rlp.decode(raw_tx)[1], "big")
            return Fees(price, price, legacy=True)
        fields = TypedTransaction.from_bytes(HexBytes(raw_tx)).as_dict()
        if "maxFeePerGas" in fields:
            return Fees(int(fields["maxFeePerGas"]), int(fields["maxPriorityFeePerGas"]))
        price = int(fields["gasPrice"])
    except (rlp.exceptions.RLPException, TypeError, ValueError, KeyError, IndexError) as error:
        # the RLP and eth-account decoders each raise their own kinds
        raise ValueError(f"not a signed transaction: {error}") from None
    return Fees(price, price, legacy=True)


def underpriced(offered: Fees, needed: Fees) -> bool:
    """Whether a transaction offering ``offered`` asks less than the chain now does (``needed``:
    twice the base fee plus the suggested tip), in its fee cap or in its tip."""
    return offered.max_fee < needed.max_fee or offered.priority_fee < needed.priority_fee


def replacement_fees(previous: Fees, needed: Fees, ceiling: int) -> Fees | None:
    """The fees of a version replacing one that offers ``previous``: each fee at least what the
    chain asks (``needed``) and at least :data:`BUMP` times the previous one, the fee cap at most
    ``ceiling`` (wei per gas) and the tip at most the fee cap. ``None`` when the ceiling leaves no
    room for a replacement a node would take (both fees :data:`BUMP` times higher)."""
    up, down = BUMP
    least_max = -(-previous.max_fee * up // down)  # rounded up
    least_tip = -(-previous.priority_fee * up // down)
    max_fee = min(max(needed.max_fee, least_max), ceiling)
    tip = min(max(needed.priority_fee, least_tip), max_fee)
    if max_fee < least_max or tip < least_tip:
        return None
    if needed.legacy:
        return Fees(max_fee, max_fee, legacy=True)
    return Fees(max_fee, tip)


def gwei(wei: int) -> str:
    """A fee per gas for people: ``2.5`` for 2.5 gwei."""
    return format((Decimal(wei) / GWEI).normalize(), "f")
