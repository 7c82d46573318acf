"""The whole payment cycle on a real chain (anvil), through the real gateway, with the operator's
and the users' commands as they run them:

deploy the contracts, a requester opens a channel and the chain watcher credits it; its traffic
through the gateway settles into an invoice; a requester whose agent has not signed is cut off at
the unpaid limit (402, nothing relayed) until ``ipsx pay`` signs; the hub promises the provider its
earnings over a payout channel, which the provider closes with ``ipsx payouts`` + ``ipsx channel
close``; the requester closes its channel cooperatively; on-chain token balances equal the ledger
to the base unit, and ``ipsx reconcile`` agrees.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD

from contracts.deploy import contract_at
from gateway.agent.settings import load_key
from ipsx.sdk import Client
from tests.contracts.chain import Chain, anvil_chain
from tests.e2e.conftest import EXITS, Stack, free_port, wait_port
from tests.e2e.test_proxy import curl

IPSX = 10**18
DEPOSIT = 10 * IPSX
PRICE_PER_GB = 50_000 * IPSX  # dear, so a few kilobytes cost more than the unpaid limit


@dataclass
class Cycle:
    chain: Chain
    operator: LocalAccount
    deployment: Path
    record: dict[str, Any]
    api_url: str
    proxy_port: int

    def contract(self, name: str) -> Any:
        return contract_at(self.chain.w3, name, self.record["contracts"][name])

    @property
    def rpc(self) -> str:
        return str(self.chain.w3.provider.endpoint_uri)  # type: ignore[attr-defined]


def until(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def mine(chain: Chain, blocks: int = 1) -> None:
    chain.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def fund_gas(chain: Chain, address: str) -> None:
    tx = chain.w3.eth.send_transaction({"from": chain.accounts[0], "to": address, "value": 10**19})
    chain.w3.eth.wait_for_transaction_receipt(tx, timeout=30)


def signed(chain: Chain, account: LocalAccount, call: Any) -> Any:
    tx = call.build_transaction(
        {"from": account.address, "nonce": chain.w3.eth.get_transaction_count(account.address)}
    )
    receipt = chain.w3.eth.wait_for_transaction_receipt(
        chain.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction), timeout=30
    )
    assert receipt["status"] == 1
    return receipt


@pytest.fixture(scope="module")
def cycle(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cycle]:
    folder = tmp_path_factory.mktemp("cycle")
    with anvil_chain(folder) as chain:
        operator: LocalAccount = Account.create()
        fund_gas(chain, operator.address)
        key_file = folder / "operator.key"
        key_file.write_text(operator.key.hex())
        deployment = folder / "chain.json"
        rpc = str(chain.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
        stack.ipsx(
            "chain", "deploy", "--rpc", rpc, "--key", str(key_file), "--out", str(deployment),
            "--challenge-period", "600", "--sale-duration", "60",
        )  # fmt: skip
        record = json.loads(deployment.read_text())
        # The sale ends; the operator (holder of the allocations on a test network) can move tokens.
        chain.travel(61)
        sale = contract_at(chain.w3, "TokenSale", record["contracts"]["TokenSale"])
        chain.transact(sale.functions.finalize(), chain.accounts[0])
        api_port, http_port, tunnel_port = free_port(), free_port(), free_port()
        env = {
            **stack.env,
            "IPSX_JWT_SECRET": secrets.token_urlsafe(32),
            "IPSX_OPERATOR_KEY": operator.key.hex(),
        }
        saved, stack.env = stack.env, env
        processes = [
            stack.spawn(
                "api", "--port", str(api_port), "--chain-id", str(chain.chain_id),
                "--channels-address", record["contracts"]["PaymentChannels"],
                "--unpaid-limit", "0.5", "--invoice-interval", "0.2", log="cycle-api.log",
            ),
            stack.spawn_gateway("cycle-node", http_port, tunnel_port, "--market"),
            stack.spawn(
                "chain", "watch", "--rpc", rpc, "--deployment", str(deployment),
                "--confirmations", "1", "--poll", "0.2", log="cycle-watch.log",
            ),
        ]  # fmt: skip
        stack.env = saved
        try:
            wait_port(api_port)
            wait_port(http_port)
            for country, bind in EXITS.items():
                stack.wait_exit_on(stack.exit_id(f"agent-{country}", bind), {"cycle-node"})
            yield Cycle(chain, operator, deployment, record, f"http://127.0.0.1:{api_port}", http_port)
        finally:
            for proc in processes:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)


def balance_of(stack: Stack, account: str) -> int:
    rows = stack.query("SELECT balance::text FROM ledger_balances WHERE account = $1", account)
    return int(rows[0][0]) if rows else 0


@pytest.mark.timeout(240)
def test_the_whole_payment_cycle_on_chain(stack: Stack, cycle: Cycle, tmp_path: Path) -> None:
    chain, operator = cycle.chain, cycle.operator
    token, channels = cycle.contract("IPSXToken"), cycle.contract("PaymentChannels")
    common = ("--api", cycle.api_url, "--rpc", cycle.rpc, "--deployment", str(cycle.deployment))

    # A requester's wallet, with gas and 10 IPSX, opens a channel to the operator.
    wallet = tmp_path / "requester.key"
    requester = stack.ipsx("wallet", "new", "--out", str(wallet)).stdout.split()[1]
    fund_gas(chain, requester)
    signed(chain, operator, token.functions.transfer(requester, DEPOSIT))
    opened = stack.ipsx("channel", "open", *common, "--key", str(wallet), "--deposit", "10").stdout
    channel_id = re.search(r"channel (0x[0-9a-f]{64}) opened", opened)
    assert channel_id is not None, opened
    mine(chain)  # one confirmation: the watcher credits the deposit to a new account of the wallet
    name = "w_" + requester.lower()[2:10]
    until(lambda: balance_of(stack, f"requester:{name}") == DEPOSIT, "the deposit credited")
    secret = re.search(r"secret: (\S+)", stack.ipsx("key", "create", name).stdout)
    assert secret is not None

    # The French provider offers its exit; the operator opens a payout channel to it.
    fr_wallet = load_key(stack.tmp / "agent-fr.key", None)
    fund_gas(chain, fr_wallet.address)
    provider = Client.sign_in(cycle.api_url, fr_wallet)
    fr_exit = stack.exit_id("agent-fr", EXITS["fr"])
    offer = provider.place_offer(
        exit_id=fr_exit, price_per_gb=str(PRICE_PER_GB), sharing="shared", shared_capacity=4
    )
    signed(chain, operator, token.functions.approve(channels.address, 5 * IPSX))
    payout_open = signed(chain, operator, channels.functions.open(fr_wallet.address, 5 * IPSX))
    (payout_event,) = channels.events.ChannelOpened().process_receipt(payout_open, errors=DISCARD)
    payout_id = "0x" + bytes(payout_event["args"]["channelId"]).hex()
    mine(chain)

    # The requester buys the French IP for 5 s and fetches 20 kB through the gateway.
    buyer = Client(cycle.api_url, token=secret.group(1))
    placed = buyer.place_request(
        filters={"country": "fr", "protocol": "https"}, ips=1, duration_s=5, traffic_bytes=100_000,
        max_price_per_gb=str(PRICE_PER_GB), rest=False,
    )  # fmt: skip
    (deal,) = placed["deals"]
    proxy = f"http://{name}-order-{placed['order_id']}:{secret.group(1)}@127.0.0.1:{cycle.proxy_port}"
    got = curl("-x", proxy, "-o", "/dev/null", "-w", "%{size_download}", stack.origin.url("/bytes/20000"))
    assert got.stdout == "20000"
    until(lambda: buyer.deal(deal["deal_id"])["state"] == "settled", "the deal settled", timeout=60)
    charge = int(buyer.deal(deal["deal_id"])["charge"]["base_units"])
    assert charge > IPSX // 2  # above the unpaid limit

    # Its agent has not signed: the invoice is open and the gateway refuses it, relaying nothing.
    (invoice,) = until(lambda: list(buyer.invoices()), "the invoice")
    assert (int(invoice["cumulative"]["base_units"]), invoice["state"]) == (charge, "open")
    listed = stack.ipsx("invoices", "--api", cycle.api_url, "--token", secret.group(1)).stdout.split()
    assert listed[:2] == [str(invoice["invoice_id"]), "open"]
    assert listed[2:4] == [invoice["amount"]["ipsx"], "IPSX"]
    streams = stack.query("SELECT count(*) FROM usage_events WHERE requester = $1", name)[0][0]
    unpinned = proxy.replace(f"-order-{placed['order_id']}", "")

    def cut_off() -> str | None:
        answer = curl("-i", "-x", unpinned, stack.origin.url("/ip")).stdout
        return answer if answer.startswith("HTTP/1.1 402") else None

    refused = until(cut_off, "the cut-off")
    assert "X-IPSX-Error: payment_required" in refused

    # ipsx pay signs the balance proof that pays it.
    paid = stack.ipsx(
        "pay", "--api", cycle.api_url, "--key", str(wallet), "--once", "--max-invoice", "5"
    ).stdout
    assert paid.startswith(f"paid invoice {invoice['invoice_id']}")
    assert stack.query("SELECT count(*) FROM usage_events WHERE requester = $1", name)[0][0] == streams

    # The hub promises the provider its earnings; the provider keeps the proof and cashes it.
    earned = charge - int(buyer.deal(deal["deal_id"])["commission"]["base_units"])
    store = tmp_path / "payouts.json"
    fr_key = str(stack.tmp / "agent-fr.key")
    keep = ("payouts", "--api", cycle.api_url, "--key", fr_key, "--store", str(store))
    until(lambda: "proof kept" in stack.ipsx(*keep).stdout, "the payout proof")
    before = token.functions.balanceOf(fr_wallet.address).call()
    stack.ipsx("channel", "close", payout_id, *common, "--key", fr_key, "--store", str(store))
    assert token.functions.balanceOf(fr_wallet.address).call() - before == earned
    mine(chain)
    fr_account = provider.me()["account"]["name"]
    until(lambda: balance_of(stack, f"provider:{fr_account}") == 0, "the payout booked")

    # The requester closes its channel cooperatively: the operator is paid the charge, the rest
    # comes back, and the ledger follows the chain to the base unit.
    closed = stack.ipsx("channel", "close", channel_id.group(1), *common, "--key", str(wallet)).stdout
    assert "closed" in closed
    assert token.functions.balanceOf(requester).call() == DEPOSIT - charge
    mine(chain)
    until(lambda: balance_of(stack, f"requester:{name}") == 0, "the refund booked")
    assert balance_of(stack, f"hold:requester:{name}") == 0
    assert stack.query("SELECT sum(balance)::text FROM ledger_balances")[0][0] == "0"
    report = stack.ipsx("reconcile", "--rpc", cycle.rpc, "--deployment", str(cycle.deployment), check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    provider.cancel(offer["order_id"])  # the market tests after this one price the same exit
