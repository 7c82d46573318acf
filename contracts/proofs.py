"""Python mirror of the hashing and signature checks of ``PaymentChannels.sol``.

A balance proof is the sender's EIP-712 signature over ``BalanceProof(bytes32 channelId,uint256
balance)``, ``balance`` being the cumulative amount (IPSX base units) owed to the receiver. The
receiver's consent to a cooperative close signs ``ClosingConsent(bytes32 channelId,uint256
balance,uint256 expiresAt)``, ``expiresAt`` being the last block timestamp (unix seconds) at which
the contract takes it: another type hash, so neither signature can stand for the other. Both are
bound to the domain ``("IPSX PaymentChannels", "2", chain id, contract address)``: version 2 is the
contract whose consent carries an expiry; the commands that reach the chain tell a deployment of
another version by its ``eip712Domain()`` (:func:`foreign_domain`).

Recovery applies the contract's rules (65 bytes, v of 27 or 28, s in the lower half of the curve
order), so a signature accepted here is accepted on-chain and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from eth_account import Account
from eth_account.messages import SignableMessage
from eth_account.types import PrivateKeyType
from eth_typing import ChecksumAddress
from eth_utils.address import to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak

__all__ = [
    "BALANCE_PROOF_TYPE",
    "CLOSING_CONSENT_TYPE",
    "NO_DOMAIN",
    "ChannelDomain",
    "InvalidSignatureError",
    "balance_proof_message",
    "channel_id",
    "closing_consent_message",
    "digest",
    "foreign_domain",
    "recover_balance_proof_signer",
    "recover_closing_consent_signer",
    "sign_balance_proof",
    "sign_closing_consent",
    "typed_data",
]

DOMAIN_NAME: Final = "IPSX PaymentChannels"
DOMAIN_VERSION: Final = "2"
BALANCE_PROOF_TYPE: Final = "BalanceProof"
CLOSING_CONSENT_TYPE: Final = "ClosingConsent"
_FIELDS: Final = {
    BALANCE_PROOF_TYPE: [{"name": "channelId", "type": "bytes32"}, {"name": "balance", "type": "uint256"}],
    CLOSING_CONSENT_TYPE: [
        {"name": "channelId", "type": "bytes32"},
        {"name": "balance", "type": "uint256"},
        {"name": "expiresAt", "type": "uint256"},
    ],
}
_DOMAIN_FIELDS: Final = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_DOMAIN_TYPEHASH: Final = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_TYPEHASHES: Final = {
    name: keccak(f"{name}({','.join(m['type'] + ' ' + m['name'] for m in members)})".encode())
    for name, members in _FIELDS.items()
}
_UINT256_MAX: Final = 2**256 - 1
# secp256k1 group order; the contract (OpenZeppelin ECDSA) rejects s above its half.
_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


NO_DOMAIN: Final = "it has no EIP-712 domain"  # why a contract without eip712Domain() is no PaymentChannels


def foreign_domain(name: str, version: str) -> str | None:
    """Why a contract whose ``eip712Domain()`` names ``name`` and ``version`` would refuse what is
    signed here, or ``None`` when it takes it."""
    if name != DOMAIN_NAME:
        return f"its EIP-712 domain is {name[:40]!r}, not {DOMAIN_NAME!r}"
    if version != DOMAIN_VERSION:
        return f"it is version {version[:10]!r} and this IPSX signs for version {DOMAIN_VERSION!r}"
    return None


class InvalidSignatureError(ValueError):
    """A signature the contract would reject as malformed (``reason`` says which rule)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid signature: {reason}")
        self.reason = reason


def _word(value: int) -> bytes:
    if not 0 <= value <= _UINT256_MAX:
        raise ValueError(f"{value} is not a uint256")
    return value.to_bytes(32, "big")


def _bytes32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return value


@dataclass(frozen=True)
class ChannelDomain:
    """The EIP-712 domain of one ``PaymentChannels`` deployment."""

    chain_id: int
    verifying_contract: ChecksumAddress
    separator: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        address = to_canonical_address(self.verifying_contract)
        object.__setattr__(self, "verifying_contract", to_checksum_address(address))
        separator = keccak(
            _DOMAIN_TYPEHASH
            + keccak(DOMAIN_NAME.encode())
            + keccak(DOMAIN_VERSION.encode())
            + _word(self.chain_id)
            + address.rjust(32, b"\0")
        )
        object.__setattr__(self, "separator", separator)

    def as_dict(self) -> dict[str, Any]:
        """The domain as EIP-712 JSON (``eth_signTypedData_v4``'s ``domain``)."""
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }


def channel_id(sender: str, receiver: str, nonce: int) -> bytes:
    """The id of the ``nonce``-th channel from ``sender`` to ``receiver``, as the contract computes it."""
    return keccak(
        to_canonical_address(sender).rjust(32, b"\0")
        + to_canonical_address(receiver).rjust(32, b"\0")
        + _word(nonce)
    )


def _message(primary_type: str, domain: ChannelDomain, channel: bytes, *words: int) -> SignableMessage:
    struct_hash = keccak(_TYPEHASHES[primary_type] + _bytes32(channel) + b"".join(map(_word, words)))
    return SignableMessage(version=b"\x01", header=domain.separator, body=struct_hash)


def balance_proof_message(domain: ChannelDomain, channel: bytes, balance: int) -> SignableMessage:
    """The EIP-712 message of a balance proof for ``balance`` on channel ``channel``."""
    return _message(BALANCE_PROOF_TYPE, domain, channel, balance)


def closing_consent_message(
    domain: ChannelDomain, channel: bytes, balance: int, expires_at: int
) -> SignableMessage:
    """The EIP-712 message of the receiver's consent to close ``channel`` at ``balance`` in a block
    stamped ``expires_at`` (unix seconds) or earlier."""
    return _message(CLOSING_CONSENT_TYPE, domain, channel, balance, expires_at)


def typed_data(
    primary_type: str, domain: ChannelDomain, channel: bytes, balance: int, expires_at: int | None = None
) -> dict[str, Any]:
    """The full EIP-712 JSON of either message, for wallets (``eth_signTypedData_v4``). A closing
    consent needs ``expires_at``, a balance proof has none; ``ValueError`` otherwise."""
    if primary_type not in _TYPEHASHES:
        raise ValueError(f"unknown primary type {primary_type!r}")
    message: dict[str, Any] = {"channelId": _bytes32(channel), "balance": balance}
    if (expires_at is None) != (primary_type == BALANCE_PROOF_TYPE):
        raise ValueError(f"a {primary_type} {'takes no' if expires_at is not None else 'needs an'} expiry")
    if expires_at is not None:
        message["expiresAt"] = expires_at
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, primary_type: _FIELDS[primary_type]},
        "primaryType": primary_type,
        "domain": domain.as_dict(),
        "message": message,
    }


def digest(message: SignableMessage) -> bytes:
    """The 32-byte hash that is signed (EIP-191: ``0x19 || version || header || body``)."""
    return keccak(b"\x19" + message.version + message.header + message.body)


def _sign(message: SignableMessage, key: PrivateKeyType) -> bytes:
    return bytes(Account.sign_message(message, key).signature)


def sign_balance_proof(domain: ChannelDomain, channel: bytes, balance: int, key: PrivateKeyType) -> bytes:
    """The sender's 65-byte signature (r, s, v) of a balance proof."""
    return _sign(balance_proof_message(domain, channel, balance), key)


def sign_closing_consent(
    domain: ChannelDomain, channel: bytes, balance: int, expires_at: int, key: PrivateKeyType
) -> bytes:
    """The receiver's 65-byte signature (r, s, v) consenting to close at ``balance`` until
    ``expires_at`` (the last block timestamp the contract takes it in)."""
    return _sign(closing_consent_message(domain, channel, balance, expires_at), key)


def _recover(message: SignableMessage, signature: bytes) -> ChecksumAddress:
    if len(signature) != 65:
        raise InvalidSignatureError(f"length {len(signature)} instead of 65")
    if signature[64] not in (27, 28):
        raise InvalidSignatureError(f"v is {signature[64]}, not 27 or 28")
    if int.from_bytes(signature[32:64], "big") > _SECP256K1_N // 2:
        raise InvalidSignatureError("s is in the upper half of the curve order")
    try:
        signer: ChecksumAddress = Account.recover_message(message, signature=signature)
    except Exception as exc:  # eth-keys raises several types for points that are not on the curve
        raise InvalidSignatureError(f"no public key recovers: {exc}") from exc
    return signer


def recover_balance_proof_signer(
    domain: ChannelDomain, channel: bytes, balance: int, signature: bytes
) -> ChecksumAddress:
    """The address that signed this balance proof; raises ``InvalidSignatureError`` if malformed.

    The caller compares it with the channel's sender: any well-formed signature recovers some address.
    """
    return _recover(balance_proof_message(domain, channel, balance), signature)


def recover_closing_consent_signer(
    domain: ChannelDomain, channel: bytes, balance: int, expires_at: int, signature: bytes
) -> ChecksumAddress:
    """The address that signed this closing consent; raises ``InvalidSignatureError`` if malformed."""
    return _recover(closing_consent_message(domain, channel, balance, expires_at), signature)
