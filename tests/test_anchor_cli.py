"""``ipsx chain anchor``, ``GET /v1/deals/{id}/anchor`` and ``ipsx verify`` as people run them: the
real CLI and API in subprocesses, against this module's own anvil (a free loopback port), scratch
PostgreSQL database and Redis db 14.

The contracts are deployed by ``ipsx chain deploy`` from a fresh operator wallet the node does not
hold; settled deals are inserted as the market leaves them. Conditions that depend on another
process are waited for with a generous deadline; no test asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis
from eth_account import Account
from eth_account.signers.local import LocalAccount

from contracts.deploy import contract_at
from tests.billing.conftest import create_and_migrate, drop_database
from tests.contracts.chain import Chain, anvil_chain
from tests.e2e.conftest import free_port

TOKEN = 10**18
WAIT = 30.0  # seconds another process gets to reach a state (a deadline, not a measurement)
REDIS_URL = os.environ.get("IPSX_TEST_ANCHOR_REDIS_URL", "redis://127.0.0.1:6379/5")
PARTIES = {  # alice requests, bob provides, carol is no party to the deals
    "alice": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "bob": "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "carol": "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
}


def ipsx(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ipsx", *args], capture_output=True, text=True, timeout=60, env=env
    )


def sql(url: str, query: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


_SETTLED = 1_764_000_000


def settle(url: str, count: int) -> list[str]:
    """``count`` deals of alice (requester) and bob (provider) as the market leaves them settled."""
    global _SETTLED
    ids = []
    for _ in range(count):
        _SETTLED += 1
        deal_id = f"r{_SETTLED}_1"
        sql(
            url,
            "INSERT INTO deals (deal_id, request_id, offer_id, requester, provider, exit_id, price_per_gb,"
            " price_per_hour, reserve, duration_s, traffic_bytes, dedicated, state, record, charge,"
            " commission, billable_bytes) VALUES ($1, 'r', 'o', 'alice', 'bob', 'exit-1', $2, 0, $3, 60,"
            " 0, false, 'settled', $4::jsonb, $5, $6, $7)",
            deal_id, 2 * TOKEN, 5 * TOKEN, orjson.dumps({"settled_at": _SETTLED}).decode(), TOKEN,
            TOKEN // 10, 500_000_000,
        )  # fmt: skip
        ids.append(deal_id)
    return ids


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT} s")
        time.sleep(0.05)


@dataclass
class Setup:
    chain: Chain
    operator: LocalAccount
    deployment: Path
    database_url: str
    env: dict[str, str]  # the operator's: database and key
    api: str
    keys: dict[str, str]  # account name (and "operator") -> API key secret
    deals: list[str]  # settled before the first batch

    @property
    def rpc(self) -> str:
        return str(self.chain.w3.provider.endpoint_uri)  # type: ignore[attr-defined]

    def verify(self, deal: str, who: str = "alice", *extra: str) -> subprocess.CompletedProcess[str]:
        args = ("verify", deal, "--api", self.api, "--token", self.keys[who], "--rpc", self.rpc)
        return ipsx(*args, "--deployment", str(self.deployment), *extra, env=self.env)

    def anchor(self) -> Any:
        record = json.loads(self.deployment.read_text())
        return contract_at(self.chain.w3, "DealAnchor", record["contracts"]["DealAnchor"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("anchor-cli")
    name = f"ipsx_test_anchor_cli_{os.getpid()}"
    database_url = asyncio.run(create_and_migrate(name))
    redis.Redis.from_url(REDIS_URL).flushdb()
    server = None
    try:
        with anvil_chain(folder) as chain:
            operator: LocalAccount = Account.create()
            tx = chain.w3.eth.send_transaction(
                {"from": chain.accounts[0], "to": operator.address, "value": TOKEN}
            )
            chain.w3.eth.wait_for_transaction_receipt(tx, timeout=30)
            base = {key: value for key, value in os.environ.items() if not key.startswith("IPSX_")}
            env = {**base, "IPSX_DATABASE_URL": database_url, "IPSX_OPERATOR_KEY": operator.key.hex()}
            deployment = folder / "chain.json"
            rpc = str(chain.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
            deployed = ipsx("chain", "deploy", "--rpc", rpc, "--out", str(deployment), env=env)
            assert deployed.returncode == 0, deployed.stderr
            keys = {}
            for account, address in PARTIES.items():
                assert (
                    ipsx("account", "create", "--address", address, "--name", account, env=env).returncode
                    == 0
                )
                keys[account] = _secret(ipsx("key", "create", account, env=env))
            keys["operator"] = _secret(ipsx("key", "create", "carol", "--scopes", "operator,read", env=env))
            port = free_port()
            api_env = {**base, "IPSX_DATABASE_URL": database_url, "IPSX_REDIS_URL": REDIS_URL,
                       "IPSX_JWT_SECRET": secrets.token_urlsafe(32)}  # fmt: skip
            with (folder / "api.log").open("wb") as log:
                server = subprocess.Popen(
                    [sys.executable, "-m", "ipsx", "api", "--port", str(port)],
                    env=api_env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            api = f"http://127.0.0.1:{port}"
            wait_until(lambda: _healthy(api), "API up")
            deals = settle(database_url, 3)
            yield Setup(chain, operator, deployment, database_url, env, api, keys, deals)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=10)
        asyncio.run(drop_database(name))


def _secret(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"secret: (\S+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    return found.group(1)


def _healthy(api: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{api}/healthz", timeout=1).status_code == 200
    return False


@pytest.fixture(scope="module")
def anchored(setup: Setup) -> subprocess.CompletedProcess[str]:
    """``ipsx chain anchor --once`` over the three settled deals."""
    args = ("chain", "anchor", "--once", "--rpc", setup.rpc, "--deployment", str(setup.deployment))
    return ipsx(*args, "--confirmations", "0", env=setup.env)


# ---- ipsx chain anchor ---------------------------------------------------------------------------


def test_anchor_once_call_posts_one_batch(setup: Setup, anchored: subprocess.CompletedProcess[str]) -> None:
    assert anchored.returncode == 0, anchored.stderr
    assert re.search(
        r"^batch 1 anchored: 3 deals, root 0x[0-9a-f]{64}, tx 0x[0-9a-f]{64}$", anchored.stdout, re.M
    )
    root, count, _, total_amount, total_bytes = setup.anchor().functions.getBatch(1).call()
    assert (count, total_amount, total_bytes) == (3, 3 * TOKEN, 1_500_000_000)
    assert f"root 0x{bytes(root).hex()}" in anchored.stdout
    assert setup.operator.key.hex().removeprefix("0x") not in anchored.stdout + anchored.stderr


def test_anchor_runs_until_sigterm(
    setup: Setup, anchored: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    args = ("--rpc", setup.rpc, "--deployment", str(setup.deployment), "--interval", "0.05",
            "--confirmations", "0")  # fmt: skip
    with (tmp_path / "anchor.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ipsx", "chain", "anchor", *args],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=setup.env,
        )  # fmt: skip
    try:
        batches = setup.anchor().functions.batchCount().call()
        (later,) = settle(setup.database_url, 1)
        wait_until(lambda: setup.anchor().functions.batchCount().call() == batches + 1, "a new batch", proc)
        wait_until(
            lambda: (
                sql(setup.database_url, "SELECT count(*) FROM anchor_batches WHERE state = 'anchored'")
                == batches + 1
            ),
            "the batch recorded",
            proc,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "anchor.log").read_text()
    assert "anchoring to DealAnchor" in text and "Traceback" not in text
    assert setup.verify(later).returncode == 0
    nothing = ipsx("chain", "anchor", "--once", "--rpc", setup.rpc, "--deployment", str(setup.deployment),
                   "--confirmations", "0", env=setup.env)  # fmt: skip
    assert nothing.returncode == 0 and nothing.stdout.startswith("nothing to anchor")


def test_anchor_once_waits_for_its_confirmations_and_says_so(setup: Setup, tmp_path: Path) -> None:
    (later,) = settle(setup.database_url, 1)
    args = ("chain", "anchor", "--once", "--rpc", setup.rpc, "--deployment", str(setup.deployment),
            "--confirmations", "3", "--interval", "0.2")  # fmt: skip
    with (tmp_path / "anchor.out").open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ipsx", *args], stdout=out, stderr=subprocess.PIPE,
                                text=True, env=setup.env)  # fmt: skip
    try:
        wait_until(lambda: "waiting for its confirmations" in (tmp_path / "anchor.out").read_text(),
                   "the batch mined", proc)  # fmt: skip
        assert proc.poll() is None  # still waiting: the proof is not served before the batch counts
        assert setup.verify(later).returncode != 0
        for _ in range(3):
            setup.chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    text = (tmp_path / "anchor.out").read_text()
    assert re.search(r"batch \d+ mined in block \d+, tx 0x[0-9a-f]{64}: waiting for its confirmations", text)
    assert re.search(r"batch \d+ anchored: 1 deals", text), text
    assert setup.verify(later).returncode == 0


def test_anchor_refuses_a_key_that_does_not_own_the_contract(setup: Setup) -> None:
    other = Account.create().key.hex()
    args = ("chain", "anchor", "--once", "--rpc", setup.rpc, "--deployment", str(setup.deployment))
    result = ipsx(*args, env={**setup.env, "IPSX_OPERATOR_KEY": other})
    assert result.returncode == 2
    assert "is owned by " + setup.operator.address in result.stderr
    assert "Traceback" not in result.stderr and other.removeprefix("0x") not in result.stderr


# ---- the API -------------------------------------------------------------------------------------


def test_get_anchor_state_for_the_parties_and_operators_only(
    setup: Setup, anchored: subprocess.CompletedProcess[str]
) -> None:
    deal = setup.deals[0]
    for who in ("alice", "bob", "operator"):
        response = httpx.get(f"{setup.api}/v1/deals/{deal}/anchor", headers=_auth(setup, who), timeout=10)
        assert response.status_code == 200, (who, response.text)
        body = response.json()
        assert body["batch_id"] == 1 and body["record_count"] == 3
        assert body["record"]["charge"] == str(TOKEN) and body["record"]["requester"] == "alice"
        assert body["contract"] == json.loads(setup.deployment.read_text())["contracts"]["DealAnchor"]
        assert body["chain_id"] == setup.chain.chain_id
    carol = httpx.get(f"{setup.api}/v1/deals/{deal}/anchor", headers=_auth(setup, "carol"), timeout=10)
    assert carol.status_code == 404
    anonymous = httpx.get(f"{setup.api}/v1/deals/{deal}/anchor", timeout=10)
    assert anonymous.status_code == 401


def _auth(setup: Setup, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {setup.keys[who]}"}


# ---- ipsx verify ---------------------------------------------------------------------------------


def test_verify_call_ok(setup: Setup, anchored: subprocess.CompletedProcess[str]) -> None:
    for who in ("alice", "bob"):
        result = setup.verify(setup.deals[1], who)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "FAIL" not in result.stdout
        for check in ("record", "leaf", "off-chain", "chain", "batch root", "on-chain"):
            assert f"  ok    {check}: " in result.stdout
        assert result.stdout.splitlines()[-1].startswith(f"VERIFIED: deal {setup.deals[1]} is in batch 1")


def test_verify_tampered_record_exits_1(setup: Setup, anchored: subprocess.CompletedProcess[str]) -> None:
    deal = setup.deals[2]
    sql(setup.database_url, "UPDATE deals SET charge = charge + 1 WHERE deal_id = $1", deal)
    try:
        result = setup.verify(deal)
    finally:
        sql(setup.database_url, "UPDATE deals SET charge = charge - 1 WHERE deal_id = $1", deal)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "  FAIL  leaf: the record hashes to 0x" in result.stdout
    assert re.search(r"  FAIL  off-chain: the proof \(\d hashes\) does not lead to root 0x", result.stdout)
    assert "  FAIL  on-chain: DealAnchor.verify(batch 1, leaf, proof) = false" in result.stdout
    assert result.stdout.splitlines()[-1] == f"NOT VERIFIED: deal {deal}"
    assert setup.verify(deal).returncode == 0  # restored, it verifies again


def test_verify_not_anchored_or_not_yours_exits_1(
    setup: Setup, anchored: subprocess.CompletedProcess[str]
) -> None:
    for deal, who in ((setup.deals[0], "carol"), ("no-such-deal", "alice")):
        result = setup.verify(deal, who)
        assert result.returncode == 1
        assert "FAIL  anchored: the API has no anchored batch with this deal" in result.stdout
        assert "Traceback" not in result.stderr


def test_verify_errors_exit_2(setup: Setup) -> None:
    unreachable = ipsx("verify", "d", "--api", "http://127.0.0.1:1", "--token", "t", env=setup.env)
    assert (
        unreachable.returncode == 2
        and "cannot get the anchor proof from http://127.0.0.1:1" in unreachable.stderr
    )
    missing = setup.verify(setup.deals[0], "alice", "--deployment", "/nonexistent/chain.json")
    assert missing.returncode == 2 and "no deployment file /nonexistent/chain.json" in missing.stderr
    for result in (unreachable, missing):
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [("chain", "anchor"), ("verify",)])
def test_anchor_commands_have_help(command: tuple[str, ...]) -> None:
    result = ipsx(*command, "--help", env=dict(os.environ))
    assert result.returncode == 0
    assert result.stdout.startswith("usage: ipsx " + " ".join(command))
    assert "--rpc URL" in result.stdout


def test_reconcile_checks_anchored_batches_against_the_chain_and_the_deals(
    setup: Setup, anchored: subprocess.CompletedProcess[str]
) -> None:
    args = ("reconcile", "--rpc", setup.rpc, "--deployment", str(setup.deployment))
    clean = ipsx(*args, env=setup.env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "anchored batch 1: total charged" in clean.stdout
    deal = setup.deals[0]
    sql(setup.database_url, "UPDATE deals SET charge = charge + 7 WHERE deal_id = $1", deal)
    try:
        tampered = ipsx(*args, env=setup.env)
    finally:
        sql(setup.database_url, "UPDATE deals SET charge = charge - 7 WHERE deal_id = $1", deal)
    assert tampered.returncode == 1
    failing = [line.strip() for line in tampered.stdout.splitlines() if line.strip().startswith("MISMATCH  ")]
    assert len(failing) == 1 and "anchored batch 1: its deals' charges now" in failing[0], tampered.stdout
