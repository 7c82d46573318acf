"""End-to-end: the provider's own limits, enforced by its agent and seen by the gateway.

Each test starts agents of its own (``ipsx provide`` with the limit under test) in a country no
other exit has, sends real clients (curl, requests) through the gateway to a loopback origin,
and reads the metering in PostgreSQL and the agent's state file (``ipsx provide status``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ipsx.origin import Origin
from tests.e2e.conftest import EXITS, Stack
from tests.e2e.test_proxy import curl

pytestmark = pytest.mark.timeout(180)  # each test starts and stops agents of its own


@pytest.fixture
def agents(stack: Stack) -> Iterator[list[str]]:
    """The names of the agents a test starts (append them); all stopped after the test."""
    names: list[str] = []
    yield names
    for name in names:
        if name in stack.agents:
            stack.stop_agent(name)
    stack.wait_exits(len(EXITS))


def start(stack: Stack, agents: list[str], name: str, bind: str, country: str, *flags: str) -> str:
    """Start an agent that may reach the loopback origin; its exit id once it is in the pool."""
    before = len(stack.live_exits())
    stack.start_agent(name, bind, country, "--allow-private", *flags)
    if name not in agents:
        agents.append(name)
    stack.wait_exits(before + 1)
    return stack.exit_id(name, bind)


def status(stack: Stack, name: str, *extra: str) -> str:
    result = stack.ipsx("provide", "status", "--key", str(stack.tmp / f"{name}.key"), *extra)
    return result.stdout


def connect_response(stack: Stack, user: str, target: str) -> bytes:
    """The gateway's whole answer to a CONNECT (curl -p keeps a refusal's body to itself)."""
    auth = base64.b64encode(f"{user}:{stack.secret}".encode()).decode()
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=10) as sock:
        sock.sendall(request.encode())
        received = b""
        while data := sock.recv(65536):
            received += data
    return received


def download(stack: Stack, country: str, size: int) -> subprocess.CompletedProcess[str]:
    """``size`` bytes from the origin through a CONNECT tunnel, as curl saw them."""
    return curl(
        "-p",
        "-x",
        stack.proxy(f"-country-{country}"),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        stack.origin.url(f"/bytes/{size}"),
    )


def test_daily_cap_reached_mid_download_ends_that_stream_metered_once(
    stack: Stack, agents: list[str]
) -> None:
    exit_id = start(stack, agents, "agent-cap", "127.0.0.7", "nz", "--cap-day", "2MB")

    result = download(stack, "nz", 5_000_000)
    assert result.returncode == 18, result.stderr  # curl: the transfer closed with data missing
    received = int(result.stdout)
    assert 0 < received < 2_000_000

    (row,) = stack.wait_usage("exit_id = $1", exit_id)
    assert row["agent_outcome"] == "cap_reached"
    assert row["agent_bytes_up"] + row["agent_bytes_down"] == 2_000_000  # the cap, to the byte
    # The gateway got every byte the agent relayed, and metered the same stream once.
    assert (row["gateway_bytes_up"], row["gateway_bytes_down"]) == (
        row["agent_bytes_up"],
        row["agent_bytes_down"],
    )
    assert row["gateway_bytes_down"] > received  # the response head came first
    assert len(stack.query("SELECT * FROM metered_streams WHERE exit_id = $1", exit_id)) == 1

    # The agent told the gateway: no more streams through this exit today.
    refused = curl("-i", "-x", stack.proxy("-country-nz"), stack.origin.url("/ip"))
    assert refused.stdout.startswith("HTTP/1.1 502"), refused.stdout
    assert "X-IPSX-Error: no_exit_matches" in refused.stdout
    assert len(stack.query("SELECT * FROM metered_streams WHERE exit_id = $1", exit_id)) == 1

    shown = status(stack, "agent-cap")
    assert "serving: no, daily cap of 2.0 MB reached until" in shown
    assert "2.0 MB in 1 stream" in shown and "100% used" in shown


def upload(stack: Stack, country: str, body: Path, *, tunnel: bool) -> subprocess.CompletedProcess[str]:
    """POST ``body`` to the origin's /echo through the gateway (a CONNECT tunnel, or forwarded)."""
    flags = ["-p"] if tunnel else []
    return curl(
        *flags,
        "-x",
        stack.proxy(f"-country-{country}"),
        "--data-binary",
        f"@{body}",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        stack.origin.url("/echo"),
    )


@pytest.mark.parametrize("tunnel", [True, False], ids=["connect", "forwarded"])
def test_a_cap_reached_mid_upload_is_metered_alike_on_both_sides(
    stack: Stack, agents: list[str], tmp_path: Path, tunnel: bool
) -> None:
    bind, country = ("127.0.0.14", "is") if tunnel else ("127.0.0.15", "ie")
    exit_id = start(stack, agents, f"agent-upcap-{country}", bind, country, "--cap-day", "2MB")
    body = tmp_path / "body"
    body.write_bytes(b"u" * 6_000_000)

    result = upload(stack, country, body, tunnel=tunnel)
    if tunnel:
        assert result.returncode != 0, result.stdout  # the tunnel ended mid-upload
    else:
        assert result.stdout == "502", result.stderr  # the gateway's answer: no response came

    (row,) = stack.wait_usage("exit_id = $1", exit_id)
    assert row["agent_outcome"] == "cap_reached" and row["outcome"] == "cap_reached"
    assert row["agent_bytes_up"] + row["agent_bytes_down"] == 2_000_000  # the cap, to the byte
    # What the gateway had sent past the cut never reached the destination, and the agent said
    # where it stopped: both meters count the same bytes.
    assert (row["gateway_bytes_up"], row["gateway_bytes_down"]) == (
        row["agent_bytes_up"],
        row["agent_bytes_down"],
    )


def test_blocked_domain_and_network_are_refused_with_the_reason(stack: Stack, agents: list[str]) -> None:
    start(
        stack, agents, "agent-block", "127.0.0.8", "ca", "--block", "blocked.test", "--block", "127.0.0.1/32"
    )
    other = Origin("127.0.0.10", 0).start()  # a destination the agent does not block
    try:
        proxy = stack.proxy("-country-ca")
        by_name = curl("-i", "-x", proxy, "http://www.blocked.test/")
        assert by_name.stdout.startswith("HTTP/1.1 403"), by_name.stdout
        assert "X-IPSX-Error: destination_not_allowed" in by_name.stdout
        assert "destinations under blocked.test are blocked by this exit" in by_name.stdout

        network_reason = "destination 127.0.0.1 is in 127.0.0.1/32, blocked by this exit"
        by_address = curl("-i", "-x", proxy, stack.origin.url("/ip"))
        assert by_address.stdout.startswith("HTTP/1.1 403") and network_reason in by_address.stdout
        resolved = curl("-i", "-x", proxy, f"http://localhost:{stack.origin.port}/ip")  # checked after DNS
        assert resolved.stdout.startswith("HTTP/1.1 403") and network_reason in resolved.stdout
        tunnel = connect_response(
            stack, f"{stack.account}-country-ca", f"www.blocked.test:{stack.origin.port}"
        )
        assert tunnel.startswith(b"HTTP/1.1 403") and b"blocked.test are blocked" in tunnel

        allowed = requests.get(other.url("/ip"), proxies={"http": proxy}, timeout=10)
        assert (allowed.status_code, allowed.text) == (200, "127.0.0.8")
    finally:
        other.stop()


def _window(start: dt.datetime, hours: int) -> str:
    end = start + dt.timedelta(hours=hours)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_outside_the_serving_hours_the_exit_is_not_used(stack: Stack, agents: list[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    later = _window(now + dt.timedelta(hours=2), 2)  # opens in two hours
    around_now = _window(now - dt.timedelta(hours=1), 2)
    start(stack, agents, "agent-night", "127.0.0.9", "se", "--hours", later, "--tz", "UTC")
    proxy = stack.proxy("-country-se")
    refused = curl("-i", "-x", proxy, stack.origin.url("/ip"))
    assert refused.stdout.startswith("HTTP/1.1 502"), refused.stdout  # online, but not serving now
    assert "X-IPSX-Error: no_exit_matches" in refused.stdout

    start(stack, agents, "agent-day", "127.0.0.11", "se", "--hours", around_now, "--tz", "UTC")
    seen = {curl("-x", proxy, stack.origin.url("/ip")).stdout for _ in range(6)}
    assert seen == {"127.0.0.11"}  # the exit outside its hours never serves

    assert f"serving: no, outside the serving hours ({later}) until" in status(stack, "agent-night")
    day = status(stack, "agent-day")
    assert "serving: yes" in day and f"hours: {around_now} (UTC)" in day


def test_a_protocol_not_allowed_is_refused(stack: Stack, agents: list[str]) -> None:
    start(stack, agents, "agent-http", "127.0.0.12", "br", "--protocols", "http")
    proxy = stack.proxy("-country-br")
    assert curl("-x", proxy, stack.origin.url("/ip")).stdout == "127.0.0.12"  # plain HTTP is served

    tunnel = connect_response(stack, f"{stack.account}-country-br", f"127.0.0.1:{stack.origin.port}")
    assert tunnel.startswith(b"HTTP/1.1 403"), tunnel
    assert b"X-IPSX-Error: destination_not_allowed" in tunnel
    assert b"protocol https is not allowed by this exit" in tunnel
    socks = curl("-x", stack.proxy("-country-br", scheme="socks5h"), stack.origin.url("/ip"))
    assert socks.returncode == 97 and "(2)" in socks.stderr  # reply 2: not allowed by ruleset


def test_the_state_file_survives_a_restart(stack: Stack, agents: list[str], tmp_path: Path) -> None:
    flags = ("--cap-day", "3MB", "--state-dir", str(tmp_path))
    exit_id = start(stack, agents, "agent-restart", "127.0.0.13", "mx", *flags)
    first = download(stack, "mx", 1_000_000)
    assert (first.returncode, first.stdout) == (0, "1000000")
    (row,) = stack.wait_usage("exit_id = $1", exit_id)
    used = row["agent_bytes_up"] + row["agent_bytes_down"]

    stack.stop_agent("agent-restart")
    saved = json.loads((tmp_path / "agent-restart.key.usage.json").read_text())
    assert saved["day"]["up"] + saved["day"]["down"] == used
    assert saved["day"]["streams"] == 1 and saved["limits"]["cap_day"] == 3_000_000
    assert "1 stream" in status(stack, "agent-restart", "--state-dir", str(tmp_path))

    start(stack, agents, "agent-restart", "127.0.0.13", "mx", *flags)
    second = download(stack, "mx", 5_000_000)
    assert second.returncode == 18
    rows = stack.wait_usage("exit_id = $1", exit_id, count=2)
    last = max(rows, key=lambda r: r["closed_at"])
    # Today's cap went on from where the agent stopped: only what was left of it was served.
    assert last["agent_bytes_up"] + last["agent_bytes_down"] == 3_000_000 - used
    assert last["agent_outcome"] == "cap_reached"
    shown = status(stack, "agent-restart", "--state-dir", str(tmp_path))
    assert "3.0 MB in 2 streams" in shown and "daily cap of 3.0 MB reached" in shown
    assert "earnings: run with --payouts-api" in shown
