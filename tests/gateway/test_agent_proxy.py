"""An agent whose network lets out only its HTTP proxy: it reaches the gateway through ``CONNECT``.

The proxy is proxy.py (the benchmark's reference proxy, installed by ``make setup``), a real
HTTP proxy process with Basic authentication on 127.0.0.1; the gateway and agents are real, as
in test_tunnel.py.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.agent.connect import ProxyRefused
from gateway.agent.session import AgentSession
from gateway.tunnel import exit_id_for
from tests.gateway.test_tunnel import BIND, WAIT, Gateway
from tests.gateway.test_tunnel_websocket import agent_settings, echo_through, serving, stop

PROXY_USER, PROXY_PASSWORD = "office", "s3cret-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def office_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """proxy.py with Basic auth on a free port of 127.0.0.1: the only way out of the agent's network."""
    port = free_port()
    log = tmp_path_factory.mktemp("office-proxy") / "proxy.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "proxy"),
                "--hostname",
                "127.0.0.1",
                "--port",
                str(port),
                "--basic-auth",
                f"{PROXY_USER}:{PROXY_PASSWORD}",
                "--num-workers",
                "1",
                "--num-acceptors",
                "1",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "proxy.py did not start"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("path", ["/tunnel", None], ids=["wss", "tls"])
async def test_agent_reaches_a_tls_gateway_through_its_proxy(
    tls_gateway: Gateway,
    certificate: tuple[Path, Path],
    office_proxy: int,
    echo_port: int,
    path: str | None,
) -> None:
    settings = agent_settings(tls_gateway, path=path, tls=True, ca_file=str(certificate[0]))
    credentials = f"{PROXY_USER}:{PROXY_PASSWORD}"
    settings = replace(settings, proxy=("127.0.0.1", office_proxy), proxy_credentials=credentials)
    session, task = await serving(settings)
    try:
        exit_id = exit_id_for(settings.account.address, BIND)
        conn = await echo_through(tls_gateway, exit_id, echo_port, b"through the office proxy" * 1000)
        assert conn.transport is not None
        # The gateway's side of the data connection comes from the proxy, over TLS.
        assert conn.transport.get_extra_info("ssl_object") is not None
        assert conn.transport.get_extra_info("websocket", False) is (path is not None)
        conn.close()
        tls_gateway.hub.stream_closed(exit_id)
    finally:
        await stop(session, task)


async def test_wrong_proxy_credentials_are_a_clear_refusal(tls_gateway: Gateway, office_proxy: int) -> None:
    settings = agent_settings(tls_gateway, path="/")
    settings = replace(settings, proxy=("127.0.0.1", office_proxy), proxy_credentials=f"{PROXY_USER}:wrong")
    session = AgentSession(settings)
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(ProxyRefused, match="407") as refused:
                await session.login()
        assert "wrong" not in str(refused.value)  # the proxy's status line, never the credentials
        assert tls_gateway.hub.links == []
    finally:
        await session.close()
