"""End-to-end: the agent's exit policy, failover to another exit, and a provider dying mid-stream."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from gateway.agent.settings import load_key
from gateway.tunnel import exit_id_for
from tests.e2e.conftest import EXITS, Stack
from tests.e2e.test_proxy import curl


@pytest.fixture
def strict_exit(stack: Stack) -> Iterator[str]:
    """An agent in Japan started without --allow-private, as a real provider would run."""
    stack.start_agent("agent-jp", "127.0.0.5", "jp")
    stack.wait_exits(len(EXITS) + 1)
    yield "127.0.0.5"
    stack.stop_agent("agent-jp")
    stack.wait_exits(len(EXITS))


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.1.2.3",
        "[::1]",
        "100.64.0.1",
        "0.0.0.0",
        "localhost",
    ],
)
def test_private_destinations_are_refused_after_resolution(stack: Stack, strict_exit: str, host: str) -> None:
    result = curl("-i", "-x", stack.proxy("-country-jp"), f"http://{host}:{stack.origin.port}/ip")
    assert result.stdout.startswith("HTTP/1.1 403"), result.stdout
    assert "X-IPSX-Error: destination_not_allowed" in result.stdout


def test_private_destinations_are_refused_over_connect_and_socks5(stack: Stack, strict_exit: str) -> None:
    tunnel = curl("-p", "-x", stack.proxy("-country-jp"), stack.origin.url("/ip"))
    assert tunnel.returncode == 56 and "403" in tunnel.stderr
    socks = curl("-x", stack.proxy("-country-jp", scheme="socks5h"), "http://127.1:80/")
    assert socks.returncode == 97 and "(2)" in socks.stderr  # reply 2: not allowed by ruleset


def test_mail_ports_are_refused_even_for_private_exits(stack: Stack) -> None:
    result = curl("-i", "-x", stack.proxy(), "http://127.0.0.1:25/")
    assert result.stdout.startswith("HTTP/1.1 403")
    assert "mail" in result.stdout


def test_failed_dial_is_retried_on_another_matching_exit(stack: Stack) -> None:
    # 192.0.2.1 (TEST-NET-1) is not an address of this host: binding to it fails before any
    # packet leaves, which is an exit failure, so the gateway tries the other French exit.
    stack.start_agent("agent-broken", "192.0.2.1", "fr", "--allow-private")
    stack.wait_exits(len(EXITS) + 1)
    try:
        before = stack.query("SELECT count(*) AS n FROM usage_events WHERE attempts > 1")[0]["n"]
        seen = {curl("-x", stack.proxy("-country-fr"), stack.origin.url("/ip")).stdout for _ in range(6)}
        assert seen == {EXITS["fr"]}
        rows = stack.wait_usage("attempts > 1", count=before + 1)
        assert all(row["attempts"] == 2 for row in rows)
    finally:
        stack.stop_agent("agent-broken")
        stack.wait_exits(len(EXITS))


def test_provider_killed_mid_stream(stack: Stack) -> None:
    stack.start_agent("agent-kr", "127.0.0.6", "kr", "--allow-private")
    stack.wait_exits(len(EXITS) + 1)
    exit_id = exit_id_for(load_key(stack.tmp / "agent-kr.key", None).address, "127.0.0.6")
    client = subprocess.Popen(
        [
            "curl",
            "-sS",
            "-p",
            "-x",
            stack.proxy("-country-kr"),
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            stack.origin.url("/slow/20000000"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    stack.stop_agent("agent-kr", signal.SIGKILL)
    out, _ = client.communicate(timeout=30)
    assert client.returncode != 0  # the client sees the stream fail, not a silent truncation
    received = int(out)
    assert 0 < received < 20_000_000
    rows = stack.wait_usage("exit_id = $1", exit_id, count=1)
    time.sleep(1)
    rows = stack.query("SELECT * FROM metered_streams WHERE exit_id = $1", exit_id)
    assert len(rows) == 1  # metered once
    row = rows[0]
    assert row["gateway_bytes_down"] >= received  # at least what reached the client
    assert row["outcome"] in {"exit_closed", "exit_lost"}
    assert row["agent_bytes_down"] is None  # the dead agent never confirmed it: a mismatch to reconcile
    stack.wait_exits(len(EXITS), timeout=10)  # and the exit left the pool
