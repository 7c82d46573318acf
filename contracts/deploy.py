"""Deploys the IPSX contracts on a web3 (v7) connection.

Transactions are sent with ``transact({"from": deployer})``: the node must hold the deployer's key
(anvil, eth-tester), or the caller adds a signing middleware to ``w3`` beforehand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BadFunctionCallOutput, ContractLogicError

from contracts import load
from contracts.proofs import NO_DOMAIN, ChannelDomain, foreign_domain

__all__ = [
    "DEFAULT_CHALLENGE_PERIOD",
    "Allocations",
    "Deployment",
    "DeploymentError",
    "SaleTerms",
    "contract_at",
    "deploy",
    "deploy_contract",
]

SECONDS: Final = 1
HOURS: Final = 3600 * SECONDS
DEFAULT_CHALLENGE_PERIOD: Final = 24 * HOURS
RECEIPT_TIMEOUT: Final = 120 * SECONDS


class DeploymentError(RuntimeError):
    """A deployment transaction was mined but reverted."""

    def __init__(self, name: str, tx_hash: str) -> None:
        super().__init__(f"deploying {name} reverted (transaction {tx_hash})")
        self.name = name
        self.tx_hash = tx_hash


@dataclass(frozen=True)
class SaleTerms:
    """The funding sale: ``rate`` IPSX base units per wei, ``cap`` in wei, ``[start, end)`` in seconds."""

    wallet: str
    rate: int
    cap: int
    start: int
    end: int


@dataclass(frozen=True)
class Allocations:
    """Holders of the non-sale allocations (27.5 %, 2.5 % and 20 % of the supply)."""

    early_adopters: str
    bounty: str
    team: str


@dataclass(frozen=True)
class Deployment:
    """The four deployed contracts (web3 contract objects bound to their addresses)."""

    chain_id: int
    token: Contract
    sale: Contract
    channels: Contract
    anchor: Contract

    @property
    def addresses(self) -> dict[str, ChecksumAddress]:
        """Contract name → address."""
        return {
            "IPSXToken": self.token.address,
            "TokenSale": self.sale.address,
            "PaymentChannels": self.channels.address,
            "DealAnchor": self.anchor.address,
        }

    @property
    def channel_domain(self) -> ChannelDomain:
        """The EIP-712 domain that balance proofs for this deployment are signed in."""
        return ChannelDomain(chain_id=self.chain_id, verifying_contract=self.channels.address)


def contract_at(w3: Web3, name: str, address: str) -> Contract:
    """Contract ``name``'s ABI bound to ``address``."""
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load(name).abi)


def channels_domain_problem(channels: Contract) -> str | None:
    """Why the PaymentChannels contract ``channels`` would refuse the proofs and consents this
    IPSX signs (``proofs.foreign_domain``, or ``proofs.NO_DOMAIN`` for a contract without
    ``eip712Domain()``); None when it takes them. Raises as web3 does when the node fails."""
    try:
        _, name, version, *_ = channels.functions.eip712Domain().call()
    except (ContractLogicError, BadFunctionCallOutput):
        return NO_DOMAIN
    return foreign_domain(name, version)


def deploy_contract(w3: Web3, name: str, *args: Any, sender: str) -> Contract:
    """Deploys contract ``name`` with constructor ``args`` from ``sender``; waits for the receipt.

    Raises ``DeploymentError`` when the creation reverts.
    """
    artifact = load(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(*args).transact({"from": Web3.to_checksum_address(sender)})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT)
    address = receipt["contractAddress"]
    if receipt["status"] != 1 or address is None:
        raise DeploymentError(name, tx_hash.to_0x_hex())
    return contract_at(w3, name, address)


def deploy(
    w3: Web3,
    *,
    deployer: str,
    operator: str,
    sale: SaleTerms,
    allocations: Allocations,
    challenge_period: int = DEFAULT_CHALLENGE_PERIOD,
) -> Deployment:
    """Deploys the sale (which creates the token), the payment channels and the deal anchor.

    ``operator`` owns the ``DealAnchor``; every transaction is sent from ``deployer``.
    """
    checksum = Web3.to_checksum_address
    sale_contract = deploy_contract(
        w3,
        "TokenSale",
        checksum(sale.wallet),
        sale.rate,
        sale.cap,
        sale.start,
        sale.end,
        checksum(allocations.early_adopters),
        checksum(allocations.bounty),
        checksum(allocations.team),
        sender=deployer,
    )
    token = contract_at(w3, "IPSXToken", sale_contract.functions.token().call())
    channels = deploy_contract(w3, "PaymentChannels", token.address, challenge_period, sender=deployer)
    anchor = deploy_contract(w3, "DealAnchor", checksum(operator), sender=deployer)
    return Deployment(
        chain_id=w3.eth.chain_id, token=token, sale=sale_contract, channels=channels, anchor=anchor
    )
