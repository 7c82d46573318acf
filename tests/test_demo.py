"""``ipsx demo --once`` on the embedded services and a real chain (anvil, as ``make setup``
installs it): the user's first command, run for real, paid for on-chain end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from ipsx.demo_chain import anvil_command

ANVIL = anvil_command() is not None
CHANNEL = r"channel (0x[0-9a-f]{64})"


def _embedded_env() -> dict[str, str]:
    """The environment without service URLs: the demo then embeds PostgreSQL and Redis."""
    return {k: v for k, v in os.environ.items() if k not in ("IPSX_DATABASE_URL", "IPSX_REDIS_URL")}


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
    assert re.search(r"export http_proxy=http://demo:ipsx_\w+_\S+@127\.0\.0\.1:\d+", out)
    assert "SOCKS_PROXY=socks5h://demo:" in out

    state = json.loads((data_dir / "demo.json").read_text())
    assert state["account"] == "demo"
    assert state["http_proxy"].startswith("http://demo:" + state["secret"] + "@127.0.0.1:")
    assert (data_dir / "demo.json").stat().st_mode & 0o077 == 0  # the secret file is private
    assert state["secret"] not in result.stderr  # never in a log line

    assert "demo balance:   1000 IPSX" in out
    assert "Traceback" not in result.stderr
    if ANVIL:
        _assert_paid_on_chain(out, data_dir, first_run=True)
    else:
        assert "on-chain payments are off: anvil is not installed" in out

    # A second run reuses the data dir: the same account and key, funded once only.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((data_dir / "demo.json").read_text())["secret"] == state["secret"]
    assert "Traceback" not in again.stderr
    if ANVIL:
        # The chain kept its state in the data dir: the same contracts and channel, and the
        # balance is the one deposit less what the first run's deals cost.
        _assert_paid_on_chain(again.stdout, data_dir, first_run=False)
        assert re.findall(CHANNEL + " opened", out)[0] == re.findall(CHANNEL + " opened", again.stdout)[0]
        balance = re.search(r"demo balance:   ([\d.]+) IPSX", again.stdout)
        assert balance is not None
        assert Decimal(999) < Decimal(balance.group(1)) < Decimal(1000)
    else:
        assert "demo balance:   1000 IPSX" in again.stdout


def _assert_paid_on_chain(out: str, data_dir: Path, *, first_run: bool) -> None:
    """The demo deployed (or found) the contracts, opened (or found) the requester's channel, the
    watcher credited its deposit, and the deal ``--once`` bought was invoiced and paid."""
    deployment = json.loads((data_dir / "chain.json").read_text())
    channels_address = deployment["contracts"]["PaymentChannels"]
    assert re.search(r"chain: anvil at http://127\.0\.0\.1:\d+", out), out
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
        proxy = re.search(r"export http_proxy=(\S+)", text)
        origin = re.search(r"curl (http://127\.0\.0\.1:\d+/ip)", text)
        assert proxy is not None and origin is not None, text
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
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err[-2000:]
    assert "PostgreSQL stopped" in err and "Redis stopped" in err
    assert "Traceback" not in err
    anvil = re.search(r"chain: anvil at http://127\.0\.0\.1:(\d+)", text)
    if ANVIL:
        assert anvil is not None, text
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", int(anvil[1]))):
            pass  # anvil was stopped with the demo
        assert (tmp_path / "state" / "chain" / "anvil-state.json").exists()  # written as it stopped
