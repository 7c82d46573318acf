"""``ipsx channel open|close``: a wallet's side of its payment channels, on-chain.

A requester opens a channel to the operator with IPSX (approve, then ``open``); the operator's
chain watcher credits the deposit once confirmed. To close, a requester asks the API for the
operator's consent (given once every invoice is paid; it freezes the channel at its balance until
the consent expires) and submits ``cooperativeClose`` with its own balance proof of that balance,
signed here (the contract wants the sender's signature even at balance 0, when the hub holds no
proof); a provider closes a payout channel with the operator's latest proof (kept by ``ipsx
payouts``) and its own consent, valid for :data:`OWN_CONSENT_WINDOW` of chain time.
Transactions are signed locally with the wallet of ``--key``; the node never holds it. Errors
name the node as scheme, host and port only: providers put API keys in the RPC URL's path.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3Exception
from web3.logs import DISCARD
from web3.middleware import SignAndSendRawMiddlewareBuilder

from billing.ledger import format_amount, parse_amount
from contracts import proofs
from contracts.deploy import channels_domain_problem, contract_at
from ipsx.chain_access import DeploymentFile, shown
from ipsx.sdk import Client

RECEIPT_TIMEOUT = 120.0
OWN_CONSENT_WINDOW = 60 * 60  # seconds past the chain's latest block a provider's own consent lasts


class ChannelError(Exception):
    """The channel command cannot go on; the message says why."""


def _web3(args: argparse.Namespace, wallet: LocalAccount) -> Web3:
    w3 = Web3(Web3.HTTPProvider(args.rpc, request_kwargs={"timeout": 30}))
    w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(wallet), layer=0)
    return w3


def _scrubbed(text: str, url: str) -> str:
    """``text`` without ``url``'s credentials, path or query, in case a message quotes them."""
    parts = urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.password or ""):
        if len(secret) > 1:
            text = text.replace(secret, "…")
    return text


def _node_failure(w3: Web3, what: str, error: OSError | Web3Exception | ValueError) -> ChannelError:
    """``what`` failed at the node: the error named without the node's URL path or credentials."""
    url = str(getattr(w3.provider, "endpoint_uri", ""))
    node = shown(url)
    if isinstance(error, OSError):  # requests' errors: their text quotes the URL's path, API key and all
        return ChannelError(f"{what} failed talking to the Ethereum node at {node}: {type(error).__name__}")
    # the node's own answer, e.g. insufficient funds
    said = _scrubbed(str(error), url)
    return ChannelError(f"{what} failed at the Ethereum node at {node}: {type(error).__name__}: {said}")


def _transact(w3: Web3, call: Any, wallet: LocalAccount, what: str) -> Any:
    try:
        tx = call.transact({"from": wallet.address})
        receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=RECEIPT_TIMEOUT)
    except ContractLogicError as error:
        raise ChannelError(f"{what} reverted: {error}") from None
    except (OSError, Web3Exception, ValueError) as error:
        raise _node_failure(w3, what, error) from None
    if receipt["status"] != 1:
        raise ChannelError(f"{what} failed in block {receipt['blockNumber']}")
    print(f"{what}: mined in block {receipt['blockNumber']}", flush=True)
    return receipt


def _usable_channels(w3: Web3, address: str) -> Any:
    """The PaymentChannels contract at ``address``; raises ``ChannelError`` when it signs another
    EIP-712 domain than this IPSX does (another release's deployment would refuse every proof)."""
    channels = contract_at(w3, "PaymentChannels", address)
    try:
        why = channels_domain_problem(channels)
    except (OSError, Web3Exception, ValueError) as error:
        raise _node_failure(w3, "reading the PaymentChannels contract", error) from None
    if why is not None:
        raise ChannelError(
            f"the PaymentChannels contract {address} cannot take IPSX proofs: {why}; "
            "is the deployment file of this network's current deployment?"
        )
    return channels


def open_channel(args: argparse.Namespace, wallet: LocalAccount) -> None:
    """Approve the deposit and open a channel from ``wallet`` to the operator."""
    deployment = DeploymentFile.load(args.deployment)
    amount = int(parse_amount(args.deposit))
    w3 = _web3(args, wallet)
    channels = _usable_channels(w3, deployment.channels)
    token = contract_at(w3, "IPSXToken", deployment.token)
    _transact(w3, token.functions.approve(channels.address, amount), wallet, "approve")
    receipt = _transact(w3, channels.functions.open(deployment.operator, amount), wallet, "open")
    (opened,) = channels.events.ChannelOpened().process_receipt(receipt, errors=DISCARD)
    channel_id = "0x" + bytes(opened["args"]["channelId"]).hex()
    print(f"channel {channel_id} opened to {deployment.operator} with {format_amount(amount)} IPSX")  # type: ignore[arg-type]


def close_channel(args: argparse.Namespace, api: Client, wallet: LocalAccount) -> None:
    """Close one of ``wallet``'s channels cooperatively, as its requester or its provider."""
    deployment = DeploymentFile.load(args.deployment)
    channel_id = args.channel_id.lower()
    found = [c for c in api.channels() if c["channel_id"] == channel_id]
    if not found:
        raise ChannelError(f"no open channel of yours has the id {channel_id}")
    channel = found[0]
    domain = proofs.ChannelDomain(chain_id=deployment.chain_id, verifying_contract=deployment.channels)  # type: ignore[arg-type]
    id_bytes = bytes.fromhex(channel_id[2:])
    w3 = _web3(args, wallet)
    channels = _usable_channels(w3, deployment.channels)
    chain_time = _chain_time(w3)
    if channel["role"] == "requester":
        balance, expires_at, proof, closing = requester_close(
            api.channel_consent(channel_id), id_bytes, wallet, domain
        )
        if chain_time >= expires_at:  # the next block is later: the contract would refuse it
            raise ChannelError(
                f"the operator's consent expired at {expires_at}, and the chain is at {chain_time}: "
                "ask for it again"
            )
    else:
        kept = _kept_payout(args.store, channel_id)
        balance, proof = int(kept["balance"]), kept["signature"]
        expires_at = chain_time + OWN_CONSENT_WINDOW
        closing = "0x" + proofs.sign_closing_consent(domain, id_bytes, balance, expires_at, wallet.key).hex()
    call = channels.functions.cooperativeClose(
        id_bytes, balance, expires_at, bytes.fromhex(proof[2:]), bytes.fromhex(closing[2:])
    )
    receipt = _transact(w3, call, wallet, "cooperativeClose")
    (settled,) = channels.events.ChannelSettled().process_receipt(receipt, errors=DISCARD)
    paid, refunded = int(settled["args"]["paid"]), int(settled["args"]["refunded"])
    print(
        f"channel {channel_id} closed: {format_amount(paid)} IPSX to the receiver, "  # type: ignore[arg-type]
        f"{format_amount(refunded)} IPSX back to the sender"  # type: ignore[arg-type]
    )


def requester_close(
    consent: dict[str, Any], channel: bytes, wallet: LocalAccount, domain: proofs.ChannelDomain
) -> tuple[int, int, str, str]:
    """The balance, the consent's expiry, the requester's balance proof of the balance and the
    operator's consent to submit to ``cooperativeClose`` on ``channel`` for the API's ``consent``
    (``POST /v1/channels/{id}/consent``). The requester is the channel's sender: ``wallet`` signs
    the proof itself, since the hub holds none before the first invoice is paid. The hub names the
    balance, so it must be 0 or come with the wallet's own earlier proof of it (the wallet never
    signs a balance here it did not sign for an invoice); raises ``ChannelError`` otherwise, and
    for an answer without an expiry."""
    balance = int(consent["balance"]["base_units"])
    expires_at = consent.get("expires_at")
    if not isinstance(expires_at, int) or isinstance(expires_at, bool) or expires_at < 0:
        raise ChannelError("the operator's consent names no expiry: is the API older than this client?")
    if balance != 0:
        try:
            signer = proofs.recover_balance_proof_signer(
                domain, channel, balance, bytes.fromhex(str(consent["balance_signature"])[2:])
            )
        except (ValueError, proofs.InvalidSignatureError):
            signer = None
        if signer != wallet.address:
            raise ChannelError(
                f"the operator consents to a close at {balance}, which this wallet never signed"
            )
    proof = proofs.sign_balance_proof(domain, channel, balance, wallet.key)
    return balance, expires_at, "0x" + proof.hex(), str(consent["consent_signature"])


def _chain_time(w3: Web3) -> int:
    """The latest block's timestamp; raises ``ChannelError`` when the node does not tell it."""
    try:
        return int(w3.eth.get_block("latest")["timestamp"])
    except (OSError, Web3Exception, ValueError) as error:
        raise _node_failure(w3, "reading the latest block", error) from None


def _kept_payout(store: Path, channel_id: str) -> dict[str, Any]:
    try:
        kept: dict[str, Any] = json.loads(store.read_text())[channel_id]
    except FileNotFoundError:
        raise ChannelError(f"no payout proofs kept in {store}: run `ipsx payouts` first") from None
    except KeyError:
        raise ChannelError(f"{store} holds no proof for {channel_id}: run `ipsx payouts` first") from None
    except (OSError, ValueError) as error:
        raise ChannelError(f"cannot read {store}: {error}") from None
    return kept
