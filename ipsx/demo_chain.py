"""The demo's chain: a local node with its state in the data dir, the IPSX contracts deployed on
it, and the demo requester's payment channel to the operator.

The node is anvil when ``make setup`` installed it, else ``ipsx devchain`` (eth-tester, in its own
process): both serve JSON-RPC on a loopback port, mine a block per transaction and hold anvil's
development accounts, so everything after the start is the same. A data dir keeps the node it
started with (its state file says which).

The chain lives as long as the data dir, like the embedded PostgreSQL whose ledger mirrors it:
the node loads ``<data-dir>/chain/<node>-state`` when it starts and writes it back when it stops,
so a second run finds the contracts of ``<data-dir>/chain.json`` and the channel it opened.
Nothing here is faked: the deposit reaches the ledger through the chain watcher, and invoices are
paid with balance proofs the contract would honour.

The sync parts (:func:`prepare`) use web3's HTTP provider; call them in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import asyncpg
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import Web3Exception
from web3.logs import DISCARD
from web3.middleware import SignAndSendRawMiddlewareBuilder
from web3.types import Wei

from billing import channels
from billing.chain import ChainSettings, ChainWatcher, DeepReorg
from contracts import PACKAGE_DIR
from contracts.deploy import (
    Allocations,
    DeploymentError,
    SaleTerms,
    channels_domain_problem,
    contract_at,
    deploy,
)
from gateway.agent.settings import create_key_file, load_key
from ipsx.chain_deploy import deployment_record
from ipsx.payagent import PaymentAgent
from ipsx.sdk import ApiError, Client

log = logging.getLogger("ipsx.demo")

ChainChoice = Literal["auto", "anvil", "devchain"]

SECONDS: Final = 1.0
IPSX: Final = 10**18
ETHER: Final = 10**18
DEMO_DEPOSIT: Final = 1000 * IPSX  # what the demo requester locks in its channel
PAYOUT_DEPOSIT: Final = 10 * IPSX  # what the operator locks in its payout channel to each provider
CHALLENGE_PERIOD: Final = 3600  # seconds
NODE_START_TIMEOUT: Final = 30 * SECONDS
STATE_FILES: Final = {"anvil": "anvil-state.json", "devchain": "devchain-state.bin"}  # in <data-dir>/chain
RECEIPT_TIMEOUT: Final = 30 * SECONDS
SALE_RATE: Final = 1000  # IPSX base units per wei; the demo sale is over before anyone buys
SALE_ALLOCATION: Final = 900_000_000 * IPSX
WATCH_INTERVAL: Final = 0.5 * SECONDS
PAY_INTERVAL: Final = 0.5 * SECONDS


class ChainUnavailable(RuntimeError):
    """The demo cannot pay on-chain; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class DemoChain:
    """What the demo's API, chain watcher and payment agent need to know about its chain."""

    rpc_url: str
    chain_id: int
    start_block: int  # the deployment's first block: where the watcher starts
    operator: str
    contracts: dict[str, str]
    channel_id: str  # the demo requester's channel to the operator
    payout_channels: dict[str, str]  # provider address -> the operator's payout channel to it
    deployment_file: Path
    operator_key: str = field(repr=False)  # 0x-hex
    deployed: bool = False  # by this run (else by an earlier one)
    opened: bool = False  # the channel, by this run

    @property
    def channels(self) -> str:
        return self.contracts["PaymentChannels"]


@dataclass(frozen=True, slots=True)
class ChainNode:
    """A local node the demo runs: ``command`` takes ``--host``, ``--port`` and ``--state`` as
    anvil does and prints ``Listening on HOST:PORT``; ``options`` follow them."""

    name: str
    command: list[str]
    state_file: str  # in the chain dir
    options: tuple[str, ...] = ()


def anvil_command() -> list[str] | None:
    """The anvil of ``make setup`` (the npm package's platform binary, else its node wrapper);
    ``None`` when it is not installed."""
    binaries = sorted((PACKAGE_DIR / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))
    if binaries:
        return [str(binaries[0])]
    wrapper = PACKAGE_DIR / "node_modules" / ".bin" / "anvil"
    return [str(wrapper)] if wrapper.exists() else None


def devchain_node() -> ChainNode:
    """``ipsx devchain`` in a child process that ends with this one, even when this one is killed."""
    command = [sys.executable, "-m", "ipsx.devchain"]
    return ChainNode("devchain", command, STATE_FILES["devchain"], ("--exit-with-parent",))


def choose_node(workdir: Path, anvil: list[str] | None, want: ChainChoice = "auto") -> ChainNode:
    """The node of the chain kept in ``workdir``: the one whose state is there, else the one
    ``want`` names, else (``auto``) anvil when installed (``anvil`` is its command, ``None``
    when it is not) and the devchain when not.

    Raises ``ChainUnavailable`` when ``workdir`` holds the other node's chain, or anvil is
    needed and not installed.
    """
    kept = next((name for name, file in STATE_FILES.items() if (workdir / file).exists()), None)
    if kept is not None and want not in ("auto", kept):
        raise ChainUnavailable(
            f"this data dir's chain runs on {kept}; for {want}, give --data-dir a new directory"
            " (or remove this one)"
        )
    name = kept or (want if want != "auto" else "devchain" if anvil is None else "anvil")
    if name == "devchain":
        return devchain_node()
    if anvil is None:
        which = "this data dir's chain runs on anvil, which" if kept else "anvil"
        raise ChainUnavailable(f"{which} is not installed (`make setup` installs it)")
    return ChainNode("anvil", anvil, STATE_FILES["anvil"])


@contextlib.asynccontextmanager
async def running_node(node: ChainNode, workdir: Path) -> AsyncIterator[str]:
    """Run ``node`` on a free loopback port with its state in ``workdir``; yields its RPC URL.

    The node runs in its own session, so a Ctrl-C in the terminal reaches the demo only, and the
    demo stops it (SIGTERM: it writes its state) after everything that uses it. Raises
    ``ChainUnavailable`` when it does not start.
    """
    log_path = workdir / f"{node.name}.log"
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    with await asyncio.to_thread(log_path.open, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *node.command,
            "--host", "127.0.0.1", "--port", "0", "--state", str(workdir / node.state_file), *node.options,
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"}, start_new_session=True,
        )  # fmt: skip
    try:
        yield await _node_url(node.name, proc, log_path)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10 * SECONDS)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _node_url(name: str, proc: asyncio.subprocess.Process, log_path: Path) -> str:
    deadline = time.monotonic() + NODE_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise ChainUnavailable(f"{name} exited with status {proc.returncode} (see {log_path})")
        text = await asyncio.to_thread(log_path.read_text, errors="replace")
        match = re.search(r"Listening on ([\d.]+):(\d+)", text)
        if match:
            return f"http://{match[1]}:{match[2]}"
        await asyncio.sleep(0.05)
    raise ChainUnavailable(f"{name} did not start within {NODE_START_TIMEOUT:.0f} s (see {log_path})")


def _wallet(path: Path) -> LocalAccount:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        create_key_file(path)
    return load_key(path, None)


def _write(path: Path, record: dict[str, Any]) -> None:
    """Writes ``record`` whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)


def prepare(rpc_url: str, data_dir: Path, requester: LocalAccount, providers: list[str]) -> DemoChain:
    """The demo's deployment, the requester's channel to the operator and the operator's payout
    channels to the ``providers`` on the node at ``rpc_url``: those an earlier run recorded in
    ``<data-dir>/chain.json``, else deployed and opened now.

    Raises ``ChainUnavailable`` when the node cannot be used, or no longer has the contracts
    recorded (its state was lost while the ledger kept what happened on it).
    """
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": RECEIPT_TIMEOUT}))
    operator = _wallet(data_dir / "wallets" / "operator.key")
    w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build([operator, requester]), layer=0)
    path = data_dir / "chain.json"
    try:
        deployed = not path.exists()
        record = _deploy(w3, operator, path) if deployed else _recorded(w3, path)
        channel = record.get("demo_channel", {})
        opened = channel.get("sender") != requester.address
        if opened:
            channel = {
                "sender": requester.address,
                "channel_id": _open_channel(w3, record, operator, requester),
            }
            record["demo_channel"] = channel
        payouts: dict[str, str] = record.setdefault("demo_payouts", {})
        for provider in providers:
            if provider not in payouts:
                payouts[provider] = _open_payout(w3, record, operator, provider)
        _write(path, record)
    except (Web3Exception, OSError, DeploymentError) as error:
        raise ChainUnavailable(f"the demo chain failed: {type(error).__name__}: {error}") from None
    return DemoChain(
        rpc_url=rpc_url,
        chain_id=int(record["chain_id"]),
        start_block=int(record["block"]),
        operator=record["operator"],
        contracts=dict(record["contracts"]),
        channel_id=str(channel["channel_id"]),
        payout_channels={p: payouts[p] for p in providers},
        deployment_file=path,
        operator_key="0x" + operator.key.hex().removeprefix("0x"),
        deployed=deployed,
        opened=opened,
    )


def _recorded(w3: Web3, path: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(path.read_text())
    channels_address = Web3.to_checksum_address(record["contracts"]["PaymentChannels"])
    if w3.eth.chain_id != int(record["chain_id"]) or not w3.eth.get_code(channels_address):
        raise ChainUnavailable(
            f"the demo chain no longer has the contracts of {path} (its state in "
            f"{path.parent / 'chain'} was lost), while the ledger remembers them; "
            "remove the data dir to start afresh"
        )
    why = channels_domain_problem(contract_at(w3, "PaymentChannels", channels_address))
    if why is not None:
        raise ChainUnavailable(
            f"the demo chain of {path} has a PaymentChannels contract this IPSX cannot use ({why}); "
            "remove the data dir to start afresh"
        )
    return record


def _send(w3: Web3, call: Any, sender: str) -> Any:
    tx = call.transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=RECEIPT_TIMEOUT)
    if receipt["status"] != 1:
        raise ChainUnavailable(f"a demo transaction reverted (tx {tx.to_0x_hex()})")
    return receipt


def _fund_gas(w3: Web3, address: str) -> None:
    """Ether for gas from the node's first (unlocked) account: anvil's, or the devchain's same one."""
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": address, "value": Wei(10 * ETHER)})
    w3.eth.wait_for_transaction_receipt(tx, timeout=RECEIPT_TIMEOUT)


def _deploy(w3: Web3, operator: LocalAccount, path: Path) -> dict[str, Any]:
    """Deploys the contracts with ``operator`` as deployer, operator and holder of every
    allocation, its sale already over and finalized so tokens move; records them at ``path``."""
    _fund_gas(w3, operator.address)
    latest = w3.eth.get_block("latest")
    now = int(latest["timestamp"])
    # A sale that ended a minute ago: nobody bought, finalizing unlocks transfers at once.
    sale = SaleTerms(
        wallet=operator.address,
        rate=SALE_RATE,
        cap=SALE_ALLOCATION // SALE_RATE,
        start=now - 120,
        end=now - 60,
    )
    allocations = Allocations(early_adopters=operator.address, bounty=operator.address, team=operator.address)
    deployment = deploy(
        w3,
        deployer=operator.address,
        operator=operator.address,
        sale=sale,
        allocations=allocations,
        challenge_period=CHALLENGE_PERIOD,
    )
    _send(w3, deployment.sale.functions.finalize(), operator.address)
    # The format of `ipsx chain deploy`, so `ipsx reconcile --deployment` reads it.
    record = deployment_record(
        deployment,
        block=int(latest["number"]) + 1,
        deployer=operator.address,
        operator=operator.address,
        challenge_period=CHALLENGE_PERIOD,
        sale=sale,
        allocations=allocations,
    )
    _write(path, record)
    return record


def _open_channel(w3: Web3, record: dict[str, Any], operator: LocalAccount, requester: LocalAccount) -> str:
    """The operator gives the requester ``DEMO_DEPOSIT`` IPSX and gas; the requester approves
    and opens a channel to the operator with all of it. Returns the channel id (0x-hex)."""
    token = contract_at(w3, "IPSXToken", record["contracts"]["IPSXToken"])
    contract = contract_at(w3, "PaymentChannels", record["contracts"]["PaymentChannels"])
    _fund_gas(w3, requester.address)
    _send(w3, token.functions.transfer(requester.address, DEMO_DEPOSIT), operator.address)
    _send(w3, token.functions.approve(contract.address, DEMO_DEPOSIT), requester.address)
    receipt = _send(w3, contract.functions.open(record["operator"], DEMO_DEPOSIT), requester.address)
    (opened,) = contract.events.ChannelOpened().process_receipt(receipt, errors=DISCARD)
    return "0x" + bytes(opened["args"]["channelId"]).hex()


# ---- while the demo runs: the chain watcher and the requester's payment agent -------------------


@contextlib.asynccontextmanager
async def running_watcher(pool: asyncpg.Pool, chain: DemoChain) -> AsyncIterator[None]:
    """The operator's chain watcher, polling every half second until the block ends.

    No confirmations: the node is a single local one that mines a block per transaction, so
    nothing reorganises it, and with one confirmation a channel's last event would wait for
    somebody's next transaction.
    """
    settings = ChainSettings(
        channels_address=chain.channels,
        operator_key=chain.operator_key,
        rpc_url=chain.rpc_url,
        confirmations=0,
        poll_interval=WATCH_INTERVAL,
        start_block=chain.start_block,
    )
    stop = asyncio.Event()
    async with ChainWatcher(pool, settings) as watcher:
        task = asyncio.create_task(_watch(watcher, stop))
        try:
            yield
        finally:
            stop.set()
            await task


async def _watch(watcher: ChainWatcher, stop: asyncio.Event) -> None:
    try:
        await watcher.run(stop)
    except DeepReorg as reorg:
        print(f"chain watcher stopped: {reorg}", flush=True)


async def credited_deposit(pool: asyncpg.Pool, channel_id: str, within: float = 30 * SECONDS) -> int | None:
    """The deposit of the channel once the watcher applied its opening (base units); ``None``
    when it did not ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        channel = await channels.get(pool, channel_id)
        if channel is not None:
            return int(channel.deposit)
        await asyncio.sleep(0.1)
    return None


@contextlib.asynccontextmanager
async def running_payment_agent(api_url: str, secret: str, wallet: LocalAccount) -> AsyncIterator[None]:
    """The demo requester's payment agent (sync, as ``ipsx pay`` runs it) in a thread: it pays
    every invoice, within the whole deposit, and says so."""
    # Its store in memory: a demo restarted on the kept chain finds its channel's proofs signed
    # by this same wallet, which the agent checks instead.
    agent = PaymentAgent(
        Client(api_url, token=secret), wallet, max_invoice=DEMO_DEPOSIT, budget=DEMO_DEPOSIT, store=None
    )
    stop = threading.Event()
    task = asyncio.create_task(asyncio.to_thread(_pay_loop, agent, stop))
    try:
        yield
    finally:
        stop.set()
        await task


def _pay_loop(agent: PaymentAgent, stop: threading.Event) -> None:
    while not stop.wait(PAY_INTERVAL):
        try:
            result = agent.pay_once()
        except (ApiError, OSError, ValueError) as error:
            log.warning("payment agent: pass failed, retrying: %s", error)
            continue
        for invoice in result.paid:
            print(
                f"payment agent: paid invoice {invoice['invoice_id']} "
                f"({invoice['amount']['ipsx']} IPSX) with a balance proof of "
                f"{invoice['cumulative']['ipsx']} IPSX on channel {invoice['channel_id']}",
                flush=True,
            )
        for invoice_id, why in result.refused:
            print(f"payment agent: invoice {invoice_id} not paid: {why}", flush=True)


def _open_payout(w3: Web3, record: dict[str, Any], operator: LocalAccount, provider: str) -> str:
    """The operator opens a payout channel to ``provider`` with ``PAYOUT_DEPOSIT``; returns its id."""
    token = contract_at(w3, "IPSXToken", record["contracts"]["IPSXToken"])
    contract = contract_at(w3, "PaymentChannels", record["contracts"]["PaymentChannels"])
    _send(w3, token.functions.approve(contract.address, PAYOUT_DEPOSIT), operator.address)
    receipt = _send(w3, contract.functions.open(provider, PAYOUT_DEPOSIT), operator.address)
    (opened,) = contract.events.ChannelOpened().process_receipt(receipt, errors=DISCARD)
    return "0x" + bytes(opened["args"]["channelId"]).hex()
