"""End-to-end: an agent outlives its gateway node's restart and comes back on its own."""

from __future__ import annotations

import signal
import time

from tests.e2e.conftest import Stack, free_port, wait_port
from tests.e2e.test_proxy import curl


def test_agent_reconnects_after_the_gateway_restarts(stack: Stack) -> None:
    http_port, socks_port, tunnel_port = free_port(), free_port(), free_port()
    gateway_args = (
        "gateway",
        "--http-port",
        str(http_port),
        "--socks-port",
        str(socks_port),
        "--tunnel-port",
        str(tunnel_port),
        "--node-id",
        "restart-node",
    )
    gateway = stack.spawn(*gateway_args, log="restart-gateway.log")
    key = stack.tmp / "agent-restart.key"
    stack.ipsx("wallet", "new", "--out", str(key))
    agent = stack.spawn(
        "provide",
        "--key",
        str(key),
        "--gateway",
        f"127.0.0.1:{tunnel_port}",
        "--bind",
        "127.0.0.7",
        "--country",
        "it",
        "--allow-private",
        log="restart-agent.log",
    )
    proxy = f"http://{stack.account}-country-it:{stack.secret}@127.0.0.1:{http_port}"

    def served() -> str:
        return str(curl("-x", proxy, stack.origin.url("/ip"), timeout=5).stdout)

    try:
        wait_port(http_port)
        deadline = time.monotonic() + 20
        while served() != "127.0.0.7" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served() == "127.0.0.7"

        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=10)
        assert curl("-x", proxy, stack.origin.url("/ip"), timeout=5).returncode == 7  # nothing listens

        gateway = stack.spawn(*gateway_args, log="restart-gateway.log")
        wait_port(http_port)
        deadline = time.monotonic() + 30
        while served() != "127.0.0.7" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served() == "127.0.0.7"  # the agent found the new gateway process by itself
        assert agent.poll() is None
        log = (stack.tmp / "restart-agent.log").read_text()
        assert "reconnecting" in log
    finally:
        for proc in (agent, gateway):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
