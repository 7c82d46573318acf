"""The chain commands: ``ipsx chain deploy``, ``ipsx chain watch``, ``ipsx chain anchor``,
``ipsx reconcile`` (the operator's) and ``ipsx verify`` (anyone's: a deal's anchor proof).

They share a deployment file (JSON, default ``.ipsx/chain.json``) that ``deploy`` writes: the
chain id, the block the deployment started in (the watcher's start block), the operator and the
contract addresses. The operator's key comes from a key file (``--key``) or ``IPSX_OPERATOR_KEY``
(hex), never from the command line, and is never printed. The RPC URL is shown as scheme, host
and port only, since providers put API keys in its path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote, urlsplit

import aiohttp
import asyncpg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncHTTPProvider, AsyncWeb3, HTTPProvider, Web3
from web3.exceptions import ContractLogicError, Web3Exception
from web3.middleware import SignAndSendRawMiddlewareBuilder
from web3.middleware.base import Web3Middleware
from web3.types import BlockData, RPCEndpoint, RPCResponse

from billing import db
from billing.anchoring import Anchorer, AnchorError, AnchorSettings, DealRecord
from billing.chain import ChainSettings, ChainWatcher, DeepReorg
from billing.reconcile import Report, format_report, reconcile
from contracts import load, merkle
from contracts.deploy import (
    DEFAULT_CHALLENGE_PERIOD,
    Allocations,
    Deployment,
    DeploymentError,
    SaleTerms,
    deploy,
)
from gateway.agent.settings import load_key
from ipsx import runtime
from ipsx.commands import UsageError
from ipsx.settings import Environment

log = logging.getLogger(__name__)

SECONDS: Final = 1
DEFAULT_RPC_URL: Final = "http://127.0.0.1:8545"
RPC_TIMEOUT: Final = 30 * SECONDS
SALE_ALLOCATION: Final = 900_000_000 * 10**18  # the TokenSale's 50 % (contracts/README.md)
EXIT_DEEP_REORG: Final = 3  # `ipsx chain watch` stopped because the chain reorganised too deep
EXIT_ANCHOR_CONFLICT: Final = 3  # `ipsx chain anchor` stopped: the chain and the database disagree
CONTRACTS: Final = ("IPSXToken", "TokenSale", "PaymentChannels", "DealAnchor")
_CONNECTION_ERRORS: Final = (OSError, aiohttp.ClientError, TimeoutError, Web3Exception)


def quiet_providers(args: argparse.Namespace) -> None:
    """web3's providers log the full RPC URL (API key included) at INFO: keep that for -v."""
    if not args.verbose:
        logging.getLogger("web3.providers").setLevel(logging.WARNING)


def cmd_chain(args: argparse.Namespace, env: Environment) -> None:
    quiet_providers(args)
    if args.action == "deploy":
        deploy_command(args)
    elif args.action == "anchor":
        anchor_command(args, env)
    else:
        watch_command(args, env)


# ---- shared edges: the key, the node, the deployment file, the database -------------------------


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
        except _CONNECTION_ERRORS as error:
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
        yield w3
    finally:
        await w3.provider.disconnect()


async def open_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    """The migrated database (``IPSX_DATABASE_URL``); ``UsageError`` when it cannot be opened.
    The message never shows the URL, which may hold a password."""
    try:
        return await db.open_migrated(dsn, max_size=max_size)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise UsageError(f"cannot open the database (IPSX_DATABASE_URL): {error}") from None


# ---- ipsx chain deploy ---------------------------------------------------------------------------


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


def _wei(text: str, option: str) -> int:
    """``text`` ETH (decimal, at most 18 places) in wei."""
    try:
        value = Decimal(text) * 10**18
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value <= 0 or value != value.to_integral_value():
        raise UsageError(f"{option} must be a positive amount of ETH, e.g. 1000 or 0.5 (got {text[:40]!r})")
    return int(value)


def sale_terms(args: argparse.Namespace, operator: str, now: int) -> SaleTerms:
    """The sale from the options; ``now`` is the latest block's time (the default start)."""
    if args.rate < 1 or args.sale_duration < 1:
        raise UsageError("--rate and --sale-duration must be positive")
    cap = SALE_ALLOCATION // args.rate if args.cap is None else _wei(args.cap, "--cap")
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
    except _CONNECTION_ERRORS as error:
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
    except _CONNECTION_ERRORS as error:
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


# ---- ipsx chain watch ----------------------------------------------------------------------------


def watch_command(args: argparse.Namespace, env: Environment) -> None:
    record = DeploymentFile.load(args.deployment)
    account = operator_key(args.key)
    if account.address != Web3.to_checksum_address(record.operator):
        raise UsageError(
            f"the key is {account.address}'s but {record.path} names {record.operator} as the operator"
        )
    if args.confirmations < 0 or args.poll <= 0 or args.db_pool < 1:
        raise UsageError("--confirmations must be >= 0, --poll and --db-pool positive")
    url = rpc_url(args)
    settings = ChainSettings(
        channels_address=record.channels,
        operator_key="0x" + account.key.hex(),
        rpc_url=url,
        confirmations=args.confirmations,
        poll_interval=args.poll,
        start_block=record.block,
    )
    stopped: list[DeepReorg] = []

    async def main(stop: asyncio.Event) -> None:
        async with node(url, record):
            pass  # only its checks: the watcher makes its own connection
        pool = await open_pool(env.database, args.db_pool)
        try:
            async with ChainWatcher(pool, settings) as watcher:
                log.info(
                    "watching PaymentChannels %s on chain %d from block %d, %d confirmations, operator %s",
                    record.channels, record.chain_id, record.block, args.confirmations, watcher.operator,
                )  # fmt: skip
                try:
                    await watcher.run(stop)
                except DeepReorg as reorg:
                    stopped.append(reorg)
                else:
                    log.info("chain watcher stopped")
        finally:
            await pool.close()

    runtime.run(main)
    if stopped:
        print(
            f"ipsx chain watch: stopped, the chain was reorganised deeper than the confirmations: "
            f"{stopped[0]}. Check the books with `ipsx reconcile` before starting it again.",
            file=sys.stderr,
        )
        sys.exit(EXIT_DEEP_REORG)


# ---- ipsx reconcile ------------------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace, env: Environment) -> None:
    quiet_providers(args)
    record = DeploymentFile.load(args.deployment)
    url = rpc_url(args)
    if args.block is not None and args.block < 0:
        raise UsageError("--block must be >= 0")

    async def go() -> Report:
        async with node(url, record) as w3:
            pool = await open_pool(env.database, 2)
            try:
                return await reconcile(
                    pool, w3, record.channels, record.token, block=args.block, anchor_address=record.anchor
                )
            except _CONNECTION_ERRORS as error:
                raise UsageError(f"reading the chain at {shown(url)} failed: {error}") from None
            finally:
                await pool.close()

    report = asyncio.run(go())
    print(format_report(report))
    if not report.ok:
        sys.exit(1)


# ---- ipsx chain anchor ---------------------------------------------------------------------------


def anchor_command(args: argparse.Namespace, env: Environment) -> None:
    record = DeploymentFile.load(args.deployment)
    account = operator_key(args.key)
    if args.interval <= 0 or args.max_batch < 1 or args.db_pool < 1:
        raise UsageError("--interval, --max-batch and --db-pool must be positive")
    if args.confirmations < 0:
        raise UsageError("--confirmations must be >= 0")
    url = rpc_url(args)
    settings = AnchorSettings(
        anchor_address=record.anchor,
        operator_key="0x" + account.key.hex().removeprefix("0x"),
        rpc_url=url,
        interval=args.interval,
        max_batch=args.max_batch,
        confirmations=args.confirmations,
    )
    stopped: list[AnchorError] = []

    async def main(stop: asyncio.Event) -> None:
        async with node(url, record):
            pass  # only its checks: the anchorer makes its own connection
        pool = await open_pool(env.database, args.db_pool)
        try:
            async with Anchorer(pool, settings) as anchorer:
                owner = await anchorer.owner()
                if owner != anchorer.operator:
                    raise UsageError(
                        f"DealAnchor {record.anchor} is owned by {owner}, not by the key's {account.address}"
                    )
                log.info("anchoring to DealAnchor %s every %s s, %d deals per batch at most, "
                         "%d confirmations", record.anchor, args.interval, args.max_batch,
                         args.confirmations)  # fmt: skip
                try:
                    poll = min(args.interval, _CONFIRMATION_POLL)
                    await (_anchor_once(anchorer, stop, poll) if args.once else anchorer.run(stop))
                except AnchorError as error:
                    stopped.append(error)
        except _CONNECTION_ERRORS as error:
            raise UsageError(f"anchoring failed: {type(error).__name__}: {error}") from None
        finally:
            await pool.close()

    runtime.run(main)
    if stopped:
        print(f"ipsx chain anchor: stopped: {stopped[0]}", file=sys.stderr)
        sys.exit(EXIT_ANCHOR_CONFLICT)


_CONFIRMATION_POLL = 2.0  # seconds between looks at the chain while a batch gets its confirmations


async def _anchor_once(anchorer: Anchorer, stop: asyncio.Event, poll: float) -> None:
    batch = await anchorer.anchor_once()
    shown: int | None = None
    while batch is not None and not batch.anchored and not stop.is_set():
        if batch.mined_in != shown:
            shown = batch.mined_in
            print(f"batch {batch.batch_id} mined in block {batch.mined_in}, tx {batch.tx_hash}: "
                  "waiting for its confirmations", flush=True)  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)
        batch = await anchorer.anchor_once()
    if batch is not None and not batch.anchored:
        print(f"stopped before batch {batch.batch_id} had its confirmations; the next run records it")
    elif batch is None:
        print("nothing to anchor (no settled deal outside a batch, or another anchorer is at work)")
    else:
        print(f"batch {batch.batch_id} anchored: {batch.record_count} deals, root {batch.root}, "
              f"tx {batch.tx_hash}")  # fmt: skip


# ---- ipsx verify ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The checks ``ipsx verify`` made, in order: (passed, what, detail)."""

    checks: list[tuple[bool, str, str]]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for passed, _, _ in self.checks)

    def add(self, passed: bool, what: str, detail: str) -> bool:
        self.checks.append((passed, what, detail))
        return passed


def cmd_verify(args: argparse.Namespace, env: Environment) -> None:
    quiet_providers(args)
    deployment = None if args.deployment is None else DeploymentFile.load(args.deployment)
    token = args.token or os.environ.get("IPSX_TOKEN")
    url = rpc_url(args)
    verdict = Verdict([])
    body = asyncio.run(_fetch_anchor(args.api, args.deal, token))
    if body is None:
        verdict.add(
            False, "anchored", "the API has no anchored batch with this deal (yet), or it is not yours"
        )
    else:
        try:
            asyncio.run(_check(body, verdict, url, deployment))
        except (KeyError, TypeError, ValueError) as error:
            verdict.add(False, "answer", f"the API's answer is not an anchor proof: {error}")
    print(f"deal {args.deal}:")
    for passed, what, detail in verdict.checks:
        print(f"  {'ok  ' if passed else 'FAIL'}  {what}: {detail}")
    if verdict.ok and body is not None:
        print(f"VERIFIED: deal {args.deal} is in batch {body['batch_id']} of DealAnchor {body['contract']}")
    else:
        print(f"NOT VERIFIED: deal {args.deal}")
        sys.exit(1)


async def _fetch_anchor(api: str, deal: str, token: str | None) -> dict[str, Any] | None:
    """The API's anchor proof of ``deal`` (``None``: 404); ``UsageError`` for any other failure."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = f"{api.rstrip('/')}/v1/deals/{quote(deal, safe='')}/anchor"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT)) as http,
            http.get(endpoint, headers=headers) as response,
        ):
            if response.status == 404:
                return None
            if response.status != 200:
                text = (await response.text())[:300]
                raise UsageError(f"the API answered {response.status}: {text}")
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise UsageError(f"cannot get the anchor proof from {shown(api)}: {type(error).__name__}") from None
    if not isinstance(body, dict):
        raise UsageError("the API's answer is not a JSON object")
    return body


def _bytes32(text: Any) -> bytes:
    value = bytes.fromhex(str(text).removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"{str(text)[:70]!r} is not 32 bytes")
    return value


async def _check(body: dict[str, Any], verdict: Verdict, url: str, deployment: DeploymentFile | None) -> None:
    """Adds to ``verdict`` the record, leaf, off-chain and on-chain checks of the API's ``body``."""
    record = DealRecord.from_json(body["record"])
    encoded = record.encode()
    same = encoded == bytes.fromhex(str(body["encoded_record"]).removeprefix("0x"))
    verdict.add(same, "record", "its fields encode to the bytes served" if same else "its fields do not "
                "encode to the bytes served")  # fmt: skip
    leaf, anchored = merkle.leaf_hash(encoded), _bytes32(body["leaf"])
    verdict.add(leaf == anchored, "leaf", f"0x{leaf.hex()}" if leaf == anchored else
                f"the record hashes to 0x{leaf.hex()}, the leaf anchored is 0x{anchored.hex()}")  # fmt: skip
    proof, root = [_bytes32(node) for node in body["proof"]], _bytes32(body["root"])
    leads = merkle.verify(root, leaf, proof)
    verdict.add(leads, "off-chain", f"the proof ({len(proof)} hashes) {'leads' if leads else 'does not lead'}"
                f" to root 0x{root.hex()}")  # fmt: skip
    address = Web3.to_checksum_address(str(body["contract"]))
    if deployment is not None and address != deployment.anchor:
        verdict.add(False, "contract", f"the API names {address}, {deployment.path} has {deployment.anchor}")
        return
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT)
    w3 = AsyncWeb3(
        AsyncHTTPProvider(url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None)
    )
    try:
        batch_id, chain_id = int(body["batch_id"]), int(body["chain_id"])
        await _check_on_chain(w3, verdict, address, chain_id, batch_id, root, leaf, proof)
    except _CONNECTION_ERRORS as error:
        raise UsageError(f"cannot read the chain at {shown(url)}: {type(error).__name__}") from None
    finally:
        await w3.provider.disconnect()


async def _check_on_chain(
    w3: AsyncWeb3[Any], verdict: Verdict, address: str, chain_id: int, batch_id: int, root: bytes,
    leaf: bytes, proof: list[bytes],
) -> None:  # fmt: skip
    on = await w3.eth.chain_id
    if not verdict.add(
        on == chain_id, "chain", f"chain {on}" + ("" if on == chain_id else f", the API says {chain_id}")
    ):
        return
    anchor = w3.eth.contract(address=Web3.to_checksum_address(address), abi=load("DealAnchor").abi)
    try:
        chain_root = bytes((await anchor.functions.getBatch(batch_id).call())[0])
        included = bool(await anchor.functions.verify(batch_id, leaf, proof).call())
    except ContractLogicError:
        verdict.add(False, "on-chain", f"DealAnchor {address} has no batch {batch_id}")
        return
    verdict.add(
        chain_root == root,
        "batch root",
        f"DealAnchor {address} batch {batch_id} has root 0x{chain_root.hex()}",
    )
    verdict.add(
        included, "on-chain", f"DealAnchor.verify(batch {batch_id}, leaf, proof) = {str(included).lower()}"
    )
