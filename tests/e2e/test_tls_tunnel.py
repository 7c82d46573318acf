"""End-to-end: a gateway node whose tunnel port speaks TLS, and an agent that verifies it."""

from __future__ import annotations

import signal

from tests.e2e.conftest import Stack, free_port, wait_port
from tests.e2e.test_proxy import curl
from tests.tls import self_signed


def test_provider_over_a_tls_tunnel_serves_requesters(stack: Stack) -> None:
    folder = stack.tmp / "tunnel-tls"
    folder.mkdir()
    cert, key = self_signed(folder, "IP:127.0.0.1")
    http_port, tunnel_port = free_port(), free_port()
    gateway = stack.spawn_gateway(
        "tls-node", http_port, tunnel_port, "--tunnel-cert", str(cert), "--tunnel-key", str(key)
    )
    stack.start_agent(
        "agent-tls",
        "127.0.0.8",
        "nl",
        "--allow-private",
        "--gateway-ca",
        str(cert),
        gateway=f"tls://127.0.0.1:{tunnel_port}",
    )
    proxy = f"http://{stack.account}-country-nl:{stack.secret}@127.0.0.1:{http_port}"
    try:
        wait_port(http_port)
        assert stack.wait_served(proxy, "127.0.0.8") == "127.0.0.8"
        tunnelled = curl(
            "-p", "-x", proxy, stack.origin.url("/bytes/300000"), "-o", "/dev/null", "-w", "%{size_download}"
        )
        assert tunnelled.stdout == "300000"
    finally:
        stack.stop_agent("agent-tls")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=10)


def test_provider_over_a_wss_tunnel_serves_requesters(stack: Stack) -> None:
    """``ipsx provide --gateway wss://…``, the SPEC's provider command: TLS and a WebSocket upgrade
    on the gateway's tunnel port, the same port native agents use."""
    folder = stack.tmp / "tunnel-wss"
    folder.mkdir()
    cert, key = self_signed(folder, "IP:127.0.0.1")
    http_port, tunnel_port = free_port(), free_port()
    gateway = stack.spawn_gateway(
        "wss-node", http_port, tunnel_port, "--tunnel-cert", str(cert), "--tunnel-key", str(key)
    )
    stack.start_agent(
        "agent-wss",
        "127.0.0.14",
        "at",
        "--allow-private",
        "--gateway-ca",
        str(cert),
        gateway=f"wss://127.0.0.1:{tunnel_port}/tunnel",
    )
    proxy = f"http://{stack.account}-country-at:{stack.secret}@127.0.0.1:{http_port}"
    try:
        wait_port(http_port)
        assert stack.wait_served(proxy, "127.0.0.14") == "127.0.0.14"
        tunnelled = curl(
            "-p", "-x", proxy, stack.origin.url("/bytes/300000"), "-o", "/dev/null", "-w", "%{size_download}"
        )
        assert tunnelled.stdout == "300000"
        plain = curl(
            "-x", proxy, stack.origin.url("/bytes/5000"), "-o", "/dev/null", "-w", "%{size_download}"
        )
        assert plain.stdout == "5000"
    finally:
        stack.stop_agent("agent-wss")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=10)
