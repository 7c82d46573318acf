"""``ipsx demo --once`` on the embedded services and a real chain (anvil, as ``make setup``
installs it): the user's first command, run for real, paid for on-chain end to end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from contracts.deploy import contract_at
from contracts.proofs import DOMAIN_NAME, DOMAIN_VERSION
from ipsx.demo import curl_command, without_password
from ipsx.demo_chain import (
    DEMO_DEPOSIT,
    PAYOUT_DEPOSIT,
    ChainUnavailable,
    DemoChain,
    anvil_command,
    choose_node,
    prepare,
    running_node,
)
from tests.contracts.chain import channels_with_domain
from tests.processes import process_tree_argv

ANVIL = anvil_command() is not None
CHANNEL = r"channel (0x[0-9a-f]{64})"


def _embedded_env() -> dict[str, str]:
    """The environment without service URLs: the demo then embeds PostgreSQL and Redis."""
    return {k: v for k, v in os.environ.items() if k not in ("IPSX_DATABASE_URL", "IPSX_REDIS_URL")}


def _service_passwords(data_dir: Path) -> list[str]:
    """The embedded PostgreSQL's and Redis's passwords, from their 0600 files in the data dir."""
    files = [data_dir / "postgres" / "postgres.password", data_dir / "redis" / "redis.password"]
    for path in files:
        assert path.stat().st_mode & 0o077 == 0
    return [path.read_text().strip() for path in files]


def _demo_command(data_dir: Path, *extra: str) -> list[str]:
    """``ipsx demo`` in ``data_dir`` with every port chosen by the system."""
    ports = [arg for name in ("http", "socks", "tunnel", "origin", "api") for arg in (f"--{name}-port", "0")]
    return [sys.executable, "-m", "ipsx", "demo", *extra, "--data-dir", str(data_dir), *ports]


@pytest.mark.timeout(240)
def test_demo_once_relays_through_demo_exits_and_meters_it(tmp_path: Path) -> None:
    env = _embedded_env()
    data_dir = tmp_path / "state"
    command = _demo_command(data_dir, "--once")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    via_http = re.search(r"via HTTP proxy: (\S+)", out)
    via_socks = re.search(r"via SOCKS5:\s+(\S+)", out)
    assert via_http is not None and via_http.group(1) in {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    assert via_socks is not None and via_socks.group(1) in {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    # Each stream was carried by a deal: the spot deals the demo market opened for the traffic.
    assert (
        len(re.findall(r"metered: (http|socks5)\s+exit \w+ deal (?!None)\w+ up \d+ B down \d+ B", out)) == 2
    )
    assert "Ctrl-C stops everything" not in out  # no banner of URLs that stop working at once

    state = json.loads((data_dir / "demo.json").read_text())
    assert state["account"] == "demo"
    assert state["http_proxy"].startswith("http://demo:" + state["secret"] + "@127.0.0.1:")
    for private in ("demo.json", "demo.env"):  # the secret files are private
        assert (data_dir / private).stat().st_mode & 0o077 == 0
    assert state["secret"] not in result.stderr  # never in a log line
    for password in _service_passwords(data_dir):
        assert password not in out and password not in result.stderr
    assert state["database_url"].startswith("postgresql://ipsx:")  # the full URLs are in the files only
    settings = _env_file(data_dir)
    assert (settings["IPSX_TOKEN"], settings["IPSX_API_URL"]) == (state["secret"], state["api"])
    assert settings["IPSX_DATABASE_URL"] == state["database_url"]

    assert "demo balance:   1000 IPSX" in out
    assert "Traceback" not in result.stderr
    _assert_paid_on_chain(out, data_dir, first_run=True)  # on anvil, or on ipsx devchain without it

    # A second run reuses the data dir: the same account and key, funded once only. It runs in a
    # shell that loaded demo.env: the first run's embedded servers' URLs are started again, not
    # taken for configured services.
    again = subprocess.run(
        command, env={**env, **_env_file(data_dir)}, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((data_dir / "demo.json").read_text())["secret"] == state["secret"]
    assert "Traceback" not in again.stderr
    # The chain kept its state in the data dir: the same contracts and channel, and the balance
    # is the one deposit less what the first run's deals cost.
    _assert_paid_on_chain(again.stdout, data_dir, first_run=False)
    assert re.findall(CHANNEL + " opened", out)[0] == re.findall(CHANNEL + " opened", again.stdout)[0]
    balance = re.search(r"demo balance:   ([\d.]+) IPSX", again.stdout)
    assert balance is not None
    assert Decimal(999) < Decimal(balance.group(1)) < Decimal(1000)


def _assert_paid_on_chain(out: str, data_dir: Path, *, first_run: bool) -> None:
    """The demo deployed (or found) the contracts, opened (or found) the requester's channel, the
    watcher credited its deposit, and the deal ``--once`` bought was invoiced and paid."""
    deployment = json.loads((data_dir / "chain.json").read_text())
    channels_address = deployment["contracts"]["PaymentChannels"]
    assert re.search(r"chain: (anvil|devchain) at http://127\.0\.0\.1:\d+", out), out
    assert f"PaymentChannels  {channels_address}" in out
    earlier = "" if first_run else " by an earlier run"
    assert f"contracts deployed{earlier} on chain {deployment['chain_id']}" in out
    opened = re.search(CHANNEL + f" opened{earlier}: demo wallet 0x[0-9a-fA-F]{{40}} -> operator ", out)
    assert opened is not None, out
    assert opened.group(1) == deployment["demo_channel"]["channel_id"]
    assert "deposit credited by the chain watcher: 1000 IPSX to demo's account" in out
    # The payment agent signed a balance proof for the invoice of the deal, and the API took it.
    paid = re.search(r"invoice (\d+) paid with a balance proof: [\d.]+ IPSX for \d+ deal\(s\), "
                     r"cumulative ([\d.]+) IPSX on " + CHANNEL, out)  # fmt: skip
    assert paid is not None, out
    assert paid.group(3) == opened.group(1)
    agent = r"payment agent: paid invoice \d+ \([\d.]+ IPSX\) with a balance proof of ([\d.]+) IPSX on "
    signed = [Decimal(balance) for balance in re.findall(agent + f"channel {opened.group(1)}", out)]
    assert signed and max(signed) >= Decimal(paid.group(2)), out  # that proof, or a later one
    assert Decimal(paid.group(2)) > 0
    # The hub promised the providers their earnings over its payout channels.
    assert re.search(r"payout: the operator signed a balance proof of [\d.]+ IPSX to provider 0x", out), out


@pytest.mark.timeout(120)
def _assert_dashboard_shows_the_traffic(banner: str) -> None:
    """The dashboard the banner names: "Enter the demo" signs in, and the overview counts the
    requests just made (on the demo's embedded Redis and PostgreSQL)."""
    found = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+)/", banner)
    assert found is not None, banner
    with httpx.Client(base_url=found.group(1), timeout=10) as browser:
        page = browser.get("/signin")
        assert page.status_code == 200 and "Enter the demo" in page.text
        token = re.search(r'name="signin_token" value="([^"]+)"', page.text)
        assert token is not None
        entered = browser.post("/signin/demo", data={"signin_token": token.group(1)})
        assert entered.status_code in (302, 303), entered.text
        deadline = time.monotonic() + 20
        while True:  # the worker ingests the streams within a second or two
            overview = browser.get("/web/overview")
            assert overview.status_code == 200
            shown = re.search(r'data-requests-today="(\d+)"', overview.text)
            if (shown is not None and int(shown.group(1)) >= 6) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert shown is not None and int(shown.group(1)) >= 6, overview.text[:2000]


def test_demo_serves_until_ctrl_c_then_stops_everything(tmp_path: Path) -> None:
    env = _embedded_env()
    command = _demo_command(tmp_path / "state")
    demo = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        assert demo.stdout is not None
        for line in demo.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        proxy = re.search(r"export http_proxy=(http://demo:ipsx_\w+_\S+@127\.0\.0\.1:\d+)", text)
        origin = re.search(r"curl (http://127\.0\.0\.1:\d+/ip)", text)
        assert proxy is not None and origin is not None, text
        assert "SOCKS_PROXY=socks5h://demo:" in text
        assert re.search(r'curl -x "http://demo-session-s1:\S+" http://127\.0\.0\.1:\d+/ip', text)
        state = json.loads((tmp_path / "state" / "demo.json").read_text())
        assert f"({without_password(state['database_url'])})" in text
        seen = {
            subprocess.run(
                ["curl", "-sS", "--max-time", "10", "-x", proxy.group(1), origin.group(1)],
                capture_output=True,
                text=True,
                timeout=15,
            ).stdout
            for _ in range(6)
        }
        assert seen == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}  # the three demo exits, in rotation
        _assert_dashboard_shows_the_traffic(text)
        # Nothing the demo started (PostgreSQL and its backends, Redis, the chain node) shows a
        # password or the API secret to other local users in its command line.
        secret = json.loads((tmp_path / "state" / "demo.json").read_text())["secret"]
        passwords = _service_passwords(tmp_path / "state")
        argvs = process_tree_argv(demo.pid)
        assert any("postgres" in argv for argv in argvs) and any("redis-server" in argv for argv in argvs)
        assert not [argv for argv in argvs if any(word in argv for word in (secret, *passwords))], argvs
        assert not [password for password in passwords if password in text]

        # The ipsx commands the banner shows run on the settings of demo.env.
        source = re.search(r"set -a; \. (\S+)/demo\.env; set \+a", text)
        assert source is not None, text
        listed = subprocess.run(
            [sys.executable, "-m", "ipsx", "deals"],
            env={**env, **_env_file(tmp_path / "state")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"\brequester\b", listed.stdout), listed.stdout

        # A second demo on the same data dir is refused in one line; the first keeps serving.
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert second.stderr.startswith("ipsx demo: another ipsx demo is running on "), second.stderr
        assert "Traceback" not in second.stderr
        assert demo.poll() is None
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err[-2000:]

    assert "PostgreSQL stopped" in err and "Redis stopped" in err
    assert "Traceback" not in err
    node = re.search(r"chain: (anvil|devchain) at http://127\.0\.0\.1:(\d+)", text)
    assert node is not None, text
    assert node[1] == ("anvil" if ANVIL else "devchain")
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", int(node[2]))):
        pass  # the chain was stopped with the demo
    state = "anvil-state.json" if ANVIL else "devchain-state.bin"
    assert (tmp_path / "state" / "chain" / state).exists()  # written as it stopped


def _env_file(data_dir: Path) -> dict[str, str]:
    """The variables of the demo's ``demo.env``, read as the shell would."""
    settings: dict[str, str] = {}
    for line in (data_dir / "demo.env").read_text().splitlines():
        name, _, value = line.partition("=")
        (settings[name],) = shlex.split(value)
    return settings


# ---- the demo's chain without anvil: ipsx devchain ---------------------------------------------------

# `ipsx demo --once` with DemoOptions.chain = "devchain" (what `ipsx demo --chain devchain` will run).
DEVCHAIN_DEMO = """
import sys
from pathlib import Path
from ipsx import runtime
from ipsx.demo import DemoOptions, run_demo
from ipsx.settings import Environment
runtime.setup_logging(False)
ports = dict(http_port=0, socks_port=0, tunnel_port=0, origin_port=0, api_port=0)
options = DemoOptions(data_dir=Path(sys.argv[1]), once=True, chain="devchain", **ports)
runtime.run(lambda stop: run_demo(options, Environment.from_env(), stop))
"""


def _channel_on_chain(rpc_url: str, chain: DemoChain) -> tuple[Any, ...]:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    contract = contract_at(w3, "PaymentChannels", chain.channels)
    token = contract_at(w3, "IPSXToken", chain.contracts["IPSXToken"])
    sender, settle_after, receiver, deposit, _ = contract.functions.getChannel(
        bytes.fromhex(chain.channel_id[2:])
    ).call()
    return sender, settle_after, receiver, deposit, token.functions.balanceOf(contract.address).call()


async def test_demo_chain_without_anvil_opens_the_channel_on_the_devchain_and_keeps_it(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "chain"
    node = choose_node(workdir, anvil=None)
    assert node.name == "devchain"
    requester: LocalAccount = Account.create()
    providers = [Account.create().address for _ in range(3)]
    async with running_node(node, workdir) as rpc_url:
        chain = await asyncio.to_thread(prepare, rpc_url, tmp_path, requester, providers)
        on_chain = await asyncio.to_thread(_channel_on_chain, rpc_url, chain)
    assert (chain.chain_id, chain.deployed, chain.opened) == (31337, True, True)
    sender, settle_after, receiver, deposit, locked = on_chain
    assert (sender, settle_after, receiver, deposit) == (requester.address, 0, chain.operator, DEMO_DEPOSIT)
    assert locked == DEMO_DEPOSIT + len(providers) * PAYOUT_DEPOSIT  # and the three payout channels'
    assert (workdir / "devchain-state.bin").exists()  # written as it stopped

    # The data dir keeps its chain on the devchain, even once anvil is installed.
    again_node = choose_node(workdir, anvil=["/nowhere/anvil"])
    assert again_node.name == "devchain"
    async with running_node(again_node, workdir) as rpc_url:
        again = await asyncio.to_thread(prepare, rpc_url, tmp_path, requester, providers)
        assert await asyncio.to_thread(_channel_on_chain, rpc_url, again) == on_chain
    assert (again.deployed, again.opened) == (False, False)
    assert (again.channel_id, again.contracts, again.payout_channels) == (
        chain.channel_id, chain.contracts, chain.payout_channels
    )  # fmt: skip

    # A data dir from a release whose PaymentChannels signs another domain version is refused.
    async with running_node(again_node, workdir) as rpc_url:
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        old = await asyncio.to_thread(
            channels_with_domain, w3, chain.contracts["IPSXToken"], w3.eth.accounts[0], DOMAIN_NAME, "1"
        )
        record = json.loads(chain.deployment_file.read_text())
        record["contracts"]["PaymentChannels"] = old
        chain.deployment_file.write_text(json.dumps(record))
        with pytest.raises(ChainUnavailable) as refused:
            await asyncio.to_thread(prepare, rpc_url, tmp_path, requester, providers)
    assert str(refused.value) == (
        f"the demo chain of {chain.deployment_file} has a PaymentChannels contract this IPSX cannot use "
        f"(it is version '1' and this IPSX signs for version '{DOMAIN_VERSION}'); "
        "remove the data dir to start afresh"
    )


def test_choose_node_keeps_the_node_whose_state_the_data_dir_holds(tmp_path: Path) -> None:
    anvil = ["/opt/anvil"]
    assert choose_node(tmp_path, anvil).name == "anvil"
    assert choose_node(tmp_path, anvil, "devchain").name == "devchain"
    assert choose_node(tmp_path, None).command[1:] == ["-m", "ipsx.devchain"]
    with pytest.raises(ChainUnavailable, match="anvil is not installed"):
        choose_node(tmp_path, None, "anvil")
    (tmp_path / "anvil-state.json").write_text("{}")
    assert choose_node(tmp_path, anvil).command == anvil
    with pytest.raises(ChainUnavailable, match="runs on anvil, which is not installed"):
        choose_node(tmp_path, None)
    with pytest.raises(
        ChainUnavailable, match="runs on anvil; for devchain, give --data-dir a new directory"
    ):
        choose_node(tmp_path, anvil, "devchain")


@pytest.mark.timeout(240)
def test_demo_once_on_the_devchain_is_paid_on_chain_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-c", DEVCHAIN_DEMO, str(data_dir)],
        env=_embedded_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Traceback" not in result.stderr
    node = re.search(r"chain: devchain at http://127\.0\.0\.1:(\d+) ", out)
    assert node is not None, out
    deployment = json.loads((data_dir / "chain.json").read_text())
    assert deployment["chain_id"] == 31337
    assert f"contracts deployed on chain 31337 (recorded in {data_dir / 'chain.json'})" in out
    opened = re.search(CHANNEL + " opened: demo wallet 0x[0-9a-fA-F]{40} -> operator ", out)
    assert opened is not None and opened.group(1) == deployment["demo_channel"]["channel_id"], out
    assert "deposit credited by the chain watcher: 1000 IPSX to demo's account" in out
    paid = re.search(r"invoice \d+ paid with a balance proof: [\d.]+ IPSX for \d+ deal\(s\), "
                     r"cumulative ([\d.]+) IPSX on " + CHANNEL, out)  # fmt: skip
    assert paid is not None and paid.group(2) == opened.group(1), out
    assert Decimal(paid.group(1)) > 0
    assert re.search(r"payout: the operator signed a balance proof of [\d.]+ IPSX to provider 0x", out), out
    # The devchain stopped with the demo, and wrote its state for the next run.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", int(node[1]))):
        pass
    assert (data_dir / "chain" / "devchain-state.bin").exists()


# ---- curl as the demo runs it ------------------------------------------------------------------------


def test_curl_command_call() -> None:
    secret = "ipsx_0123456789ab_s3cr3t-Value"
    argv, config = curl_command(f"http://demo-order-7:{secret}@127.0.0.1:8080", "http://127.0.0.1:18000/ip")
    assert argv == ["curl", "-sS", "-K", "-", "-x", "http://127.0.0.1:8080", "http://127.0.0.1:18000/ip"]
    assert not [arg for arg in argv if secret in arg or "demo" in arg]
    assert config == f'proxy-user = "demo-order-7:{secret}"\n'.encode()
    argv, config = curl_command(f"socks5h://demo:{secret}@127.0.0.1:1080", "http://127.0.0.1:18000/ip")
    assert "socks5h://127.0.0.1:1080" in argv and secret not in " ".join(argv)
    assert secret.encode() in config
    _, config = curl_command("http://a%22b:c%5Cd@127.0.0.1:1/", "http://x/")
    assert config == b'proxy-user = "a\\"b:c\\\\d"\n'  # curl's config quoting


def test_without_password_call() -> None:
    assert (
        without_password("postgresql://ipsx:pw@127.0.0.1:5432/ipsx")
        == "postgresql://ipsx@127.0.0.1:5432/ipsx"
    )
    assert without_password("redis://:pw@127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert without_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def _recording_proxy() -> Iterator[tuple[int, list[bytes]]]:
    """An HTTP proxy on 127.0.0.1 that answers ``ok`` and records each request's head."""
    heads: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                heads.append(head)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], heads
    finally:
        server.close()
        thread.join(5)


@pytest.mark.timeout(30)
def test_curl_command_sends_the_credentials_from_stdin() -> None:
    with _recording_proxy() as (port, heads):
        argv, config = curl_command(f"http://demo:s3cret@127.0.0.1:{port}", "http://origin.invalid/ip")
        result = subprocess.run(argv, input=config, capture_output=True, timeout=15)
    assert result.stdout == b"ok", result.stderr
    expected = base64.b64encode(b"demo:s3cret").decode()
    assert f"Proxy-Authorization: Basic {expected}\r\n".encode() in heads[0]
