"""End-to-end: plain-HTTP details a scraper relies on — keep-alive, body framings, Expect, IPv6."""

from __future__ import annotations

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
