"""End-to-end: HTTPS through the gateway's CONNECT and SOCKS5, TLS end to end with a local origin."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests

from ipsx.origin import Origin
from tests.e2e.conftest import EXITS, Stack
from tests.e2e.test_proxy import curl
from tests.tls import self_signed


@pytest.fixture(scope="module")
def https_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``https://localhost:PORT/ip`` with a self-signed certificate, and that certificate."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"), "DNS:localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    origin = Origin("127.0.0.1", 0, tls=context, url_host="localhost").start()
    yield origin.url("/ip"), cert
    origin.stop()


def test_curl_https_through_connect_and_socks5(stack: Stack, https_origin: tuple[str, Path]) -> None:
    url, cert = https_origin
    via_connect = curl("--cacert", str(cert), "-x", stack.proxy(), url)
    via_socks = curl("--cacert", str(cert), "-x", stack.proxy(scheme="socks5h"), url)
    assert via_connect.stdout in EXITS.values(), via_connect.stderr
    assert via_socks.stdout in EXITS.values(), via_socks.stderr


def test_requests_and_httpx_https_through_proxy_urls(stack: Stack, https_origin: tuple[str, Path]) -> None:
    url, cert = https_origin
    proxies = {"http": stack.proxy(), "https": stack.proxy()}
    with requests.Session() as session:
        session.proxies.update(proxies)
        # verify per request: a CA bundle named in the environment would override session.verify
        assert session.get(url, timeout=10, verify=str(cert)).text in EXITS.values()
    with httpx.Client(
        proxy=stack.proxy("-country-de"), verify=ssl.create_default_context(cafile=str(cert)), timeout=10
    ) as client:
        assert client.get(url).text == EXITS["de"]
