"""``ipsx chain deploy``, ``ipsx chain watch`` and ``ipsx reconcile`` as an operator runs them: the
real CLI in subprocesses, against a real anvil (a free loopback port) and scratch PostgreSQL
databases.

The operator is a fresh wallet the node does not hold, so the deployment must sign its own
transactions. Conditions that depend on another process (the watcher's cursor) are waited for
with a generous deadline; no test asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from billing import db, ledger
from billing.chain import cursor_name
from billing.withdrawals import CHAIN
from contracts import proofs
from contracts.deploy import contract_at
from tests.contracts.chain import Chain, anvil_chain, channels_with_domain, events

ADMIN_URL = os.environ.get("IPSX_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TOKEN = 10**18
DEPOSIT = 250 * TOKEN
CONFIRMATIONS = 2
SALE_DURATION = 60  # seconds: the flow test travels past it to finalize the sale
WAIT = 30.0  # seconds another process gets to reach a state (a deadline, not a measurement)
NAMES = ("IPSXToken", "TokenSale", "PaymentChannels", "DealAnchor")


# ---- helpers -------------------------------------------------------------------------------------


def ipsx(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ipsx", *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    pool = await db.connect(url, max_size=1)
    try:
        await db.migrate(pool)
    finally:
        await pool.close()


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A new migrated database, dropped afterwards; yields its URL."""
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    try:
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fetchval(url: str, query: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def cursor(url: str, channels: str) -> int:
    """The last block the watcher of ``channels`` applied (-1 before its first range)."""
    block = fetchval(
        url, "SELECT COALESCE(MAX(block), -1) FROM chain_cursors WHERE name = $1", cursor_name(channels)
    )
    return int(block)


def wait_until(condition: Callable[[], bool], watcher: subprocess.Popen[str], what: str) -> None:
    """Polls ``condition`` until it holds; fails (with the watcher's log) if the watcher exits
    or the deadline passes first."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if watcher.poll() is not None:
            pytest.fail(f"the watcher exited ({watcher.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT} s")
        time.sleep(0.05)


def mine(chain: Chain, blocks: int) -> None:
    chain.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def send_signed(chain: Chain, account: LocalAccount, call: Any) -> Any:
    """Sends a contract call signed by a key the node does not hold; returns the receipt."""
    tx = call.build_transaction(
        {"from": account.address, "nonce": chain.w3.eth.get_transaction_count(account.address)}
    )
    tx_hash = chain.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    assert receipt["status"] == 1
    return receipt


@contextlib.contextmanager
def watching(*args: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """``ipsx chain watch ARGS`` in the background (output to ``log``); killed if still running."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ipsx", "chain", "watch", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- fixtures ------------------------------------------------------------------------------------


@dataclass
class Deployed:
    chain: Chain
    operator: LocalAccount
    path: Path
    record: dict[str, Any]
    result: subprocess.CompletedProcess[str]

    @property
    def rpc(self) -> str:
        return str(self.chain.w3.provider.endpoint_uri)  # type: ignore[attr-defined]

    def contract(self, name: str) -> Any:
        return contract_at(self.chain.w3, name, self.record["contracts"][name])


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with anvil_chain(tmp_path_factory.mktemp("chain-cli-anvil")) as chain:
        yield chain


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with scratch_database(f"ipsx_test_chain_cli_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="module")
def operator(anvil: Chain) -> LocalAccount:
    """A wallet anvil does not hold, with ETH for gas."""
    account: LocalAccount = Account.create()
    tx_hash = anvil.w3.eth.send_transaction(
        {"from": anvil.accounts[0], "to": account.address, "value": 100 * 10**18}
    )
    anvil.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    return account


@pytest.fixture(scope="module")
def base_env(operator: LocalAccount, database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IPSX_")}
    return {**env, "IPSX_DATABASE_URL": database_url, "IPSX_OPERATOR_KEY": operator.key.hex()}


@pytest.fixture(scope="module")
def deployed(
    anvil: Chain, operator: LocalAccount, base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Deployed:
    """The contracts deployed by ``ipsx chain deploy``, with the key read from a key file."""
    folder = tmp_path_factory.mktemp("chain-cli")
    key_file = folder / "operator.key"
    key_file.write_text(operator.key.hex())
    key_file.chmod(0o600)
    out = folder / "deployments" / "chain.json"
    env = {key: value for key, value in base_env.items() if key != "IPSX_OPERATOR_KEY"}
    rpc = str(anvil.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
    result = ipsx(
        "chain", "deploy", "--rpc", rpc, "--key", str(key_file), "--out", str(out),
        "--challenge-period", "600", "--sale-duration", str(SALE_DURATION),
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Deployed(anvil, operator, out, json.loads(out.read_text()), result)


# ---- ipsx chain deploy ---------------------------------------------------------------------------


def test_deploy_call_records_contracts_with_code(deployed: Deployed) -> None:
    w3, record = deployed.chain.w3, deployed.record
    assert record["chain_id"] == deployed.chain.chain_id
    assert 0 < record["block"] <= w3.eth.block_number
    assert set(record["contracts"]) == set(NAMES)
    for name in NAMES:
        address = record["contracts"][name]
        assert len(w3.eth.get_code(address)) > 0, name
        assert f"{name:<16} {address}" in deployed.result.stdout
    # TokenSale, PaymentChannels and DealAnchor are created by transactions, each reported as mined
    assert deployed.result.stdout.count("  mined: contract ") == 3
    assert f"deployment recorded in {deployed.path}" in deployed.result.stdout


def test_deploy_state_defaults_to_the_operator(deployed: Deployed) -> None:
    operator = deployed.operator.address
    assert deployed.record["operator"] == operator
    assert deployed.contract("DealAnchor").functions.owner().call() == operator
    channels = deployed.contract("PaymentChannels")
    assert channels.functions.challengePeriod().call() == 600
    # the early adopters (27.5 %), bounty (2.5 %) and team (20 %) allocations
    token = deployed.contract("IPSXToken")
    assert token.functions.balanceOf(operator).call() == 900_000_000 * TOKEN
    sale = deployed.contract("TokenSale")
    assert sale.functions.endTime().call() - sale.functions.startTime().call() == SALE_DURATION


def test_deploy_never_shows_the_key(deployed: Deployed) -> None:
    key = deployed.operator.key.hex()
    output = deployed.result.stdout + deployed.result.stderr + deployed.path.read_text()
    assert key.removeprefix("0x") not in output


def test_deploy_refuses_to_replace_a_recorded_deployment(
    deployed: Deployed, base_env: dict[str, str]
) -> None:
    before = deployed.path.read_text()
    result = ipsx("chain", "deploy", "--rpc", deployed.rpc, "--out", str(deployed.path), env=base_env)
    assert result.returncode == 2
    assert "exists" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert deployed.path.read_text() == before


# ---- watch, account list, reconcile --------------------------------------------------------------


def test_watch_credits_a_deposit_after_confirmations_and_reconcile_agrees(
    deployed: Deployed, base_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    chain, operator = deployed.chain, deployed.operator
    token, sale = deployed.contract("IPSXToken"), deployed.contract("TokenSale")
    channels = deployed.contract("PaymentChannels")
    requester = chain.accounts[3]
    # The sale must be over for the requester's tokens to move (transferFrom follows its lock).
    chain.travel(SALE_DURATION + 1)
    chain.transact(sale.functions.finalize(), chain.accounts[0])
    send_signed(chain, operator, token.functions.transfer(requester, DEPOSIT))
    chain.transact(token.functions.approve(channels.address, DEPOSIT), requester)
    receipt = chain.transact(channels.functions.open(operator.address, DEPOSIT), requester)
    (opened,) = events(channels, "ChannelOpened", receipt)
    assert opened["deposit"] == DEPOSIT
    opened_block = int(receipt["blockNumber"])
    common = ("--rpc", deployed.rpc, "--deployment", str(deployed.path))

    with watching(
        *common,
        "--confirmations",
        str(CONFIRMATIONS),
        "--poll",
        "0.05",
        env=base_env,
        log=tmp_path / "watch.log",
    ) as watcher:
        # Confirmed up to two blocks below the open: the deposit is not credited yet.
        wait_until(
            lambda: cursor(database_url, channels.address) == opened_block - CONFIRMATIONS,
            watcher,
            "cursor below the open",
        )
        listing = ipsx("account", "list", env=base_env)
        assert listing.returncode == 0
        assert requester.lower() not in listing.stdout.lower()

        mine(chain, CONFIRMATIONS)
        wait_until(
            lambda: cursor(database_url, channels.address) >= opened_block, watcher, "cursor at the open"
        )
        listing = ipsx("account", "list", env=base_env)
        assert listing.returncode == 0
        (line,) = [row for row in listing.stdout.splitlines() if requester.lower() in row.lower()]
        assert line.endswith(f"balance {ledger.format_amount(ledger.Amount(DEPOSIT))} IPSX")

        agreed = ipsx("reconcile", *common, env=base_env)
        assert agreed.returncode == 0, agreed.stdout + agreed.stderr
        assert agreed.stdout.startswith(f"Reconciliation at block {opened_block}: OK")
        assert "MISMATCH" not in agreed.stdout

        name = line.split()[0]
        asyncio.run(_post_bogus_deposit(database_url, name))
        tampered = ipsx("reconcile", *common, env=base_env)
        assert tampered.returncode == 1
        assert "MISMATCH (2 of" in tampered.stdout.splitlines()[0]
        assert "  MISMATCH  deposits credited (all): " in tampered.stdout
        assert f"  MISMATCH  {CHAIN} balance: " in tampered.stdout
        assert "Traceback" not in tampered.stderr

        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=WAIT) == 0
    log = (tmp_path / "watch.log").read_text()
    assert "watching PaymentChannels " + channels.address in log
    assert "Traceback" not in log
    assert operator.key.hex().removeprefix("0x") not in log
    # What the API nodes read before they sign a closing consent: this contract takes them.
    recorded = fetchval(
        database_url,
        "SELECT count(*) FROM channels_domains WHERE address = $1 AND problem IS NULL",
        channels.address,
    )
    assert recorded == 1


async def _post_bogus_deposit(url: str, name: str) -> None:
    """A deposit the chain never saw: what a bug or a hand-edited ledger would leave."""
    pool = await db.connect(url, max_size=1)
    try:
        leg = ledger.Leg(CHAIN, ledger.requester_account(name), ledger.Amount(TOKEN))
        assert await ledger.post(pool, [leg], kind="deposit", reference="chain:0xbogus:0") is not None
    finally:
        await pool.close()


def test_watch_stops_with_status_3_on_a_deep_reorg(
    deployed: Deployed, base_env: dict[str, str], tmp_path: Path
) -> None:
    chain = deployed.chain
    channels = deployed.record["contracts"]["PaymentChannels"]
    snapshot = chain.snapshot()
    with scratch_database(f"ipsx_test_chain_cli_{os.getpid()}_reorg") as url:
        env = {**base_env, "IPSX_DATABASE_URL": url}
        args = ("--rpc", deployed.rpc, "--deployment", str(deployed.path), "--confirmations", "0")
        with watching(*args, "--poll", "0.05", env=env, log=tmp_path / "watch.log") as watcher:
            mine(chain, 3)
            head = chain.w3.eth.block_number
            wait_until(lambda: cursor(url, channels) == head, watcher, "cursor at the head")
            # Replace the last three blocks with a branch that differs from the first block on.
            chain.revert(snapshot)
            tx_hash = chain.w3.eth.send_transaction(
                {"from": chain.accounts[0], "to": chain.accounts[1], "value": 1}
            )
            chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
            mine(chain, 3)
            assert watcher.wait(timeout=WAIT) == 3
    log = (tmp_path / "watch.log").read_text()
    assert "reorganised deeper than the confirmations" in log
    assert "ipsx reconcile" in log
    assert "Traceback" not in log


# ---- errors and help -----------------------------------------------------------------------------


def test_errors_exit_2_with_a_message(deployed: Deployed, base_env: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing.json")
    good = str(deployed.path)
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("0xnot-a-key-at-all")
    unreachable = "http://127.0.0.1:1/v3/secret-api-key"
    cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
        (("chain", "watch", "--deployment", missing), {}, f"no deployment file {missing}"),
        (("reconcile", "--deployment", missing), {}, f"no deployment file {missing}"),
        (("reconcile", "--rpc", unreachable, "--deployment", good), {},
         "cannot reach the Ethereum node at http://127.0.0.1:1"),
        (("chain", "watch", "--rpc", unreachable, "--deployment", good), {},
         "cannot reach the Ethereum node at http://127.0.0.1:1"),
        (("chain", "deploy", "--rpc", unreachable, "--out", str(tmp_path / "new.json")), {},
         "cannot reach the Ethereum node at http://127.0.0.1:1"),
        (("chain", "watch", "--rpc", deployed.rpc, "--deployment", good),
         {"IPSX_OPERATOR_KEY": "0xnot-a-key-at-all"}, "IPSX_OPERATOR_KEY is not a hex private key"),
        (("chain", "watch", "--rpc", deployed.rpc, "--deployment", good, "--key", str(bad_key)), {},
         f"cannot load the operator key from {bad_key}"),
        (("chain", "watch", "--rpc", deployed.rpc, "--deployment", good),
         {"IPSX_OPERATOR_KEY": ""}, "no operator key: set IPSX_OPERATOR_KEY"),
        (("chain", "watch", "--rpc", deployed.rpc, "--deployment", good),
         {"IPSX_OPERATOR_KEY": deployed.chain.keys[deployed.chain.accounts[1]].key.hex()},
         f"names {deployed.operator.address} as the operator"),
    ]  # fmt: skip
    for args, overrides, message in cases:
        result = ipsx(*args, env={**base_env, **overrides})
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "not-a-key" not in result.stderr and "secret-api-key" not in result.stderr


def test_the_deployment_file_defaults_to_ipsx_chain_json(base_env: dict[str, str], tmp_path: Path) -> None:
    result = ipsx("reconcile", env=base_env, cwd=tmp_path)
    assert result.returncode == 2
    assert "no deployment file .ipsx/chain.json: run `ipsx chain deploy` first" in result.stderr


@pytest.mark.parametrize("command", [("chain", "deploy"), ("chain", "watch"), ("reconcile",)])
def test_every_chain_command_has_help(command: tuple[str, ...]) -> None:
    result = ipsx(*command, "--help", env=dict(os.environ))
    assert result.returncode == 0
    assert result.stdout.startswith("usage: ipsx " + " ".join(command))
    assert "--rpc URL" in result.stdout


def test_reconcile_reads_the_database_as_it_is_and_creates_none(
    deployed: Deployed, base_env: dict[str, str]
) -> None:
    # A check that only reads: a database that is not the network's is named, never made one.
    common = ("--rpc", deployed.rpc, "--deployment", str(deployed.path))
    missing_name = f"ipsx_test_reconcile_missing_{os.getpid()}"
    missing = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{missing_name}"))
    refused = ipsx("reconcile", *common, env={**base_env, "IPSX_DATABASE_URL": missing})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f'database "{missing_name}" does not exist: is IPSX_DATABASE_URL' in refused.stderr
    assert "Traceback" not in refused.stderr
    exists = "SELECT 1 FROM pg_database WHERE datname = $1"
    assert asyncio.run(_admin_fetchval(exists, missing_name)) is None

    empty_name = f"ipsx_test_reconcile_empty_{os.getpid()}"
    asyncio.run(_admin(f'CREATE DATABASE "{empty_name}"'))
    try:
        empty = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{empty_name}"))
        refused = ipsx("reconcile", *common, env={**base_env, "IPSX_DATABASE_URL": empty})
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "the database of IPSX_DATABASE_URL lacks" in refused.stderr
        assert "(from 001_" in refused.stderr
        assert asyncio.run(_tables(empty)) == 0  # nothing migrated
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{empty_name}" WITH (FORCE)'))


async def _admin_fetchval(query: str, *args: object) -> object:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _tables(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
    finally:
        await conn.close()


# ---- the contract's version ----------------------------------------------------------------------


def test_commands_refuse_a_payment_channels_contract_of_another_domain(
    deployed: Deployed, base_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    # Proofs and consents are signed for DOMAIN_VERSION: a contract of another version (the one
    # before consents expired, say) refuses them all. The chain services still serve it, with a
    # warning (its open channels need watching); a contract that is no IPSX PaymentChannels is
    # refused.
    token, sender = deployed.record["contracts"]["IPSXToken"], deployed.chain.accounts[0]
    w3 = deployed.chain.w3
    old = channels_with_domain(w3, token, sender, proofs.DOMAIN_NAME, "1")
    foreign = channels_with_domain(w3, token, sender, "Some Other Channels", proofs.DOMAIN_VERSION)
    node = f"on the node at {urlsplit(deployed.rpc).scheme}://127.0.0.1:{urlsplit(deployed.rpc).port}"

    def deployment(address: str) -> Path:
        record = {
            **deployed.record,
            "contracts": {**deployed.record["contracts"], "PaymentChannels": address},
        }
        path = tmp_path / f"{address}.json"
        path.write_text(json.dumps(record))
        return path

    for address, why in [
        (foreign, "its EIP-712 domain is 'Some Other Channels', not 'IPSX PaymentChannels'"),
        (token, "it has no EIP-712 domain"),
    ]:
        message = f"the PaymentChannels contract {address} {node} is no IPSX PaymentChannels: {why}"
        for command in (("reconcile",), ("chain", "watch")):
            result = ipsx(
                *command, "--rpc", deployed.rpc, "--deployment", str(deployment(address)), env=base_env
            )
            assert result.returncode == 2 and message in result.stderr, (command, address, result.stderr)
            assert "Traceback" not in result.stderr

    warning = (
        f"the PaymentChannels contract {old} {node} cannot take the proofs and consents this IPSX signs: "
        f"it is version '1' and this IPSX signs for version '{proofs.DOMAIN_VERSION}'; deploy this IPSX's "
        "contracts (`ipsx chain deploy --out FILE`) and have the channels reopened there"
    )
    checked = ipsx("reconcile", "--rpc", deployed.rpc, "--deployment", str(deployment(old)), env=base_env)
    assert warning in checked.stderr, checked.stderr
    assert "Reconciliation at block" in checked.stdout, checked.stdout + checked.stderr
    log = tmp_path / "watch-old.log"
    with watching("--rpc", deployed.rpc, "--deployment", str(deployment(old)), env=base_env, log=log) as proc:
        deadline = time.monotonic() + WAIT
        while "watching PaymentChannels" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
    assert warning in text and f"watching PaymentChannels {old}" in text, text
    # The API nodes, which have no chain connection, read it before they sign a closing consent.
    recorded = fetchval(database_url, "SELECT problem FROM channels_domains WHERE address = $1", old)
    assert recorded == f"it is version '1' and this IPSX signs for version '{proofs.DOMAIN_VERSION}'"

    # A requester's wallet opening a channel on it is stopped before anything is sent.
    wallet = tmp_path / "requester.key"
    wallet.write_text(Account.create().key.hex())
    wallet.chmod(0o600)
    opened = ipsx(
        "channel", "open", "--key", str(wallet), "--deployment", str(deployment(old)), "--rpc", deployed.rpc,
        "--deposit", "1", env=base_env,
    )  # fmt: skip
    assert opened.returncode == 2, opened.stderr
    assert opened.stderr == (
        f"ipsx channel: the PaymentChannels contract {old} cannot take IPSX proofs: it is version '1' and "
        f"this IPSX signs for version '{proofs.DOMAIN_VERSION}'; is the deployment file of this network's "
        "current deployment?\n"
    )


@pytest.mark.parametrize(
    ("database", "message"),
    [
        (
            "postgresql://postgres:sekret@127.0.0.1:1/test",
            "cannot use the database postgresql://postgres:[REDACTED]@127.0.0.1:1/test (IPSX_DATABASE_URL): "
            "ConnectionRefusedError",
        ),
        (
            "postgresql://ipsx_no_such_role:sekret@127.0.0.1:5432/test",
            "(IPSX_DATABASE_URL): InvalidAuthorizationSpecificationError: "
            'role "ipsx_no_such_role" does not exist',
        ),
    ],
    ids=["refused", "no-role"],
)
def test_chain_services_name_a_database_they_cannot_use_in_one_line(
    deployed: Deployed, base_env: dict[str, str], database: str, message: str
) -> None:
    # (A database that does not exist is created by the services, refused by reconcile: see
    # test_reconcile_reads_the_database_as_it_is_and_creates_none.)
    common = ("--rpc", deployed.rpc, "--deployment", str(deployed.path))
    for command in (("chain", "watch"), ("chain", "anchor"), ("reconcile",)):
        result = ipsx(*command, *common, env={**base_env, "IPSX_DATABASE_URL": database})
        assert result.returncode == 2, (command, result.stdout + result.stderr)
        assert message in result.stderr, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)
        assert "sekret" not in result.stderr and "Traceback" not in result.stderr
