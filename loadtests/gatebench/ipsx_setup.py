"""The IPSX side of the benchmark, set up once before the first run: which code is measured
(a ``git archive`` snapshot of HEAD, or the working tree), the database and the requester
account with its API key, the provider's wallet, and for the paying market target a local chain
(anvil), the contracts and a requester paying over a channel. Also what touches IPSX's storage
between runs: flushing Redis, forgetting an old chain, counting deals and invoices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import ANVIL, ANVIL_PORT, MARKET_TARGETS, PAYER_FUNDS, REPO, VENV_BIN
from .procs import PROCS, StartError, child_env, wait_port


@dataclass
class IpsxSetup:
    """The IPSX side of the benchmark, set up once and shared by every IPSX run: the code measured,
    the requester account ``bench`` with its API key, the provider's wallet and, for the paying
    target, the chain and its paying requester. :meth:`prepare` records a failure in
    ``setup_error`` instead of raising, so that the other targets still run."""

    args: argparse.Namespace
    work: Path
    logs: Path
    targets: list[str] = field(default_factory=list)
    secret: str | None = field(default=None, repr=False)  # the API key of the account 'bench'
    setup_error: str | None = None
    wallet: Path | None = None  # the provider agent's key
    src: Path | None = None  # a snapshot of the code measured (None: the installed tree)
    code: dict[str, Any] = field(default_factory=dict)  # which code: see pin_code()
    # the paying market target: the chain and the paying requester
    anvil: subprocess.Popen[bytes] | None = None
    rpc: str = ""
    operator_key: str = field(default="", repr=False)
    deployment: Path | None = None
    payer_wallet: Path | None = None
    payer_name: str = ""
    payer_secret: str = field(default="", repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The environment of every IPSX process: database, Redis, and the snapshot if any."""
        env = {"IPSX_DATABASE_URL": self.args.database_url, "IPSX_REDIS_URL": self.args.redis_url}
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        return env

    @property
    def command(self) -> list[str]:
        """How to run ``ipsx``: from the snapshot, else the installed script."""
        if self.src is not None:
            return [sys.executable, "-m", "ipsx"]
        return [str(VENV_BIN / "ipsx")]

    def pin_code(self) -> None:
        """Decide which IPSX code every run measures, and record it.

        Others commit to the repository while a benchmark runs; with ``--ipsx-code head`` (the
        default) the committed HEAD is exported once with ``git archive`` (read-only for the
        repository) and every IPSX process of every run imports that snapshot.
        """
        git = ["git", "-C", str(REPO)]

        def out(*argv: str) -> str:
            done = subprocess.run([*git, *argv], capture_output=True, timeout=30, check=False)
            return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else ""

        commit = out("rev-parse", "HEAD")
        self.code = {
            "mode": self.args.ipsx_code,
            "commit": commit,
            "subject": out("log", "-1", "--format=%s", "HEAD"),
            "commit_date": out("log", "-1", "--format=%cI", "HEAD"),
        }
        if self.args.ipsx_code == "worktree" or not commit:
            changed = out("status", "--porcelain", "--", "gateway", "ipsx", "billing", "pool")
            self.code["mode"] = "worktree"
            self.code["uncommitted"] = changed.splitlines()
            return
        src = self.work / "ipsx-src"
        src.mkdir()
        archive = subprocess.run([*git, "archive", "--format=tar", commit], capture_output=True, timeout=60)
        if archive.returncode != 0:
            raise StartError(f"git archive failed: {archive.stderr.decode()[-300:]}")
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True, timeout=60)
        self.src = src
        probe = subprocess.run(
            [sys.executable, "-c", "import gateway, ipsx; print(gateway.__file__)"],
            capture_output=True,
            timeout=30,
            env=child_env(self.env),
            cwd=self.work,
            check=False,
        )
        where = probe.stdout.decode().strip()
        if not where.startswith(str(src)):
            raise StartError(
                f"the snapshot is not what gets imported ({where or probe.stderr.decode()[-200:]})"
            )

    def cli(self, *argv: str, timeout: float = 60, extra_env: dict[str, str] | None = None) -> str:
        """``ipsx <argv>``'s standard output; raises :class:`StartError` if it fails."""
        done = subprocess.run(
            [*self.command, *argv],
            capture_output=True,
            timeout=timeout,
            env=child_env({**self.env, **(extra_env or {})}),
            cwd=self.work,
            check=False,
        )
        if done.returncode != 0:
            raise StartError(f"ipsx {' '.join(argv[:2])} failed: {done.stderr.decode().strip()[-400:]}")
        return done.stdout.decode()

    def prepare(self) -> None:
        """Migrate the database, create the account 'bench' (if new), an API key and the
        provider's wallet; credit 'bench' for the market targets; set up the chain for the paying
        one. A failure is kept in ``setup_error``."""
        try:
            self.cli("migrate")
            names = {line.split()[0] for line in self.cli("account", "list").splitlines() if line.strip()}
            if "bench" not in names:
                address = "0x" + secrets.token_hex(20)
                self.cli("account", "create", "--address", address, "--name", "bench")
            out = self.cli("key", "create", "bench", "--label", "loadtests/bench_gateway.py")
            match = re.search(r"secret:\s*(\S+)", out)
            if match is None:
                raise StartError(f"no secret in the output of 'ipsx key create': {out[:200]!r}")
            self.secret = match.group(1)
            self.wallet = self.work / "wallet.key"
            self.cli("wallet", "new", "--out", str(self.wallet))
            if any(t in MARKET_TARGETS for t in self.targets):
                self.cli("account", "credit", "bench", str(PAYER_FUNDS), "--reference", "bench-market-funds")
            if "ipsx-market-paid" in self.targets:
                self.setup_chain()
        except (StartError, subprocess.TimeoutExpired, OSError) as error:
            self.setup_error = str(error)

    def setup_chain(self) -> None:
        """For the paying target, once: anvil, the contracts, and a requester (``pay<hex>``) whose
        channel to the operator funds it, credited by the chain watcher of the first run."""
        from web3 import Web3

        if not ANVIL.exists():
            raise StartError(f"{ANVIL} is missing (make setup installs it)")
        self.forget_chain()  # a new anvil redeploys at the same addresses: the old chain's state must go
        config = self.work / "anvil.json"
        anvil = PROCS.start(
            "anvil",
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(ANVIL_PORT), "--config-out", str(config)],
            self.logs / "anvil.log",
        )
        wait_port(ANVIL_PORT, [anvil], 30)
        self.anvil = anvil
        self.rpc = f"http://127.0.0.1:{ANVIL_PORT}"
        self.operator_key = json.loads(config.read_text())["private_keys"][0]
        self.deployment = self.work / "chain.json"
        self.cli(
            "chain", "deploy", "--rpc", self.rpc, "--out", str(self.deployment), "--sale-duration", "60",
            timeout=180, extra_env={"IPSX_OPERATOR_KEY": self.operator_key},
        )  # fmt: skip
        record = json.loads(self.deployment.read_text())
        w3 = Web3(Web3.HTTPProvider(self.rpc))
        operator = w3.eth.accounts[0]  # anvil holds its key: it is the deployment's operator
        w3.provider.make_request("evm_increaseTime", [61])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        abi = {name: json.loads((REPO / "contracts" / "artifacts" / f"{name}.json").read_text())["abi"]
               for name in ("TokenSale", "IPSXToken")}  # fmt: skip
        sale = w3.eth.contract(address=record["contracts"]["TokenSale"], abi=abi["TokenSale"])
        token = w3.eth.contract(address=record["contracts"]["IPSXToken"], abi=abi["IPSXToken"])
        w3.eth.wait_for_transaction_receipt(sale.functions.finalize().transact({"from": operator}))
        self.payer_wallet = self.work / "payer.key"
        payer = self.cli("wallet", "new", "--out", str(self.payer_wallet)).split()[1]
        self.payer_name = f"pay{secrets.token_hex(4)}"  # a new wallet each benchmark: a new account
        self.cli("account", "create", "--address", payer, "--name", self.payer_name)
        match = re.search(r"secret:\s*(\S+)", self.cli("key", "create", self.payer_name))
        if match is None:
            raise StartError(f"no secret for {self.payer_name}")
        self.payer_secret = match.group(1)
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_transaction({"from": operator, "to": payer, "value": 10**19})
        )
        w3.eth.wait_for_transaction_receipt(
            token.functions.transfer(payer, PAYER_FUNDS * 10**18).transact({"from": operator})
        )
        self.cli(
            "channel", "open", "--key", str(self.payer_wallet), "--rpc", self.rpc,
            "--deployment", str(self.deployment), "--deposit", str(PAYER_FUNDS), timeout=120,
        )  # fmt: skip
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # its one confirmation

    def flush_redis(self) -> None:
        """Empty the benchmark's Redis database, so that no run inherits another's state."""
        import redis

        client = redis.Redis.from_url(self.args.redis_url, socket_timeout=10)
        try:
            client.flushdb()
        finally:
            client.close()

    def forget_chain(self) -> None:
        """Forget what an earlier benchmark's chain left in the benchmark's database."""
        import asyncpg

        async def truncate() -> None:
            conn = await asyncpg.connect(self.args.database_url)
            try:
                await conn.execute(
                    "TRUNCATE chain_cursors, chain_logs, invoiced_deals, invoices, channels CASCADE"
                )
            finally:
                await conn.close()

        asyncio.run(truncate())

    def market_activity(self) -> dict[str, int]:
        """Deals, invoices and paid invoices so far: the market and payments did run."""
        import asyncpg

        async def counts() -> dict[str, int]:
            conn = await asyncpg.connect(self.args.database_url)
            try:
                row = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM deals) AS deals,"
                    " (SELECT count(*) FROM deals WHERE state = 'settled') AS settled,"
                    " (SELECT count(*) FROM invoices) AS invoices,"
                    " (SELECT count(*) FROM invoices WHERE state = 'paid') AS paid"
                )
                return {key: int(row[key]) for key in ("deals", "settled", "invoices", "paid")}
            finally:
                await conn.close()

        return asyncio.run(counts())


def describe_code(code: dict[str, Any]) -> str:
    """One line on the code measured, from :meth:`IpsxSetup.pin_code`'s record ("n/a": none)."""
    if not code:
        return "n/a"
    text = f"{code.get('mode')}: commit {code.get('commit', '')[:10]} ({code.get('subject', '')})"
    if code.get("uncommitted"):
        text += f" + {len(code['uncommitted'])} uncommitted file(s)"
    return text
