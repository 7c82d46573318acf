"""End-to-end: the TLS-inspecting port (``ipsx inspect``) in front of the real stack.

The worker runs as its own process, beside the stack's gateway, worker and agents; the API runs
with the inspection routes; the origin is an HTTPS server on localhost with a self-signed
certificate the worker is told to trust (``--upstream-ca``). Clients (curl, httpx) trust only the
account's CA, downloaded from the API.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import EXITS, Stack, free_port, wait_port
from tests.e2e.test_proxy import curl
from tests.tls import self_signed

# The first test also waits for the stack, the API and the worker to start (Python imports under
# load take most of it).
pytestmark = pytest.mark.timeout(180)

CA_SECRET = "e2e-inspection-ca-secret"
# The API with the inspection routes, whether or not dashboard/app.py registers them yet.
_API = """
import os, sys
from aiohttp import web
from dashboard.app import build_app
from dashboard.routes_inspect import routes
from dashboard.settings import ApiSettings
from ipsx import runtime

async def main(stop):
    settings = ApiSettings(
        database_url=os.environ["IPSX_DATABASE_URL"], redis_url=os.environ["IPSX_REDIS_URL"],
        jwt_secret="inspect-tests-" + "x" * 32, port=int(sys.argv[1]), market=False,
        inspect_ca_secret=os.environ["IPSX_INSPECT_CA_SECRET"],
    )
    app = build_app(settings)
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    if "/v1/inspection" not in paths:
        app.router.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    await stop.wait()
    await runner.cleanup()

runtime.run(main)
"""


class _OriginHandler(BaseHTTPRequestHandler):
    """``/ip`` the source address; ``/flaky/T`` 403 the first time for token T, then 200;
    ``/headers`` the request's headers; ``POST /echo`` the body; ``/status/N`` status N."""

    protocol_version = "HTTP/1.1"
    seen: set[str] = set()
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-IPSX-Exit", "forged-by-the-origin")  # must never reach the client
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ip":
            self._send(200, self.client_address[0].encode())
        elif self.path.startswith("/flaky/"):
            with self.lock:
                first = self.path not in self.seen
                self.seen.add(self.path)
            self._send(403 if first else 200, b"banned\n" if first else b"ok\n")
        elif self.path == "/headers":
            self._send(200, "".join(f"{k}: {v}\n" for k, v in self.headers.items()).encode())
        elif self.path.startswith("/status/"):
            self._send(int(self.path[8:11]), b"")
        else:
            self._send(404, b"not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/flaky/"):
            self.do_GET()
        else:
            self._send(200, body)


@dataclass
class Inspecting:
    stack: Stack
    port: int
    api: str
    origin: str  # https://localhost:PORT
    origin_port: int
    secrets: dict[str, str]  # account -> API key secret
    cas: dict[str, Path]  # account -> its CA certificate, as downloaded

    def api_call(self, method: str, path: str, account: str = "alice", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secrets[account]}"}
        return httpx.request(method, self.api + path, headers=headers, timeout=30, **kwargs)

    def enable(self, account: str, on: bool = True) -> None:
        answer = self.api_call("PUT", "/v1/inspection", account, json={"enabled": on})
        assert answer.status_code == 200, answer.text
        assert answer.json()["enabled"] is on

    def curl(
        self, account: str, path: str, *args: str, user: str = "", ca: str = ""
    ) -> subprocess.CompletedProcess[Any]:
        """curl through the inspecting port; ``-D -`` puts the response head before the body."""
        return curl(
            "-D",
            "-",
            "--proxy",
            f"http://127.0.0.1:{self.port}",
            "--proxy-user",
            f"{user or account}:{self.secrets[account]}",
            "--cacert",
            str(self.cas[ca or account]),
            *args,
            self.origin + path,
        )


def _head_and_body(output: str) -> tuple[dict[str, str], str, int]:
    """The last response head of ``curl -D -`` output (headers lower-cased), its body and status;
    curl's CONNECT answer and interim heads come first."""
    head = ""
    while output.startswith("HTTP/"):
        head, _, output = output.partition("\n\n")  # text mode: CRLF read as LF
    lines = head.split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, output, int(lines[0].split()[1])


def _spawn(stack: Stack, args: list[str], log: str) -> subprocess.Popen[bytes]:
    """The API and the inspecting worker, sealing the accounts' CA keys with the same secret."""
    env = {**stack.env, "IPSX_INSPECT_CA_SECRET": CA_SECRET}
    with open(stack.tmp / log, "ab") as handle:
        proc = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT)
    stack.processes.append(proc)  # stopped with the stack if a test leaves it running
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def inspecting(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inspecting]:
    tmp = tmp_path_factory.mktemp("inspect")
    cert, key = self_signed(tmp, "DNS:localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OriginHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin_port = int(server.server_address[1])

    stack.ipsx("account", "create", "--address", "0x" + "b0" * 20, "--name", "bob")
    bob = stack.ipsx("key", "create", "bob").stdout.split("secret: ", 1)[1].split()[0]
    api_port, port = free_port(), free_port()
    api = _spawn(stack, [sys.executable, "-c", _API, str(api_port)], "inspect-api.log")
    worker = _spawn(
        stack,
        [
            sys.executable,
            "-m",
            "ipsx.inspect_command",
            "--port",
            str(port),
            "--gateway",
            f"127.0.0.1:{stack.http_port}",
            "--upstream-ca",
            str(cert),
        ],
        "inspect.log",
    )
    try:
        wait_port(api_port, timeout=60)
        wait_port(port, timeout=60)
        found = Inspecting(
            stack,
            port,
            f"http://127.0.0.1:{api_port}",
            f"https://localhost:{origin_port}",
            origin_port,
            {"alice": stack.secret, "bob": bob},
            {},
        )
        for account in ("alice", "bob"):
            answer = found.api_call("GET", "/v1/inspection/ca.pem", account)
            assert answer.status_code == 200, answer.text
            found.cas[account] = tmp / f"{account}-ca.pem"
            found.cas[account].write_bytes(answer.content)
        yield found
    finally:
        _stop(worker)
        _stop(api)
        server.shutdown()
        server.server_close()


@pytest.fixture
def alice_on(inspecting: Inspecting) -> Iterator[Inspecting]:
    inspecting.enable("alice")
    yield inspecting
    inspecting.enable("alice", False)


def test_get_inspection_state_and_ca_call(inspecting: Inspecting) -> None:
    state = inspecting.api_call("GET", "/v1/inspection").json()
    assert state["enabled"] is False  # off unless the requester turns it on
    pem = inspecting.api_call("GET", "/v1/inspection/ca.pem")
    assert pem.headers["content-type"] == "application/x-pem-file"
    assert pem.content == inspecting.cas["alice"].read_bytes()  # made once, the same afterwards
    assert b"PRIVATE KEY" not in pem.content
    assert state["ca"]["sha256"] == pem.headers["x-ipsx-ca-sha256"]
    assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.text)).hexdigest() == state["ca"]["sha256"]
    assert inspecting.cas["bob"].read_bytes() != inspecting.cas["alice"].read_bytes()
    # The keys are stored sealed with IPSX_INSPECT_CA_SECRET: the database alone cannot mint.
    keys = inspecting.stack.query("SELECT key_pem FROM inspection_cas")
    assert len(keys) == 2
    assert all(row["key_pem"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----") for row in keys)


def test_put_inspection_call_refuses_bad_bodies(inspecting: Inspecting) -> None:
    not_bool = inspecting.api_call("PUT", "/v1/inspection", json={"enabled": "yes"})
    missing = inspecting.api_call("PUT", "/v1/inspection", json={"on": True})
    anonymous = httpx.put(inspecting.api + "/v1/inspection", json={"enabled": True}, timeout=10)
    assert (not_bool.status_code, not_bool.json()["field"]) == (422, "enabled")
    assert (missing.status_code, missing.json()["field"]) == (422, "enabled")
    assert anonymous.status_code == 401
    assert inspecting.api_call("GET", "/v1/inspection").json()["enabled"] is False
    out = inspecting.stack.ipsx("key", "create", "alice", "--scopes", "read").stdout
    read_only = {"Authorization": "Bearer " + out.split("secret: ", 1)[1].split()[0]}
    url = inspecting.api + "/v1/inspection"
    refused = httpx.put(url, json={"enabled": True}, headers=read_only, timeout=10)
    assert (refused.status_code, refused.json()["scope"]) == (403, "proxy")
    assert httpx.get(url, headers=read_only, timeout=10).json()["enabled"] is False


def test_inspection_disabled_is_refused_403(inspecting: Inspecting) -> None:
    result = inspecting.curl("alice", "/ip", "-w", "%{http_connect}")
    assert result.returncode != 0
    assert result.stdout.endswith("403")
    assert "X-IPSX-Error: inspection_disabled" in result.stdout


def test_https_body_arrives_and_is_metered(alice_on: Inspecting) -> None:
    stack = alice_on.stack
    target = f"localhost:{alice_on.origin_port}"
    before = len(stack.query("SELECT event_id FROM usage_events WHERE target = $1", target))
    result = alice_on.curl("alice", "/ip")
    headers, body, status = _head_and_body(result.stdout)
    assert (status, result.returncode) == (200, 0), result.stderr
    assert body in EXITS.values()
    assert headers["x-ipsx-tries"] == "1"
    assert headers.get("x-ipsx-exit") != "forged-by-the-origin"
    rows = stack.wait_usage("requester = 'alice' AND target = $1", target, count=before + 1)
    newest = max(rows, key=lambda row: row["closed_at"])
    assert newest["protocol"] == "connect"  # one gateway tunnel per inspected connection
    assert newest["gateway_bytes_up"] > 0 and newest["gateway_bytes_down"] > 0
    country = next(c for c, ip in EXITS.items() if ip == body)
    assert newest["exit_id"] == stack.exit_id(f"agent-{country}", body)  # billed to the exit that served it


def test_targeting_applies_to_https(alice_on: Inspecting) -> None:
    by_user = _head_and_body(alice_on.curl("alice", "/ip", user="alice-country-de").stdout)[1]
    by_header = _head_and_body(alice_on.curl("alice", "/ip", "-H", "X-IPSX-Country: us").stdout)[1]
    pinned = {
        _head_and_body(alice_on.curl("alice", "/ip", "-H", "X-IPSX-Session: inspect1").stdout)[1]
        for _ in range(4)
    }
    assert by_user == EXITS["de"]
    assert by_header == EXITS["us"]
    assert len(pinned) == 1 and pinned <= set(EXITS.values())


def test_ipsx_headers_and_credentials_do_not_reach_the_origin(alice_on: Inspecting) -> None:
    result = alice_on.curl(
        "alice", "/headers", "-H", "X-IPSX-Session: inspect2", "-H", "X-IPSX-Retry-On: 429"
    )
    _, body, status = _head_and_body(result.stdout)
    assert status == 200
    seen = body.lower()
    assert "x-ipsx" not in seen and "proxy-authorization" not in seen
    assert f"host: localhost:{alice_on.origin_port}" in seen


def test_retry_on_403_gives_200_after_two_tries(alice_on: Inspecting) -> None:
    token = secrets.token_hex(4)
    retried = alice_on.curl(
        "alice", f"/flaky/{token}", "-H", "X-IPSX-Retry-On: 403,429", "-H", "X-IPSX-Max-Retries: 2"
    )
    headers, body, status = _head_and_body(retried.stdout)
    assert (status, body, headers["x-ipsx-tries"]) == (200, "ok\n", "2")
    plain = _head_and_body(alice_on.curl("alice", f"/flaky/{token}-b").stdout)
    assert (plain[2], plain[0]["x-ipsx-tries"]) == (403, "1")  # no rule, no retry
    posted = alice_on.curl("alice", f"/flaky/{token}-c", "-d", "x=1", "-H", "X-IPSX-Retry-On: 403")
    assert _head_and_body(posted.stdout)[2] == 403  # POST is not idempotent: never sent twice


def test_bad_rule_and_bad_targeting_are_400(alice_on: Inspecting) -> None:
    rule = _head_and_body(alice_on.curl("alice", "/ip", "-H", "X-IPSX-Retry-On: often").stdout)
    target = _head_and_body(alice_on.curl("alice", "/ip", "-H", "X-IPSX-Country: France").stdout)
    assert (rule[2], rule[0]["x-ipsx-error"]) == (400, "bad_targeting")
    assert "X-IPSX-Retry-On" in rule[1]  # the message names the header, as the gateway's does
    assert (target[2], target[0]["x-ipsx-error"]) == (400, "bad_targeting")
    assert "Traceback" not in rule[1] + target[1]


def test_ban_moves_the_session_off_its_exit(inspecting: Inspecting) -> None:
    # bob's: a ban lasts (an hour) for the requester and domain, and alice's tests target countries
    session = ("-H", f"X-IPSX-Session: ban{secrets.token_hex(4)}")
    inspecting.enable("bob")
    try:
        before = _head_and_body(inspecting.curl("bob", "/ip", *session).stdout)[1]
        banned = _head_and_body(inspecting.curl("bob", "/ip", *session, "-H", "X-IPSX-Ban: 1").stdout)[1]
        after = _head_and_body(inspecting.curl("bob", "/ip", *session).stdout)[1]
    finally:
        inspecting.enable("bob", False)
    assert before in EXITS.values()
    assert banned in EXITS.values() and banned != before
    assert after != before  # banned for this domain: the session keeps off it


def test_gateway_refusal_reaches_the_client(alice_on: Inspecting) -> None:
    closed = free_port()
    result = curl(
        "-D",
        "-",
        "--proxy",
        f"http://127.0.0.1:{alice_on.port}",
        "--proxy-user",
        f"alice:{alice_on.secrets['alice']}",
        "--cacert",
        str(alice_on.cas["alice"]),
        f"https://localhost:{closed}/",
    )
    headers, body, status = _head_and_body(result.stdout)
    assert (status, headers["x-ipsx-error"]) == (502, "connection_refused")
    assert "could not reach the destination" in body


def test_second_requester_has_its_own_ca(alice_on: Inspecting) -> None:
    alice_on.enable("bob")
    try:
        with_alices_ca = alice_on.curl("bob", "/ip", ca="alice")
        with_own_ca = alice_on.curl("bob", "/ip")
    finally:
        alice_on.enable("bob", False)
    assert with_alices_ca.returncode == 60  # curl: the peer certificate cannot be authenticated
    assert _head_and_body(with_own_ca.stdout)[1] in EXITS.values()


def _connect(port: int, head: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
        return answer


def test_bad_credentials_are_refused_407(alice_on: Inspecting) -> None:
    target = f"localhost:{alice_on.origin_port}"
    none = _connect(alice_on.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
    wrong = base64.b64encode(b"alice:ipsx_000000000000_" + b"x" * 32).decode()
    bad = _connect(
        alice_on.port,
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {wrong}\r\n\r\n",
    )
    for answer, code in ((none, "auth_required"), (bad, "auth_failed")):
        assert answer.startswith(b"HTTP/1.1 407 ")
        assert b'Proxy-Authenticate: Basic realm="IPSX"' in answer
        assert f"X-IPSX-Error: {code}".encode() in answer


def test_plain_http_goes_through_the_gateway_too(alice_on: Inspecting) -> None:
    stack = alice_on.stack
    proxy = f"http://alice-country-fr:{stack.secret}@127.0.0.1:{alice_on.port}"
    answer = httpx.get(stack.origin.url("/ip"), proxy=proxy, timeout=20)
    refused = httpx.get(stack.origin.url("/ip"), proxy=f"http://127.0.0.1:{alice_on.port}", timeout=20)
    assert (answer.status_code, answer.text, answer.headers["x-ipsx-tries"]) == (200, EXITS["fr"], "1")
    assert (refused.status_code, refused.headers["x-ipsx-error"]) == (407, "auth_required")


def test_httpx_trusting_the_ca(alice_on: Inspecting) -> None:
    verify = ssl.create_default_context(cafile=str(alice_on.cas["alice"]))
    proxy = f"http://alice-country-us:{alice_on.secrets['alice']}@127.0.0.1:{alice_on.port}"
    with httpx.Client(proxy=proxy, verify=verify, timeout=20) as client:
        first = client.get(alice_on.origin + "/ip")
        posted = client.post(alice_on.origin + "/echo", content=b"payload" * 1000)
    assert (first.status_code, first.text) == (200, EXITS["us"])
    assert (posted.status_code, posted.content) == (200, b"payload" * 1000)


def test_stopping_the_worker_is_clean(inspecting: Inspecting) -> None:
    """A second worker (on its own port) starts, and exits 0 on SIGTERM without a traceback."""
    port = free_port()
    proc = _spawn(
        inspecting.stack,
        [sys.executable, "-m", "ipsx.inspect_command", "--port", str(port), "--gateway", "127.0.0.1:1"],
        "inspect-2.log",
    )
    wait_port(port, timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log = (inspecting.stack.tmp / "inspect-2.log").read_text()
    assert f"inspecting port on 127.0.0.1:{port}" in log
    assert "Traceback" not in log
