"""End-to-end: real clients (curl, requests, httpx) through the gateway and provider agents."""

from __future__ import annotations

import asyncio
import base64
import math
import re
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
import requests

from billing.worker import ingested_until
from tests.e2e.conftest import EXITS, Stack


def curl(
    *args: str, timeout: float = 20, input_bytes: bytes | None = None
) -> subprocess.CompletedProcess[Any]:
    """Run curl; text output, or bytes when ``input_bytes`` is given (sent on its stdin)."""
    command = ["curl", "-sS", "--max-time", str(timeout), *args]
    if input_bytes is not None:
        return subprocess.run(command, capture_output=True, input=input_bytes, timeout=timeout + 5)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 5)


def usage_count(stack: Stack) -> int:
    return int(stack.query("SELECT count(*) AS n FROM usage_events")[0]["n"])


def settled_usage_count(stack: Stack) -> int:
    """The usage row count once earlier streams' events have all been ingested: no entry of the
    usage stream waits for a worker, and the count held still for half a second (what the
    gateways publish every 50 ms has arrived)."""
    count = usage_count(stack)
    while True:
        time.sleep(0.5)
        now = usage_count(stack)
        if now == count and asyncio.run(_ingested(stack.redis_url)):
            return now
        count = now


async def _ingested(redis_url: str) -> bool:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return await ingested_until(client, time.time()) == math.inf
    finally:
        await client.aclose()


def test_rotation_gives_a_new_exit_per_connection(stack: Stack) -> None:
    seen = [curl("-x", stack.proxy(), stack.origin.url("/ip")).stdout for _ in range(9)]
    assert set(seen) == set(EXITS.values())


def test_sticky_session_keeps_its_exit(stack: Stack) -> None:
    proxy = stack.proxy("-session-stick1")
    seen = {curl("-x", proxy, stack.origin.url("/ip")).stdout for _ in range(6)}
    assert len(seen) == 1
    socks = {
        curl("-x", stack.proxy("-session-stick1", scheme="socks5h"), stack.origin.url("/ip")).stdout
        for _ in range(3)
    }
    assert socks == seen  # the same session over SOCKS5 keeps the same exit


def test_sticky_session_slides_and_expires(stack: Stack) -> None:
    proxy = stack.proxy("-session-slide1-sessttl-2")
    first = curl("-x", proxy, stack.origin.url("/ip")).stdout
    for _ in range(3):  # 3 s of use with a 2 s TTL: renewed by use, never expires
        time.sleep(1)
        assert curl("-x", proxy, stack.origin.url("/ip")).stdout == first
    import redis

    client = redis.Redis.from_url(stack.env["IPSX_REDIS_URL"])
    key = "ipsx:sess:{alice}:slide1"
    assert 0 < client.ttl(key) <= 2
    time.sleep(2.5)
    assert client.exists(key) == 0


@pytest.mark.parametrize("country", sorted(EXITS))
def test_country_filter_in_username(stack: Stack, country: str) -> None:
    seen = {curl("-x", stack.proxy(f"-country-{country}"), stack.origin.url("/ip")).stdout for _ in range(4)}
    assert seen == {EXITS[country]}


def test_country_filter_as_header_on_plain_and_connect(stack: Stack) -> None:
    plain = curl("-x", stack.proxy(), "-H", "X-IPSX-Country: de", stack.origin.url("/ip"))
    tunnelled = curl(
        "-p", "-x", stack.proxy(), "--proxy-header", "X-IPSX-Country: fr", stack.origin.url("/ip")
    )
    assert plain.stdout == EXITS["de"]
    assert tunnelled.stdout == EXITS["fr"]


def test_no_matching_exit_is_a_clear_error_not_a_fallback(stack: Stack) -> None:
    result = curl("-i", "-x", stack.proxy("-country-br"), stack.origin.url("/ip"))
    assert result.stdout.startswith("HTTP/1.1 502")
    assert "X-IPSX-Error: no_exit_matches" in result.stdout
    socks = curl("-x", stack.proxy("-country-br", scheme="socks5h"), stack.origin.url("/ip"))
    assert socks.returncode == 97
    assert "(3)" in socks.stderr  # SOCKS5 reply 3: network unreachable


def test_an_exit_on_a_loopback_address_says_why_it_cannot_reach_others(stack: Stack) -> None:
    # The test exits bind 127.0.0.x: the kernel refuses the connect (EINVAL) before any packet.
    result = curl("-i", "-x", stack.proxy(), "http://203.0.113.1/")
    assert result.stdout.startswith("HTTP/1.1 403")  # not the exit's fault: no quarantine follows
    assert "X-IPSX-Error: destination_not_allowed" in result.stdout
    assert "this exit's address is a loopback one: it reaches 127.0.0.0/8 only" in result.stdout
    assert "Invalid argument" not in result.stdout


def test_bad_targeting_key_says_which_key(stack: Stack) -> None:
    result = curl("-i", "-x", stack.proxy("-colour-red"), stack.origin.url("/ip"))
    assert result.stdout.startswith("HTTP/1.1 400")
    assert "colour" in result.stdout


def test_missing_or_wrong_credentials_relay_nothing(stack: Stack) -> None:
    before = settled_usage_count(stack)
    anonymous = curl("-i", "-x", f"http://127.0.0.1:{stack.http_port}", stack.origin.url("/ip"))
    wrong = curl("-i", "-x", stack.proxy(secret="ipsx_000000000000_nope"), stack.origin.url("/ip"))
    connect = curl("-i", "-p", "-x", stack.proxy(secret="wrong"), stack.origin.url("/ip"))
    for result in (anonymous, wrong):
        assert result.stdout.startswith("HTTP/1.1 407")
        assert 'Proxy-Authenticate: Basic realm="IPSX"' in result.stdout
    assert "407" in connect.stdout + connect.stderr
    socks_wrong = curl("-x", stack.proxy(scheme="socks5h", secret="wrong"), stack.origin.url("/ip"))
    socks_anonymous = curl("-x", f"socks5h://127.0.0.1:{stack.socks_port}", stack.origin.url("/ip"))
    assert socks_wrong.returncode == 97
    assert socks_anonymous.returncode == 97
    assert settled_usage_count(stack) == before


def test_a_key_without_the_proxy_scope_is_refused_like_a_wrong_one(stack: Stack) -> None:
    out = stack.ipsx("key", "create", "alice", "--scopes", "read,trade", "--label", "api only").stdout
    secret = re.search(r"secret: (\S+)", out)
    assert secret is not None
    before = settled_usage_count(stack)
    http = curl("-i", "-x", stack.proxy(secret=secret.group(1)), stack.origin.url("/ip"))
    socks = curl("-x", stack.proxy(scheme="socks5h", secret=secret.group(1)), stack.origin.url("/ip"))
    assert http.stdout.startswith("HTTP/1.1 407")
    assert socks.returncode == 97
    assert settled_usage_count(stack) == before
    listed = stack.ipsx("key", "list", "alice").stdout
    assert re.search(r"active\s+\S+ \S+\s+read,trade\s+limit -\s+api only", listed)


def test_proxy_credentials_and_ipsx_headers_never_reach_the_origin(stack: Stack) -> None:
    result = curl(
        "-x", stack.proxy(), "-H", "X-IPSX-Country: fr", "-H", "X-Kept: yes", stack.origin.url("/headers")
    )
    lowered = result.stdout.lower()
    assert "x-kept: yes" in lowered
    assert "proxy-authorization" not in lowered
    assert "x-ipsx" not in lowered
    assert "proxy-connection" not in lowered


def test_requests_and_httpx_through_proxy_urls_only(stack: Stack) -> None:
    proxies = {"http": stack.proxy(), "https": stack.proxy()}
    with requests.Session() as session:
        session.proxies.update(proxies)
        ips = {session.get(stack.origin.url("/ip"), timeout=10).text for _ in range(3)}
        echoed = session.post(stack.origin.url("/echo"), data=(b"x" * 1000 for _ in range(50)), timeout=10)
    assert len(ips) == 1  # one kept-alive connection, one exit
    assert echoed.content == b"x" * 50_000  # a chunked request body, forwarded as is
    with httpx.Client(proxy=stack.proxy(), timeout=10) as client:
        assert client.get(stack.origin.url("/ip")).text in EXITS.values()
        assert len(client.get(stack.origin.url("/chunked/300000")).content) == 300_000
    with httpx.Client(proxy=stack.proxy(scheme="socks5"), timeout=10) as client:
        assert client.get(stack.origin.url("/ip")).text in EXITS.values()


def _latest(stack: Stack, protocol: str, after: int) -> dict[str, object]:
    rows = stack.wait_usage(
        "protocol = $1 AND agent_bytes_down IS NOT NULL ORDER BY closed_at", protocol, count=after + 1
    )
    return dict(rows[-1])


@pytest.mark.parametrize("scheme", ["connect", "socks5"])
def test_metered_bytes_equal_what_curl_transferred(stack: Stack, scheme: str, tmp_path: Path) -> None:
    before = len(
        stack.query(
            "SELECT 1 FROM metered_streams WHERE protocol = $1 AND agent_bytes_down IS NOT NULL", scheme
        )
    )
    trace = tmp_path / "trace"
    args = ["-p", "-x", stack.proxy()] if scheme == "connect" else ["-x", stack.proxy(scheme="socks5h")]
    result = curl(
        *args,
        "--trace-ascii",
        str(trace),
        "-o",
        "/dev/null",
        "-w",
        "%{size_request} %{size_header} %{size_download}",
        stack.origin.url("/bytes/1234567"),
    )
    size_request, size_header, size_download = map(int, result.stdout.split())
    assert size_download == 1234567
    if scheme == "connect":
        # curl counts the CONNECT exchange too; the tunnel's payload is what came after it.
        sent = [int(n) for n in re.findall(r"=> Send header, (\d+) bytes", trace.read_text())]
        size_request -= sent[0]
        size_header -= len(f"HTTP/1.1 200 Connection established\r\nX-IPSX-Exit: {'0' * 16}\r\n\r\n")
    row = _latest(stack, scheme, before)
    # Inside a tunnel the metered bytes are exactly the client's payload: its request as sent
    # and the origin's response as received; the CONNECT / SOCKS5 handshake is not metered.
    assert row["gateway_bytes_up"] == size_request
    assert row["gateway_bytes_down"] == size_header + size_download
    assert row["agent_bytes_up"] == row["gateway_bytes_up"]
    assert row["agent_bytes_down"] == row["gateway_bytes_down"]
    assert row["outcome"] in {"client_closed", "exit_closed"}


def test_plain_http_metering_counts_the_forwarded_exchange(stack: Stack) -> None:
    before = len(
        stack.query("SELECT 1 FROM metered_streams WHERE protocol = 'http' AND agent_bytes_down IS NOT NULL")
    )
    result = curl(
        "-x",
        stack.proxy(),
        "-o",
        "/dev/null",
        "-w",
        "%{size_header} %{size_download}",
        stack.origin.url("/bytes/50000"),
    )
    size_header, size_download = map(int, result.stdout.split())
    row = _latest(stack, "http", before)
    # The client also got the gateway's own X-IPSX-Exit and X-IPSX-Tries lines, which never
    # crossed the exit: the meter counts what the exit carried, not them.
    ours = len(f"X-IPSX-Exit: {'0' * 16}\r\nX-IPSX-Tries: 1\r\n")
    assert row["gateway_bytes_down"] == size_header - ours + size_download
    assert row["agent_bytes_down"] == row["gateway_bytes_down"]
    assert row["agent_bytes_up"] == row["gateway_bytes_up"]


@pytest.mark.parametrize("protocol", ["connect", "http"])
def test_a_download_the_client_abandons_is_metered_alike_on_both_sides(stack: Stack, protocol: str) -> None:
    before = len(
        stack.query(
            "SELECT 1 FROM metered_streams WHERE protocol = $1 AND agent_bytes_down IS NOT NULL", protocol
        )
    )
    auth = (
        f"Proxy-Authorization: Basic {base64.b64encode(f'{stack.account}:{stack.secret}'.encode()).decode()}"
    )
    target = f"127.0.0.1:{stack.origin.port}"
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=10) as sock:
        if protocol == "connect":
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n\r\n".encode())
            sock.sendall(f"GET /bytes/200000000 HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        else:
            get = f"GET http://{target}/bytes/200000000 HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n\r\n"
            sock.sendall(get.encode())
        received = 0
        while received < 2_000_000:  # a scraper that has what it wanted, out of 200 MB
            chunk = sock.recv(1 << 16)
            assert chunk
            received += len(chunk)
        # Closing with unread bytes resets the connection: the gateway sees its client lost.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    row = _latest(stack, protocol, before)
    assert row["outcome"] == row["agent_outcome"] == "client_lost"
    # The agent heard how much of the download the gateway relayed and metered that, not what it
    # had sent past it: both meters agree although the stream ended mid-transfer.
    assert row["agent_bytes_down"] == row["gateway_bytes_down"] < 50_000_000
    assert row["agent_bytes_up"] == row["gateway_bytes_up"]


def test_each_stream_is_ingested_once(stack: Stack) -> None:
    dupes = stack.query("SELECT event_id, count(*) FROM usage_events GROUP BY event_id HAVING count(*) > 1")
    assert dupes == []


def _raw(port: int, payload: bytes, *, read: int = 4096) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(read)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_malformed_http_gets_the_protocols_errors(stack: Stack) -> None:
    assert _raw(stack.http_port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(stack.http_port, b"GET http://x/" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 414"
    )
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    assert _raw(stack.http_port, b"GET http://x/ HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    assert _raw(stack.http_port, b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 4")
    # the gateway keeps serving everyone else
    assert curl("-x", stack.proxy(), stack.origin.url("/ip")).stdout in EXITS.values()


def test_malformed_socks5_gets_the_protocols_errors(stack: Stack) -> None:
    assert _raw(stack.socks_port, b"\x05\x01\x00") == b"\x05\xff"  # no auth offered: refused
    user, secret = stack.account.encode(), stack.secret.encode()
    auth = b"\x01" + bytes([len(user)]) + user + bytes([len(secret)]) + secret
    bind = b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50"  # BIND is not supported
    reply = _raw(stack.socks_port, b"\x05\x01\x02" + auth + bind)
    assert reply[:4] == b"\x05\x02\x01\x00"  # method choice, auth ok
    assert reply[4:6] == b"\x05\x07"  # command not supported
    assert curl("-x", stack.proxy(scheme="socks5h"), stack.origin.url("/ip")).stdout in EXITS.values()


def test_slow_client_is_cut_at_the_handshake_deadline(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=30) as sock:
        sock.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\n")
        data = sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 408")


def test_slow_socks5_client_is_closed_without_an_http_answer(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.socks_port), timeout=30) as sock:
        sock.sendall(b"\x05\x01")  # a greeting that never completes
        assert sock.recv(4096) == b""  # closed at the deadline, no HTTP bytes on a SOCKS5 port
