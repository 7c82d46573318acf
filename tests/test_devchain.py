"""``ipsx devchain``: the JSON-RPC core fed request bodies (no sockets), then the node on a loopback
port as the project uses it: ``ipsx chain deploy`` in a subprocess, web3.py for token transfers,
channels, logs and reverts, the chain watcher into a scratch PostgreSQL database, the state file
across a restart, and the command itself.

Conditions that depend on another process are waited for with a generous deadline; no test
asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.middleware import SignAndSendRawMiddlewareBuilder

from billing import channels, db, ledger
from billing.chain import ChainSettings, ChainWatcher
from contracts.deploy import contract_at
from ipsx.devchain import DevchainSettings, running_devchain
from ipsx.devchain_node import DevChain, StateFileError
from tests.contracts.chain import error_selector, events

ADMIN_URL = os.environ.get("IPSX_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # well known
ETHER = 10**18
TOKEN = 10**18
DEPOSIT = 250 * TOKEN
SALE_DURATION = 60  # seconds; the deployment fixture moves the clock past it and finalizes
WAIT = 30.0  # seconds another process gets to reach a state (a deadline, not a measurement)


def request(node: DevChain, method: str, *params: Any) -> dict[str, Any]:
    reply = node.handle(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
    assert reply is not None
    answer: dict[str, Any] = json.loads(reply)
    return answer


def result(node: DevChain, method: str, *params: Any) -> Any:
    answer = request(node, method, *params)
    assert "error" not in answer, answer
    return answer["result"]


def revert_with_reason(reason: str) -> str:
    """Creation code that reverts with ``Error(reason)``: CODECOPY the payload after it, REVERT."""
    payload = bytes.fromhex("08c379a0") + abi_encode(["string"], [reason])
    size = len(payload)
    code = bytes([0x60, size, 0x60, 12, 0x60, 0, 0x39, 0x60, size, 0x60, 0, 0xFD])
    return "0x" + (code + payload).hex()


# ---- the core, without sockets --------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> DevChain:
    return DevChain()


def test_handle_answers_with_the_request_id(node: DevChain) -> None:
    reply = node.handle(b'{"jsonrpc":"2.0","id":"a7","method":"eth_chainId","params":[]}')
    assert reply is not None
    assert json.loads(reply) == {"jsonrpc": "2.0", "id": "a7", "result": hex(31337)}
    assert result(node, "net_version") == "31337"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", -32700),
        (b"\xff\xfe", -32700),
        (b"[]", -32600),
        (b'"eth_chainId"', -32600),
        (b'{"id":1}', -32600),
        (b'{"id":1,"method":"eth_mine"}', -32601),
        (b'{"id":1,"method":"eth_getBalance","params":["0x12"]}', -32602),
        (b'{"id":1,"method":"eth_getBalance","params":{"address":"0x12"}}', -32602),
        (b'{"id":1,"method":"eth_getLogs","params":[{"fromBlock":"latest!"}]}', -32602),
        (b'{"id":1,"method":"evm_mine","params":[{"blocks":"0x100000"}]}', -32602),
        (b'{"id":1,"method":"eth_getBlockByHash","params":["0x00"]}', -32602),
        (b'{"id":1,"method":"eth_sendRawTransaction","params":["0x0102"]}', -32602),
        (b'{"id":1,"method":"eth_getBalance","params":["0x' + b"11" * 20 + b'","0x100000"]}', -32000),
    ],
)
def test_handle_answers_malformed_requests_with_their_error(node: DevChain, body: bytes, code: int) -> None:
    reply = node.handle(body)
    assert reply is not None
    assert json.loads(reply)["error"]["code"] == code


def test_handle_answers_a_batch_but_not_its_notifications(node: DevChain) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
        {"jsonrpc": "2.0", "method": "eth_blockNumber"},  # a notification: no answer
        {"jsonrpc": "2.0", "id": 2, "method": "eth_nothing"},
    ]
    reply = node.handle(json.dumps(batch).encode())
    assert reply is not None
    first, second = json.loads(reply)
    assert first == {"jsonrpc": "2.0", "id": 1, "result": hex(31337)}
    assert second["id"] == 2 and second["error"]["code"] == -32601
    assert node.handle(json.dumps(batch[1:2]).encode()) is None


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=70)
    | st.sampled_from(["0x", "0x1", "latest"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
READ_METHODS = [
    "eth_chainId", "eth_blockNumber", "eth_getBlockByNumber", "eth_getBlockByHash", "eth_getBalance",
    "eth_getTransactionCount", "eth_getCode", "eth_feeHistory", "eth_call", "eth_estimateGas",
    "eth_getTransactionByHash", "eth_getTransactionReceipt", "eth_getLogs", "eth_sendRawTransaction",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200) | JSON.map(lambda value: json.dumps(value).encode()))
def test_handle_answers_any_body_without_an_internal_error(node: DevChain, body: bytes) -> None:
    reply = node.handle(body)
    if reply is not None:
        answers = json.loads(reply)
        for answer in answers if isinstance(answers, list) else [answers]:
            assert answer.get("error", {}).get("code") != -32603, answer


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(READ_METHODS), params=st.lists(JSON, max_size=3))
def test_methods_refuse_any_params_without_an_internal_error(
    node: DevChain, method: str, params: list[Any]
) -> None:
    answer = request(node, method, *params)
    assert answer.get("error", {}).get("code") != -32603, answer


def test_accounts_are_anvils_and_funded(node: DevChain) -> None:
    accounts = result(node, "eth_accounts")
    assert len(accounts) == 10
    assert accounts[0] == Account.from_key(ANVIL_KEY_0).address
    assert int(result(node, "eth_getBalance", accounts[9], "latest"), 16) == 10_000 * ETHER


def test_call_revert_answers_code_3_with_its_reason_and_data(node: DevChain) -> None:
    code = revert_with_reason("nope")
    error = request(node, "eth_call", {"data": code}, "latest")["error"]
    assert error["code"] == 3
    assert error["message"] == "execution reverted: nope"
    assert error["data"] == "0x" + code[2 + 24 :]  # the payload after the 12 bytes of code
    assert request(node, "eth_estimateGas", {"data": code})["error"] == error


def test_send_transaction_mines_it_in_a_block_of_its_own(node: DevChain) -> None:
    sender = result(node, "eth_accounts")[1]
    receiver = Account.create().address
    before = int(result(node, "eth_blockNumber"), 16)
    tx_hash = result(node, "eth_sendTransaction", {"from": sender, "to": receiver, "value": "0x5"})
    receipt = result(node, "eth_getTransactionReceipt", tx_hash)
    assert receipt["status"] == "0x1"
    assert int(receipt["blockNumber"], 16) == before + 1 == int(result(node, "eth_blockNumber"), 16)
    assert result(node, "eth_getBalance", receiver, "latest") == "0x5"
    tx = result(node, "eth_getTransactionByHash", tx_hash)
    assert tx["from"] == sender and tx["to"] == receiver and tx["input"] == "0x"
    block = result(node, "eth_getBlockByNumber", receipt["blockNumber"], True)
    assert [t["hash"] for t in block["transactions"]] == [tx_hash]
    assert result(node, "eth_getBlockByHash", block["hash"], False)["transactions"] == [tx_hash]
    assert result(node, "eth_getBlockByHash", block["hash"], True)["transactions"][0]["hash"] == tx_hash
    assert result(node, "eth_getTransactionReceipt", "0x" + "00" * 32) is None


def test_send_transaction_from_an_account_the_node_does_not_hold_is_refused(node: DevChain) -> None:
    stranger = Account.create().address
    error = request(node, "eth_sendTransaction", {"from": stranger, "to": stranger, "value": "0x0"})["error"]
    assert error["code"] == -32000 and "not an account of this node" in error["message"]


def test_raw_transaction_signed_for_another_chain_is_refused(node: DevChain) -> None:
    account = Account.from_key(ANVIL_KEY_0)
    nonce = int(result(node, "eth_getTransactionCount", account.address, "pending"), 16)
    tx = {"to": account.address, "value": 0, "gas": 21_000, "maxFeePerGas": 10**10,
          "maxPriorityFeePerGas": 10**9, "nonce": nonce, "chainId": 1}  # fmt: skip
    before = result(node, "eth_blockNumber")
    raw = account.sign_transaction(tx).raw_transaction.to_0x_hex()
    error = request(node, "eth_sendRawTransaction", raw)["error"]
    assert error["code"] == -32000 and "invalid chain id 1" in error["message"]
    assert result(node, "eth_blockNumber") == before


def test_increase_time_dates_the_next_blocks_later(node: DevChain) -> None:
    before = int(result(node, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    result(node, "evm_increaseTime", 3600)
    result(node, "evm_mine")
    after = int(result(node, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    assert after >= before + 3600
    assert request(node, "evm_increaseTime", -1)["error"]["code"] == -32602


def test_fee_history_and_gas_price_follow_the_base_fee(node: DevChain) -> None:
    result(node, "evm_mine", {"blocks": 2})
    history = result(node, "eth_feeHistory", "0x2", "latest", [50])
    latest = result(node, "eth_getBlockByNumber", "latest", False)
    assert int(history["oldestBlock"], 16) == int(latest["number"], 16) - 1
    assert history["baseFeePerGas"][1] == latest["baseFeePerGas"]
    assert len(history["baseFeePerGas"]) == 3 and len(history["reward"]) == 2
    pending = int(history["baseFeePerGas"][2], 16)
    assert int(result(node, "eth_gasPrice"), 16) == pending + int(
        result(node, "eth_maxPriorityFeePerGas"), 16
    )


def test_dump_reloads_the_same_chain(node: DevChain) -> None:
    receiver = Account.create().address
    sender = result(node, "eth_accounts")[2]
    result(node, "eth_sendTransaction", {"from": sender, "to": receiver, "value": "0x7"})
    state = node.dump()
    again = DevChain(state=state)
    latest = result(node, "eth_getBlockByNumber", "latest", False)
    assert result(again, "eth_getBlockByNumber", "latest", False)["hash"] == latest["hash"]
    assert result(again, "eth_getBalance", receiver, "latest") == "0x7"
    with pytest.raises(StateFileError, match="of chain 31337, not 1"):
        DevChain(chain_id=1, state=state)
    with pytest.raises(StateFileError, match=r"truncated|damaged"):
        DevChain(state=state[:-1])
    with pytest.raises(StateFileError, match="not an ipsx devchain state"):
        DevChain(state=b"{}")


# ---- the node over HTTP, as the project uses it ---------------------------------------------------


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_devchain(DevchainSettings(port=0)) as address:
        yield address


@pytest.fixture(scope="module")
def w3(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))


@dataclass
class Deployed:
    w3: Web3
    operator: LocalAccount
    record: dict[str, Any]
    stdout: str

    def contract(self, name: str) -> Any:
        return contract_at(self.w3, name, self.record["contracts"][name])

    def send(self, call: Any, sender: str) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}), timeout=30)
        assert receipt["status"] == 1
        return receipt

    def wallet(self, tokens: int = 0) -> LocalAccount:
        """A new wallet the test signs for, with ether for gas and ``tokens`` IPSX."""
        account: LocalAccount = Account.create()
        self.w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
        tx = self.w3.eth.send_transaction(
            {"from": self.w3.eth.accounts[0], "to": account.address, "value": ETHER}
        )
        self.w3.eth.wait_for_transaction_receipt(tx, timeout=30)
        if tokens:
            self.send(
                self.contract("IPSXToken").functions.transfer(account.address, tokens), self.operator.address
            )
        return account


@pytest.fixture(scope="module")
def deployed(url: str, w3: Web3, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """The contracts deployed by ``ipsx chain deploy`` from a wallet the node does not hold (so it
    signs its own transactions), the sale then finalized so tokens move."""
    operator: LocalAccount = Account.create()
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": operator.address, "value": 100 * ETHER})
    w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    folder = tmp_path_factory.mktemp("devchain-deploy")
    key_file, out = folder / "operator.key", folder / "chain.json"
    key_file.write_text(operator.key.hex())
    key_file.chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("IPSX_")}
    done = subprocess.run(
        [sys.executable, "-m", "ipsx", "chain", "deploy", "--rpc", url, "--key", str(key_file),
         "--out", str(out), "--challenge-period", "600", "--sale-duration", str(SALE_DURATION)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(operator), layer=0)
    deployment = Deployed(w3, operator, json.loads(out.read_text()), done.stdout)
    w3.provider.make_request("evm_increaseTime", [SALE_DURATION + 1])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    deployment.send(deployment.contract("TokenSale").functions.finalize(), operator.address)
    return deployment


def test_deploy_command_records_contracts_with_code(deployed: Deployed) -> None:
    assert deployed.record["chain_id"] == 31337
    assert set(deployed.record["contracts"]) == {"IPSXToken", "TokenSale", "PaymentChannels", "DealAnchor"}
    for name, address in deployed.record["contracts"].items():
        assert deployed.w3.eth.get_code(address), name
        assert f"{name:<16} {address}" in deployed.stdout
    assert deployed.contract("DealAnchor").functions.owner().call() == deployed.operator.address


def test_token_transfer_state_and_log(deployed: Deployed) -> None:
    token = deployed.contract("IPSXToken")
    receiver = Account.create().address
    receipt = deployed.send(token.functions.transfer(receiver, 7 * TOKEN), deployed.operator.address)
    assert token.functions.balanceOf(receiver).call() == 7 * TOKEN
    transfer = Web3.keccak(text="Transfer(address,address,uint256)").to_0x_hex()
    to_topic = "0x" + "00" * 12 + receiver[2:].lower()
    block = receipt["blockNumber"]
    logs = deployed.w3.eth.get_logs(
        {
            "address": token.address,
            "fromBlock": block,
            "toBlock": "latest",
            "topics": [transfer, None, to_topic],
        }
    )
    assert [(entry["transactionHash"], int(entry["data"].hex(), 16)) for entry in logs] == [
        (receipt["transactionHash"], 7 * TOKEN)
    ]
    assert logs[0]["removed"] is False and logs[0]["blockHash"] == receipt["blockHash"]
    anyone = {"fromBlock": 0, "toBlock": "latest", "topics": [[transfer], None, "0x" + "11" * 32]}
    assert deployed.w3.eth.get_logs({**anyone, "address": token.address}) == []  # type: ignore[typeddict-item]
    other = deployed.contract("PaymentChannels").address
    assert deployed.w3.eth.get_logs({"address": other, "fromBlock": block, "toBlock": block}) == []


def test_open_channel_state_and_event(deployed: Deployed) -> None:
    token, contract = deployed.contract("IPSXToken"), deployed.contract("PaymentChannels")
    requester = deployed.wallet(tokens=DEPOSIT)
    deployed.send(token.functions.approve(contract.address, DEPOSIT), requester.address)
    receipt = deployed.send(contract.functions.open(deployed.operator.address, DEPOSIT), requester.address)
    (opened,) = events(contract, "ChannelOpened", receipt)
    channel_id = bytes(opened["channelId"])
    on_chain = contract.functions.getChannel(channel_id).call()
    assert (on_chain[0], on_chain[1], on_chain[2], on_chain[3]) == (
        requester.address, 0, deployed.operator.address, DEPOSIT
    )  # fmt: skip
    assert token.functions.balanceOf(contract.address).call() >= DEPOSIT
    logs = contract.events.ChannelOpened().get_logs(
        from_block=receipt["blockNumber"], argument_filters={"sender": requester.address}
    )
    assert [(bytes(e["args"]["channelId"]), e["args"]["deposit"]) for e in logs] == [(channel_id, DEPOSIT)]


def test_revert_surfaces_the_contracts_error(deployed: Deployed) -> None:
    contract = deployed.contract("PaymentChannels")
    requester = deployed.wallet()
    expected = (
        error_selector(contract.abi, "InvalidReceiver") + abi_encode(["address"], [requester.address]).hex()
    )
    with pytest.raises(ContractCustomError) as raised:
        contract.functions.open(requester.address, 1).transact({"from": requester.address})
    assert raised.value.data == expected
    with pytest.raises(ContractCustomError) as called:
        contract.functions.open(requester.address, 1).call({"from": requester.address})
    assert called.value.data == expected
    with pytest.raises(ContractLogicError):  # ZeroAmount(): a custom error is a logic error too
        contract.functions.open(deployed.operator.address, 0).call({"from": requester.address})


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    """A migrated scratch database of this test's own, dropped afterwards."""
    name = f"ipsx_test_devchain_{os.getpid()}"
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{name}"')
    connection = await db.open_migrated(urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}")), max_size=2)
    try:
        yield connection
    finally:
        await connection.close()
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_chain_watcher_credits_a_channel_deposit(deployed: Deployed, pool: asyncpg.Pool) -> None:
    token, contract = deployed.contract("IPSXToken"), deployed.contract("PaymentChannels")
    requester = await asyncio.to_thread(deployed.wallet, DEPOSIT)
    await asyncio.to_thread(
        deployed.send, token.functions.approve(contract.address, DEPOSIT), requester.address
    )
    receipt = await asyncio.to_thread(
        deployed.send, contract.functions.open(deployed.operator.address, DEPOSIT), requester.address
    )
    (opened,) = events(contract, "ChannelOpened", receipt)
    settings = ChainSettings(
        channels_address=contract.address,
        operator_key=deployed.operator.key.to_0x_hex(),
        rpc_url=str(deployed.w3.provider.endpoint_uri),  # type: ignore[attr-defined]
        confirmations=0,
        start_block=int(deployed.record["block"]),
    )
    async with ChainWatcher(pool, settings) as watcher:
        assert await watcher.poll_once() >= 1  # this channel, and those of the tests before
        assert await watcher.poll_once() == 0  # applied once
    channel = await channels.get(pool, "0x" + bytes(opened["channelId"]).hex())
    assert channel is not None and channel.account_name is not None
    assert (channel.sender, channel.role, channel.deposit) == (requester.address, "requester", DEPOSIT)
    assert channel.opened_block == receipt["blockNumber"]
    assert await ledger.balance(pool, ledger.requester_account(channel.account_name)) == DEPOSIT


def test_http_answers_post_only_with_a_bounded_body(url: str) -> None:
    host, port = urlsplit(url).hostname, urlsplit(url).port
    connection = http.client.HTTPConnection(str(host), port, timeout=10)
    try:
        for _ in range(2):  # two requests on one kept-alive connection
            connection.request("POST", "/", b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}')
            reply = connection.getresponse()
            assert (reply.status, json.loads(reply.read())["result"]) == (200, hex(31337))
        connection.request("GET", "/")
        reply = connection.getresponse()
        assert reply.status == 405
        reply.read()
        connection.putrequest("POST", "/")
        connection.putheader("Content-Length", str(64 * 2**20))
        connection.endheaders()
        reply = connection.getresponse()
        assert reply.status == 413
    finally:
        connection.close()


def test_state_file_keeps_the_chain_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "chain.bin"
    receiver = Account.create().address
    with running_devchain(DevchainSettings(port=0, state_file=state)) as address:
        w3 = Web3(Web3.HTTPProvider(address))
        tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": receiver, "value": 9})
        mined = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    assert state.exists()
    with running_devchain(DevchainSettings(port=0, state_file=state)) as address:
        w3 = Web3(Web3.HTTPProvider(address))
        assert w3.eth.get_balance(receiver) == 9
        assert w3.eth.block_number == mined["blockNumber"]
        assert w3.eth.get_transaction_receipt(tx)["blockHash"] == mined["blockHash"]


# ---- the command -----------------------------------------------------------------------------------


def _listening(log: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        match = re.search(r"Listening on 127\.0\.0\.1:(\d+) \(chain 31337\)", text)
        if match:
            return f"http://127.0.0.1:{match[1]}"
        assert proc.poll() is None, text
        time.sleep(0.05)
    pytest.fail(f"the devchain did not say it listens within {WAIT} s: {log.read_text()}")


@contextlib.contextmanager
def devchain_process(log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ipsx.devchain", "--port", "0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(90)
def test_command_serves_until_sigterm_then_saves_its_state(tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    with devchain_process(tmp_path / "devchain.log", "--state", str(state)) as proc:
        w3 = Web3(Web3.HTTPProvider(_listening(tmp_path / "devchain.log", proc)))
        assert w3.eth.chain_id == 31337
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    assert f"state saved in {state}" in (tmp_path / "devchain.log").read_text()
    assert DevChain(state=state.read_bytes()).chain_id == 31337


@pytest.mark.timeout(90)
def test_command_with_exit_with_parent_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    state, log, pid_file = tmp_path / "state.bin", tmp_path / "devchain.log", tmp_path / "devchain.pid"
    command = f"{sys.executable} -m ipsx.devchain --port 0 --exit-with-parent --state {state} > {log} 2>&1"
    parent = subprocess.Popen(["/bin/sh", "-c", f"{command} & echo $! > {pid_file}; wait"])
    try:
        _listening(log, parent)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + WAIT
        while not state.exists():  # the orphan saw its parent go, stopped and saved
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "state saved in" in log.read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # only if it failed to stop itself
