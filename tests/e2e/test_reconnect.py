"""End-to-end: an agent outlives its gateway node's restart and comes back on its own."""

from __future__ import annotations

import signal

from tests.e2e.conftest import Stack, free_port, wait_port
from tests.e2e.test_proxy import curl


def test_agent_reconnects_after_the_gateway_restarts(stack: Stack) -> None:
    http_port, tunnel_port = free_port(), free_port()
    gateway = stack.spawn_gateway("restart-node", http_port, tunnel_port)
    agent = stack.start_agent(
        "agent-restart", "127.0.0.7", "it", "--allow-private", gateway=f"127.0.0.1:{tunnel_port}"
    )
    proxy = f"http://{stack.account}-country-it:{stack.secret}@127.0.0.1:{http_port}"
    try:
        wait_port(http_port)
        assert stack.wait_served(proxy, "127.0.0.7") == "127.0.0.7"

        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=10)
        assert curl("-x", proxy, stack.origin.url("/ip"), timeout=5).returncode == 7  # nothing listens

        gateway = stack.spawn_gateway("restart-node", http_port, tunnel_port)
        wait_port(http_port)
        assert stack.wait_served(proxy, "127.0.0.7", timeout=30) == "127.0.0.7"  # the agent came back
        assert agent.poll() is None
        assert "reconnecting" in (stack.tmp / "agent-restart.log").read_text()
    finally:
        stack.stop_agent("agent-restart")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=10)
