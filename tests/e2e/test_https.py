"""End-to-end: HTTPS through the gateway's CONNECT and SOCKS5, TLS end to end with a local origin."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import requests

from tests.e2e.conftest import EXITS, Stack
from tests.e2e.test_proxy import curl


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def https_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``https://localhost:PORT`` with a self-signed certificate, and that certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
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
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}/", cert
    server.shutdown()
    server.server_close()


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
