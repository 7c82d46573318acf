"""The two chains the contract tests run on: anvil (a real node over RPC) and the in-process eth-tester."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.providers.eth_tester import EthereumTesterProvider

from contracts import PACKAGE_DIR, build, proofs
from contracts.build import ensure_node_modules

ANVIL_START_TIMEOUT = 30.0


@dataclass
class Chain:
    """A web3 connection plus what the tests need that differs between nodes."""

    name: str
    w3: Web3
    keys: dict[ChecksumAddress, LocalAccount] = field(repr=False)

    @property
    def accounts(self) -> list[ChecksumAddress]:
        return list(self.keys)

    @property
    def chain_id(self) -> int:
        return self.w3.eth.chain_id

    def now(self) -> int:
        """Timestamp of the latest block."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def travel(self, seconds: int) -> None:
        """Moves the clock so that the next block is at least ``seconds`` after the latest one."""
        if self.name == "anvil":
            self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        else:
            # eth-tester refuses to travel to before its pending block, which may already be later.
            pending = int(self.w3.eth.get_block("pending")["timestamp"])
            self.w3.testing.timeTravel(max(self.now() + seconds, pending))

    def next_block_at(self, timestamp: int) -> None:
        """Stamps the next block ``timestamp`` (later than the pending one on eth-tester)."""
        if self.name == "anvil":
            self.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])  # type: ignore[arg-type]
        else:
            # eth-tester mines a block a second earlier; the pending block then has the timestamp.
            self.w3.testing.timeTravel(timestamp)

    def mine_past(self, timestamp: int) -> None:
        """Mines an empty block stamped ``timestamp + 1``, so that the latest block and every later
        one are past ``timestamp`` (anvil estimates gas in the latest block's time: a call that
        reverts only in a later block is sent, and fails mined, instead of being refused)."""
        if self.name == "anvil":
            self.next_block_at(timestamp + 1)
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        else:
            self.next_block_at(timestamp + 2)

    def snapshot(self) -> Any:
        return self.w3.testing.snapshot()

    def revert(self, snapshot: Any) -> None:
        self.w3.testing.revert(snapshot)

    @contextlib.contextmanager
    def isolated(self) -> Iterator[None]:
        """Undoes every change made to the chain inside the block."""
        snapshot = self.snapshot()
        try:
            yield
        finally:
            self.revert(snapshot)

    def transact(self, fn: Any, sender: str, value: int = 0) -> Any:
        """Sends a contract call and returns its (successful) receipt."""
        tx_hash = fn.transact({"from": sender, "value": value})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        assert receipt["status"] == 1
        return receipt


def eth_tester_chain() -> Chain:
    provider = EthereumTesterProvider()
    w3 = Web3(provider)
    keys = provider.ethereum_tester.backend.account_keys
    accounts = [Account.from_key(key.to_bytes()) for key in keys]
    return Chain("eth_tester", w3, {a.address: a for a in accounts})


def anvil_binary() -> list[str]:
    """The anvil command: the platform binary of the npm package, else its node wrapper, else npx."""
    scope = PACKAGE_DIR / "node_modules" / "@foundry-rs"
    binaries = sorted(scope.glob("anvil-*/bin/anvil"))
    if binaries:
        return [str(binaries[0])]
    wrapper = PACKAGE_DIR / "node_modules" / ".bin" / "anvil"
    if wrapper.exists():
        return [str(wrapper)]
    npx = shutil.which("npx")
    if npx is None:
        raise RuntimeError("anvil is not installed: run npm ci in contracts/")
    version = json.loads((PACKAGE_DIR / "package.json").read_text())["dependencies"]["@foundry-rs/anvil"]
    return [npx, "--yes", f"@foundry-rs/anvil@{version}"]


@contextlib.contextmanager
def anvil_chain(workdir: Path) -> Iterator[Chain]:
    """Starts anvil on a free loopback port and stops it on exit."""
    ensure_node_modules()
    log_path = workdir / "anvil.log"
    config_path = workdir / "anvil.json"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*anvil_binary(), "--host", "127.0.0.1", "--port", "0", "--config-out", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    try:
        w3 = _wait_for_anvil(proc, log_path)
        keys = json.loads(config_path.read_text())["private_keys"]
        accounts = [Account.from_key(key) for key in keys]
        yield Chain("anvil", w3, {a.address: a for a in accounts})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_anvil(proc: subprocess.Popen[bytes], log_path: Path) -> Web3:
    deadline = time.monotonic() + ANVIL_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"anvil exited with {proc.returncode}: {log_path.read_text()}")
        match = re.search(r"Listening on ([\d.]+):(\d+)", log_path.read_text())
        if match:
            w3 = Web3(Web3.HTTPProvider(f"http://{match[1]}:{match[2]}", request_kwargs={"timeout": 30}))
            with contextlib.suppress(Exception):
                if w3.eth.chain_id:
                    return w3
        time.sleep(0.05)
    raise RuntimeError(f"anvil did not answer within {ANVIL_START_TIMEOUT} s: {log_path.read_text()}")


def error_selector(abi: list[dict[str, Any]], name: str) -> str:
    """The 4-byte selector (0x-hex) of custom error ``name`` in ``abi``."""
    for item in abi:
        if item["type"] == "error" and item["name"] == name:
            signature = f"{name}({','.join(i['type'] for i in item['inputs'])})"
            return "0x" + Web3.keccak(text=signature)[:4].hex()
    raise KeyError(name)


def revert_data(exc: Exception) -> str:
    """The revert data (0x-hex) carried by a failed call or transaction on either chain."""
    if isinstance(exc, ContractCustomError):
        return exc.data if isinstance(exc.data, str) else str(exc.data)
    # web3's eth-tester provider does not decode custom errors: it raises eth-tester's
    # TransactionFailed("execution reverted: b'...'") with the repr of the raw revert data.
    message = str(exc)
    prefix = "execution reverted: "
    if isinstance(exc, TransactionFailed) and message.startswith(prefix):
        raw = ast.literal_eval(message[len(prefix) :])
        if isinstance(raw, bytes):
            return "0x" + raw.hex()
    raise AssertionError(f"not a custom-error revert: {exc!r}") from exc


@contextlib.contextmanager
def reverts(contract: Any, error: str, *args: Any) -> Iterator[None]:
    """Expects the block to revert with custom error ``error`` of ``contract``'s ABI.

    With ``args``, the error's arguments must be exactly these.
    """
    selector = error_selector(contract.abi, error)
    expected = selector
    if args:
        (item,) = [i for i in contract.abi if i["type"] == "error" and i["name"] == error]
        expected += abi_encode([i["type"] for i in item["inputs"]], list(args)).hex()
    try:
        yield
    except (ContractCustomError, TransactionFailed) as exc:
        data = revert_data(exc)
        if args:
            assert data == expected, f"expected {error}{args}, got {data}"
        else:
            assert data.startswith(selector), f"expected {error} ({selector}), got {data}"
    else:
        raise AssertionError(f"expected a revert with {error}")


def events(contract: Any, name: str, receipt: Any) -> list[dict[str, Any]]:
    """The arguments of every ``name`` event that ``contract`` emitted in ``receipt``, in order."""
    return [
        dict(e["args"]) for e in getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD)
    ]


def channels_with_domain(w3: Web3, token: str, sender: str, name: str, version: str) -> str:
    """Deploys a PaymentChannels built from this tree's source with the EIP-712 domain
    (``name``, ``version``) instead of ours, on ``token``, from ``sender`` (unlocked on the node);
    returns its address. A stand-in for a deployment of another release."""
    unit = "src/PaymentChannels.sol"
    standard = build.compiler_input()
    text = standard["sources"][unit]["content"]
    ours = f'EIP712("{proofs.DOMAIN_NAME}", "{proofs.DOMAIN_VERSION}")'
    if ours not in text:
        raise AssertionError(f"PaymentChannels.sol no longer declares {ours}")
    standard["sources"][unit]["content"] = text.replace(ours, f'EIP712("{name}", "{version}")')
    standard["settings"]["outputSelection"] = {unit: {"PaymentChannels": build.OUTPUTS}}
    _, output = build.run_solc(standard)
    compiled = output["contracts"][unit]["PaymentChannels"]
    factory = w3.eth.contract(abi=compiled["abi"], bytecode="0x" + compiled["evm"]["bytecode"]["object"])
    tx_hash = factory.constructor(token, 600).transact({"from": sender})
    return str(w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["contractAddress"])
