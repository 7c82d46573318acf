"""End-to-end: plain-HTTP details a scraper relies on — keep-alive, body framings, Expect, IPv6."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from ipsx.origin import Origin
from tests.e2e.conftest import EXITS, Stack
from tests.e2e.test_proxy import curl


def test_keep_alive_connection_follows_the_client_across_hosts(stack: Stack) -> None:
    with requests.Session() as session:
        session.proxies.update({"http": stack.proxy()})
        first = session.get(stack.origin.url("/ip"), timeout=10)
        other_host = session.get(f"http://localhost:{stack.origin.port}/ip", timeout=10)
        back = session.get(stack.origin.url("/bytes/10"), timeout=10)
    assert first.text in EXITS.values()
    assert other_host.text in EXITS.values()
    assert back.content == b"x" * 10


def test_expect_100_continue_body_goes_through(stack: Stack) -> None:
    body = b"y" * 2_000_000
    result = curl(
        "-x",
        stack.proxy(),
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        "@-",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        stack.origin.url("/echo"),
        input_bytes=body,
    )
    assert result.stdout.endswith(b"\n200")
    assert result.stdout[: len(body)] == body


def test_head_and_no_content_responses_keep_the_connection_usable(stack: Stack) -> None:
    with requests.Session() as session:
        session.proxies.update({"http": stack.proxy()})
        head = session.head(stack.origin.url("/bytes/5000"), timeout=10)
        empty = session.get(stack.origin.url("/status/204"), timeout=10)
        after = session.get(stack.origin.url("/bytes/7"), timeout=10)
    assert head.headers["Content-Length"] == "5000" and head.content == b""
    assert empty.status_code == 204
    assert after.content == b"x" * 7


def test_interim_responses_pass_on_and_the_next_exchange_reuses_the_stream(stack: Stack) -> None:
    """103 Early Hints then the final response, twice on one kept-alive connection: each head
    reaches the client as the origin sent it (hop-by-hop fields aside), bodies framed right."""
    host, port = "127.0.0.1", stack.http_port
    auth = base64.b64encode(f"{stack.account}:{stack.secret}".encode()).decode()
    url = stack.origin.url("/early")
    request = (
        f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{stack.origin.port}\r\n"
        f"Proxy-Authorization: Basic {auth}\r\n\r\n"
    ).encode()
    started = time.time()
    with socket.create_connection((host, port), timeout=10) as client:
        received = b""
        for _ in range(2):
            client.sendall(request)
            while received.count(b"\r\n\r\nok") < _ + 1:
                data = client.recv(65536)
                assert data, received
                received += data
    exchanges = received.split(b"\r\n\r\nok")
    assert exchanges[2] == b""  # nothing after the second body
    for exchange in exchanges[:2]:
        interim, _, final = exchange.partition(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload"
        assert final.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nContent-Length: 2" in final
        assert b"Proxy-" not in final
    # One stream carried both exchanges, and the heads went out as they came: the bytes metered
    # from the exit are the bytes the client got, but for the gateway's own X-IPSX-Exit and
    # X-IPSX-Tries lines on each final response.
    target = f"127.0.0.1:{stack.origin.port}"
    rows = stack.wait_usage(
        "target = $1 AND protocol = 'http' AND opened_at >= to_timestamp($2)", target, started
    )
    assert len(rows) == 1
    ours = f"X-IPSX-Exit: {rows[0]['exit_id']}\r\nX-IPSX-Tries: 1\r\n".encode()
    assert received.count(ours) == 2
    assert rows[0]["gateway_bytes_down"] == len(received) - 2 * len(ours)


@pytest.fixture
def v6_origin() -> Iterator[Origin]:
    origin = Origin("::1", 0).start()
    yield origin
    origin.stop()


def test_socks5_ipv6_destination_through_an_ipv6_exit(stack: Stack, v6_origin: Origin) -> None:
    stack.start_agent("agent-v6", "::1", "ca", "--allow-private")
    stack.wait_exits(len(EXITS) + 1)
    try:
        url = v6_origin.url("/ip")
        # socks5:// resolves locally and sends an IPv6 address (ATYP 4); socks5h:// sends the name.
        local = curl("-x", stack.proxy("-country-ca", scheme="socks5"), url)
        remote = curl("-x", stack.proxy("-country-ca", scheme="socks5h"), url)
        tunnelled = curl("-p", "-x", stack.proxy("-country-ca"), url)
        assert local.stdout == "::1", local.stderr
        assert remote.stdout == "::1", remote.stderr
        assert tunnelled.stdout == "::1", tunnelled.stderr
        # An IPv4-only exit cannot reach an IPv6 destination: refused, not silently rerouted.
        wrong_family = curl("-i", "-x", stack.proxy("-country-fr"), url)
        assert wrong_family.stdout.startswith("HTTP/1.1 403")
    finally:
        stack.stop_agent("agent-v6")
        stack.wait_exits(len(EXITS))
