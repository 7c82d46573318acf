"""End-to-end: a gateway node whose tunnel port speaks TLS, and an agent that verifies it."""

from __future__ import annotations

import signal
import subprocess
import time

from tests.e2e.conftest import Stack, free_port, wait_port
from tests.e2e.test_proxy import curl


def test_provider_over_a_tls_tunnel_serves_requesters(stack: Stack) -> None:
    cert, key = stack.tmp / "tunnel-cert.pem", stack.tmp / "tunnel-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=gateway",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    http_port, socks_port, tunnel_port = free_port(), free_port(), free_port()
    gateway = stack.spawn(
        "gateway",
        "--http-port",
        str(http_port),
        "--socks-port",
        str(socks_port),
        "--tunnel-port",
        str(tunnel_port),
        "--node-id",
        "tls-node",
        "--tunnel-cert",
        str(cert),
        "--tunnel-key",
        str(key),
        log="tls-gateway.log",
    )
    wallet = stack.tmp / "agent-tls.key"
    stack.ipsx("wallet", "new", "--out", str(wallet))
    agent = stack.spawn(
        "provide",
        "--key",
        str(wallet),
        "--gateway",
        f"tls://127.0.0.1:{tunnel_port}",
        "--gateway-ca",
        str(cert),
        "--bind",
        "127.0.0.8",
        "--country",
        "nl",
        "--allow-private",
        log="tls-agent.log",
    )
    proxy = f"http://{stack.account}-country-nl:{stack.secret}@127.0.0.1:{http_port}"
    try:
        wait_port(http_port)
        deadline = time.monotonic() + 20
        served = ""
        while served != "127.0.0.8" and time.monotonic() < deadline:
            served = str(curl("-x", proxy, stack.origin.url("/ip"), timeout=5).stdout)
            time.sleep(0.2)
        assert served == "127.0.0.8"
        tunnelled = curl(
            "-p", "-x", proxy, stack.origin.url("/bytes/300000"), "-o", "/dev/null", "-w", "%{size_download}"
        )
        assert tunnelled.stdout == "300000"
    finally:
        for proc in (agent, gateway):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
