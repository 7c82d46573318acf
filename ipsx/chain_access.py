"""What the chain commands share: the deployment file, the operator's key and the node.

They share a deployment file (JSON, default ``.ipsx/chain.json``) that ``deploy`` writes: the
chain id, the block the deployment started in (the watcher's start block), the operator and the
contract addresses. The operator's key comes from a key file (``--key``) or ``IPSX_OPERATOR_KEY``
(hex), never from the command line, and is never printed. The RPC URL is shown as scheme, host
and port only, since providers put API keys in its path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncHTTPProvider, AsyncWeb3, Web3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError, Web3Exception

from contracts import load, proofs
from gateway.agent.settings import load_key
from ipsx.commands import UsageError

SECONDS: Final = 1
DEFAULT_RPC_URL: Final = "http://127.0.0.1:8545"
RPC_TIMEOUT: Final = 30 * SECONDS
CONTRACTS: Final = ("IPSXToken", "TokenSale", "PaymentChannels", "DealAnchor")
CONNECTION_ERRORS: Final = (OSError, aiohttp.ClientError, TimeoutError, Web3Exception)

log = logging.getLogger(__name__)


def wei_of(text: str, scale: int, option: str, unit: str) -> int:
    """``text``, a decimal number of ``unit`` (``ETH``: ``scale`` 10**18, ``gwei``: 10**9), in
    wei; raises UsageError unless that is a positive whole number."""
    try:
        value = Decimal(text) * scale
    except InvalidOperation:
        raise UsageError(f"{option}: not a number of {unit}: {text[:40]!r}") from None
    if not value.is_finite() or value < 1 or value != value.to_integral_value():
        raise UsageError(f"{option}: {text[:40]!r} is not a positive whole number of wei")
    return int(value)


def quiet_providers(args: argparse.Namespace) -> None:
    """web3's providers log the full RPC URL (API key included) at INFO: keep that for -v."""
    if not args.verbose:
        logging.getLogger("web3.providers").setLevel(logging.WARNING)


def operator_key(key_file: Path | None) -> LocalAccount:
    """The operator's wallet from ``key_file`` or else ``IPSX_OPERATOR_KEY``; raises
    ``UsageError`` (naming where the key was looked for, never the key) when there is none or
    it is not a key."""
    if key_file is not None:
        try:
            return load_key(key_file, os.environ.get("IPSX_KEY_PASSWORD"))
        except (OSError, ValueError) as error:
            raise UsageError(
                f"cannot load the operator key from {key_file}: {type(error).__name__}"
            ) from None
    text = os.environ.get("IPSX_OPERATOR_KEY", "").strip()
    if not text:
        raise UsageError("no operator key: set IPSX_OPERATOR_KEY (hex private key) or pass --key FILE")
    try:
        return cast(LocalAccount, Account.from_key(text))
    except ValueError:
        raise UsageError("IPSX_OPERATOR_KEY is not a hex private key (32 bytes)") from None


def rpc_url(args: argparse.Namespace) -> str:
    url: str = args.rpc or os.environ.get("IPSX_RPC_URL") or DEFAULT_RPC_URL
    if urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"--rpc must be an http:// or https:// URL (got {shown(url)!r})")
    return url


def shown(url: str) -> str:
    """``url`` without credentials, path or query (RPC providers put API keys there)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}" if parts.scheme else url[:40]


@dataclass(frozen=True, slots=True)
class DeploymentFile:
    """What ``ipsx chain deploy`` recorded: enough for the watcher and reconciliation."""

    path: Path
    chain_id: int
    block: int  # the first block of the deployment: nothing of it happened before
    operator: str
    contracts: dict[str, str]

    @property
    def channels(self) -> str:
        return self.contracts["PaymentChannels"]

    @property
    def token(self) -> str:
        return self.contracts["IPSXToken"]

    @property
    def anchor(self) -> str:
        return self.contracts["DealAnchor"]

    @classmethod
    def load(cls, path: Path) -> DeploymentFile:
        """Raises ``UsageError`` when the file is missing, unreadable or not a deployment."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"no deployment file {path}: run `ipsx chain deploy` first") from None
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot read the deployment file {path}: {error}") from None
        try:
            contracts = {name: str(Web3.to_checksum_address(data["contracts"][name])) for name in CONTRACTS}
            record = cls(path, int(data["chain_id"]), int(data["block"]), data["operator"], contracts)
            Web3.to_checksum_address(record.operator)
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(
                f"{path} is not a deployment file written by `ipsx chain deploy` ({error})"
            ) from None
        return record


@contextlib.asynccontextmanager
async def node(url: str, record: DeploymentFile) -> AsyncIterator[AsyncWeb3[Any]]:
    """A connection to the node at ``url``, checked to be on the deployment's chain with its
    PaymentChannels contract; raises ``UsageError`` otherwise."""
    w3 = AsyncWeb3(
        AsyncHTTPProvider(
            url,
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=RPC_TIMEOUT)},
            exception_retry_configuration=None,
        )
    )
    try:
        try:
            chain_id = await w3.eth.chain_id
            code = await w3.eth.get_code(Web3.to_checksum_address(record.channels))
        except CONNECTION_ERRORS as error:
            raise UsageError(
                f"cannot reach the Ethereum node at {shown(url)}: {type(error).__name__}"
            ) from None
        if chain_id != record.chain_id:
            raise UsageError(
                f"the node at {shown(url)} is on chain {chain_id}, {record.path} on chain {record.chain_id}"
            )
        if not code:
            raise UsageError(
                f"no contract at {record.channels} on the node at {shown(url)} "
                f"(the chain was reset since {record.path} was written?)"
            )
        await _check_channels_domain(w3, url, record)
        yield w3
    finally:
        await w3.provider.disconnect()


async def channels_domain(w3: AsyncWeb3[Any], url: str, record: DeploymentFile) -> tuple[str, str | None]:
    """The EIP-712 domain name of the PaymentChannels contract of ``record``, and why it refuses
    the proofs and consents this IPSX signs (None when it takes them); raises ``UsageError`` when
    the node cannot be reached."""
    channels = w3.eth.contract(
        address=Web3.to_checksum_address(record.channels), abi=load("PaymentChannels").abi
    )
    try:
        _, name, version, *_ = await channels.functions.eip712Domain().call()
        return name, proofs.foreign_domain(name, version)
    except (ContractLogicError, BadFunctionCallOutput):
        return "", proofs.NO_DOMAIN
    except CONNECTION_ERRORS as error:
        raise UsageError(f"cannot reach the Ethereum node at {shown(url)}: {type(error).__name__}") from None


async def _check_channels_domain(w3: AsyncWeb3[Any], url: str, record: DeploymentFile) -> None:
    """Raises ``UsageError`` unless the PaymentChannels contract of ``record`` is an IPSX one
    (its EIP-712 domain's name is ours). One of another version (``contracts.proofs``) refuses
    the proofs and consents this IPSX signs, but the channels open on it still need watching (a
    stale close countered, deposits and settlements booked): a warning says so, and the
    command runs."""
    name, why = await channels_domain(w3, url, record)
    if why is None:
        return
    contract = f"the PaymentChannels contract {record.channels} on the node at {shown(url)}"
    if name != proofs.DOMAIN_NAME:
        raise UsageError(f"{contract} is no IPSX PaymentChannels: {why}")
    log.warning(
        "%s cannot take the proofs and consents this IPSX signs: %s; deploy this IPSX's contracts "
        "(`ipsx chain deploy --out FILE`) and have the channels reopened there",
        contract,
        why,
    )
