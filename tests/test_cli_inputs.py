"""What the command line refuses up front, and what it says instead of a traceback: timeouts,
intervals, counts and ports that are no positive number; key files that are missing, malformed
or readable by others; an Ethereum node's URL (API key in its path) in an error."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from ipsx.cli import build_parser, main
from tests.e2e.conftest import free_port
from tests.loopback_http import send, serving

RPC_SECRET = "MYINFURAKEY0123456789"
ADDRESS = "0x" + "11" * 20
DEPLOYMENT = {
    "chain_id": 1,
    "block": 0,
    "operator": ADDRESS,
    "contracts": {name: ADDRESS for name in ("IPSXToken", "TokenSale", "PaymentChannels", "DealAnchor")},
}


def ipsx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsx", *args], capture_output=True, text=True, timeout=60)


def key_file(path: Path, mode: int = 0o600, text: str | None = None) -> Path:
    path.write_text(Account.create().key.hex() + "\n" if text is None else text)
    path.chmod(mode)
    return path


def channel_open(tmp_path: Path, key: Path, rpc: str) -> subprocess.CompletedProcess[str]:
    deployment = tmp_path / "chain.json"
    deployment.write_text(json.dumps(DEPLOYMENT))
    return ipsx(
        "channel", "open", "--key", str(key), "--deployment", str(deployment), "--rpc", rpc, "--deposit", "1"
    )  # fmt: skip


# -- positive numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["gateway", "--handshake-timeout", "0"], "--handshake-timeout"),
        (["gateway", "--handshake-timeout", "-1"], "--handshake-timeout"),
        (["gateway", "--drain-timeout", "0"], "--drain-timeout"),
        (["gateway", "--drain-timeout", "-5"], "--drain-timeout"),
        (["gateway", "--drain-timeout", "nan"], "--drain-timeout"),
        (["gateway", "--workers", "0"], "--workers"),
        (["gateway", "--http-port", "65536"], "--http-port"),
        (["gateway", "--tunnel-port", "-1"], "--tunnel-port"),
        (["gateway", "--metrics-port", "http"], "--metrics-port"),
        (["gateway", "--db-pool", "0"], "--db-pool"),
        (["worker", "--claim-idle", "0"], "--claim-idle"),
        (["worker", "--batch", "-1"], "--batch"),
        (["api", "--web-live-interval", "0"], "--web-live-interval"),
        (["api", "--web-live-interval", "-0.5"], "--web-live-interval"),
        (["api", "--web-live-interval", "inf"], "--web-live-interval"),
        (["api", "--invoice-interval", "0"], "--invoice-interval"),
        (["api", "--spot-duration", "0"], "--spot-duration"),
        (["api", "--web-signin-limit", "0"], "--web-signin-limit"),
        (["api", "--auth-nonce-limit", "0"], "--auth-nonce-limit"),
        (["api", "--auth-siwe-limit", "-1"], "--auth-siwe-limit"),
        (["api", "--consent-ttl", "0"], "--consent-ttl"),
        (["api", "--port", "99999"], "--port"),
        (["devchain", "--port", "70000"], "--port"),
        (["demo", "--api-port", "65536"], "--api-port"),
        (["provide", "--key", "k", "--payouts-interval", "0"], "--payouts-interval"),
        (["provide", "--key", "k", "--pool-size", "0"], "--pool-size"),
        (["pay", "--key", "k", "--interval", "0"], "--interval"),
    ],
)
def test_a_timeout_interval_count_or_port_that_is_no_positive_number_is_refused_by_argparse(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected a " in err
    assert repr(argv[-1]) in err


def test_positive_numbers_and_ports_are_parsed() -> None:
    gateway = build_parser().parse_args(
        [
            "gateway",
            "--handshake-timeout",
            "2.5",
            "--drain-timeout",
            "1",
            "--http-port",
            "0",
            "--workers",
            "2",
        ]
    )
    assert (gateway.handshake_timeout, gateway.drain_timeout, gateway.http_port, gateway.workers) == (
        2.5,
        1.0,
        0,
        2,
    )
    api = build_parser().parse_args(["api", "--web-live-interval", "0.2", "--port", "65535"])
    assert (api.web_live_interval, api.port) == (0.2, 65535)


def test_health_refuses_a_timeout_of_0_instead_of_calling_a_listening_port_unhealthy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        target = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(SystemExit) as refused:
            main(["health", "--timeout", "0", target])
        assert refused.value.code == 2
        refusal = capsys.readouterr().err
        assert "--timeout" in refusal and "seconds above 0" in refusal
        with pytest.raises(SystemExit) as healthy:
            main(["health", "--timeout", "2", target])
        assert healthy.value.code == 0


# -- the Ethereum node's URL -----------------------------------------------------------------


def test_channel_open_names_an_unreachable_node_without_the_api_key_of_its_url(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = channel_open(
        tmp_path, key_file(tmp_path / "w.key"), f"https://u:pw@127.0.0.1:{port}/v3/{RPC_SECRET}"
    )
    assert result.returncode == 2
    assert (
        "reading the PaymentChannels contract failed talking to the Ethereum node at "
        f"https://127.0.0.1:{port}: ConnectionError"
    ) in result.stderr
    assert RPC_SECRET not in result.stderr and "pw@" not in result.stderr
    assert "Traceback" not in result.stderr


def test_channel_open_names_a_node_refusing_the_api_key_without_that_key(tmp_path: Path) -> None:
    answer = b'{"jsonrpc": "2.0", "id": 1, "error": {"code": -32002, "message": "invalid project id"}}'
    with serving("127.0.0.1", lambda h: send(h, 401, answer)) as node:
        result = channel_open(tmp_path, key_file(tmp_path / "w.key"), f"{node.url}/v3/{RPC_SECRET}")
    assert node.seen and node.seen[0][1] == f"/v3/{RPC_SECRET}"  # it did reach the node
    assert result.returncode == 2
    failed = (
        f"reading the PaymentChannels contract failed talking to the Ethereum node at {node.url}: HTTPError"
    )
    assert failed in result.stderr
    assert RPC_SECRET not in result.stderr


# -- key files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "31140725e105b39c86333b8832844c42e26cb7581441015fe1fd1f933eabd353X",
        "secret words 31140725e105b39c86333b8832844c42e26cb7581441015fe1fd1f933eabd353",
        "31140725e105b39c86333b8832844c42e26cb7581441015fe1fd1f933eabd3",
        '{"crypto": "not a keystore"',
    ],
)
def test_channel_open_with_a_malformed_key_file_names_the_file_not_the_key(tmp_path: Path, text: str) -> None:
    bad = key_file(tmp_path / "bad.key", text=text)
    result = channel_open(tmp_path, bad, "http://127.0.0.1:1")
    assert result.returncode == 2
    assert f"ipsx channel: cannot load the wallet key from {bad}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert "31140725e105" not in result.stderr and "secret words" not in result.stderr


def test_channel_open_with_a_missing_key_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "absent.key"
    result = channel_open(tmp_path, missing, "http://127.0.0.1:1")
    assert result.returncode == 2
    assert f"cannot read the wallet key file {missing}: No such file or directory" in result.stderr
    assert "cannot reach the API" not in result.stderr


def test_a_key_file_others_can_read_is_used_with_a_warning(tmp_path: Path) -> None:
    loose = key_file(tmp_path / "loose.key", mode=0o644)
    result = channel_open(tmp_path, loose, f"http://127.0.0.1:{free_port()}")
    assert f"the wallet key file {loose} is accessible by others (mode 644): chmod 600 it" in result.stderr
    assert "contract failed talking to the Ethereum node" in result.stderr  # it went on with the key
    assert stat.S_IMODE(loose.stat().st_mode) == 0o644  # a warning only: the file is left alone
