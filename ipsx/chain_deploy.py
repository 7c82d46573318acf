"""``ipsx chain deploy``: deploy the IPSX token, sale, payment channels and deal anchor
contracts from the operator's wallet and write the deployment file the other chain commands read.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, cast

from web3 import HTTPProvider, Web3
from web3.middleware import SignAndSendRawMiddlewareBuilder
from web3.middleware.base import Web3Middleware
from web3.types import BlockData, RPCEndpoint, RPCResponse

from contracts.deploy import (
    DEFAULT_CHALLENGE_PERIOD,
    Allocations,
    Deployment,
    DeploymentError,
    SaleTerms,
    deploy,
)
from ipsx.chain_access import CONNECTION_ERRORS, RPC_TIMEOUT, operator_key, rpc_url, shown, wei_of
from ipsx.commands import UsageError

SALE_ALLOCATION: Final = 900_000_000 * 10**18  # the TokenSale's 50 % (contracts/README.md)


class _MinedContracts(Web3Middleware):
    """Reports every contract creation receipt the deployment waits for, as it arrives."""

    def __init__(self, w3: Web3, report: Callable[[str, int, str], None]) -> None:
        super().__init__(w3)
        self._report = report

    def response_processor(self, method: RPCEndpoint, response: RPCResponse) -> RPCResponse:
        receipt = response.get("result") if method == "eth_getTransactionReceipt" else None
        if isinstance(receipt, Mapping) and receipt.get("contractAddress") and receipt.get("status") == "0x1":
            self._report(
                receipt["contractAddress"], int(receipt["blockNumber"], 16), receipt["transactionHash"]
            )
        return response


def _address(text: str | None, default: str, option: str) -> str:
    if text is None:
        return default
    if not Web3.is_address(text):
        raise UsageError(f"{option} must be an Ethereum address (got {text[:60]!r})")
    return Web3.to_checksum_address(text)


def sale_terms(args: argparse.Namespace, operator: str, now: int) -> SaleTerms:
    """The sale from the options; ``now`` is the latest block's time (the default start)."""
    if args.rate < 1 or args.sale_duration < 1:
        raise UsageError("--rate and --sale-duration must be positive")
    cap = SALE_ALLOCATION // args.rate if args.cap is None else wei_of(args.cap, 10**18, "--cap", "ETH")
    if cap < 1 or cap * args.rate > SALE_ALLOCATION:
        raise UsageError("--cap times --rate must be at most the sale's 900,000,000 IPSX")
    start = now if args.sale_start is None else args.sale_start
    wallet = _address(args.sale_wallet, operator, "--sale-wallet")
    return SaleTerms(wallet=wallet, rate=args.rate, cap=cap, start=start, end=start + args.sale_duration)


def _connect(url: str) -> tuple[Web3, BlockData]:
    """A connection to the node at ``url`` and its latest block; ``UsageError`` when unreachable."""
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": RPC_TIMEOUT}, exception_retry_configuration=None))
    try:
        return w3, w3.eth.get_block("latest")
    except CONNECTION_ERRORS as error:
        raise UsageError(f"cannot reach the Ethereum node at {shown(url)}: {type(error).__name__}") from None


def deploy_command(args: argparse.Namespace) -> None:
    out: Path = args.out
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists and records a deployment; pass --force to replace it")
    try:  # before deploying: a deployment nobody recorded is money nobody watches
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {out.parent}: {error.strerror}") from None
    account = operator_key(args.key)
    challenge_period = DEFAULT_CHALLENGE_PERIOD if args.challenge_period is None else args.challenge_period
    if challenge_period < 1:
        raise UsageError("--challenge-period must be positive")
    url = rpc_url(args)
    w3, latest = _connect(url)
    operator = _address(args.operator, account.address, "--operator")
    allocations = Allocations(
        early_adopters=_address(args.early_adopters, operator, "--early-adopters"),
        bounty=_address(args.bounty, operator, "--bounty"),
        team=_address(args.team, operator, "--team"),
    )
    sale = sale_terms(args, operator, int(latest["timestamp"]))
    mined: list[int] = []

    def report(address: str, block: int, tx_hash: str) -> None:
        mined.append(block)
        print(
            f"  mined: contract {Web3.to_checksum_address(address)} in block {block} (tx {tx_hash})",
            flush=True,
        )

    w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
    w3.middleware_onion.add(cast("type[Web3Middleware]", functools.partial(_MinedContracts, report=report)))
    print(f"deploying from {account.address} to chain {w3.eth.chain_id} at {shown(url)}", flush=True)
    try:
        deployment = deploy(
            w3,
            deployer=account.address,
            operator=operator,
            sale=sale,
            allocations=allocations,
            challenge_period=challenge_period,
        )
    except DeploymentError as error:
        raise UsageError(str(error)) from None
    except CONNECTION_ERRORS as error:
        raise UsageError(f"deployment failed: {error}") from None
    record = deployment_record(
        deployment,
        block=min(mined, default=int(latest["number"]) + 1),
        deployer=account.address,
        operator=operator,
        challenge_period=challenge_period,
        sale=sale,
        allocations=allocations,
    )
    _write(out, record)
    for name, address in deployment.addresses.items():
        print(f"{name:<16} {address}")
    print(f"deployment recorded in {out}")


def deployment_record(
    deployment: Deployment,
    *,
    block: int,
    deployer: str,
    operator: str,
    challenge_period: int,
    sale: SaleTerms,
    allocations: Allocations,
) -> dict[str, Any]:
    """What a deployment file holds (:class:`DeploymentFile` reads it back)."""
    return {
        "chain_id": deployment.chain_id,
        "block": block,
        "deployer": deployer,
        "operator": operator,
        "challenge_period": challenge_period,
        "contracts": dict(deployment.addresses),
        "sale": {"wallet": sale.wallet, "rate": sale.rate, "cap": str(sale.cap), "start": sale.start,
                 "end": sale.end},
        "allocations": {"early_adopters": allocations.early_adopters, "bounty": allocations.bounty,
                        "team": allocations.team},
        "deployed_at": int(time.time()),
    }  # fmt: skip


def _write(out: Path, record: dict[str, Any]) -> None:
    """Writes ``record`` to ``out`` whole or not at all (through a temporary file)."""
    try:
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.replace(out)
    except OSError as error:
        print(json.dumps(record["contracts"], indent=2), file=sys.stderr)
        raise UsageError(f"deployed, but cannot write {out}: {error.strerror}") from None
