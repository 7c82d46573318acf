"""The ``ipsx`` command line: help, and clear errors instead of tracebacks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from ipsx.commands import GatewayAddress, parse_gateway_address


def ipsx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsx", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "command", ["gateway", "provide", "worker", "migrate", "demo", "account", "key", "wallet"]
)
def test_every_command_has_help(command: str) -> None:
    result = ipsx(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: ipsx " + command)


def test_top_level_help_names_the_quick_start() -> None:
    result = ipsx("--help")
    assert result.returncode == 0
    assert "ipsx demo" in result.stdout


def test_wallet_new_writes_a_private_key_file_once(tmp_path: Path) -> None:
    key = tmp_path / "w.key"
    first = ipsx("wallet", "new", "--out", str(key))
    assert first.returncode == 0 and first.stdout.startswith("wallet 0x")
    assert key.stat().st_mode & 0o077 == 0
    again = ipsx("wallet", "new", "--out", str(key))
    assert again.returncode == 2
    assert "not overwriting" in again.stderr and "Traceback" not in again.stderr


def test_wallet_new_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = ipsx("wallet", "new", "--out", str(tmp_path / "missing" / "w.key"))
    assert result.returncode == 2
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "not-an-ip"], "does not appear to be an IPv4 or IPv6 address"),
        (["--bind", "127.0.0.2,country=france"], "country must be a 2-letter"),
        (["--bind", "127.0.0.2,colour=red"], "unknown exit attribute"),
        (["--ports", "8000-"], "bad port range"),
        (["--gateway", "https://gw:8443"], "--gateway must be HOST:PORT, tls://HOST:PORT, ws://"),
        (["--gateway", "tls://gw:8443/tunnel"], "--gateway must be HOST:PORT"),
        (["--gateway", "wss://gw:8443/tunnel?x=1"], "--gateway must be HOST:PORT"),
        (["--gateway", "wss://user:pw@gw/"], "--gateway must be HOST:PORT"),
        (["--gateway-ca", "/etc/ssl/certs/ca-certificates.crt"], "--gateway-ca needs a tls:// or wss://"),
        (
            ["--gateway", "ws://gw:8080", "--gateway-ca", "/etc/ssl/certs/ca-certificates.crt"],
            "needs a tls://",
        ),
    ],
)
def test_provide_refuses_bad_arguments_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    key = tmp_path / "w.key"
    ipsx("wallet", "new", "--out", str(key))
    base = {"--gateway": "127.0.0.1:1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["provide", "--key", str(key)] + [item for pair in base.items() for item in pair]
    result = ipsx(*argv)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gw.example:8443", GatewayAddress("gw.example", 8443, False)),
        ("tcp://gw.example:8443", GatewayAddress("gw.example", 8443, False)),
        ("tls://gw.example:8443/", GatewayAddress("gw.example", 8443, True)),
        ("ws://gw.example", GatewayAddress("gw.example", 80, False, "/")),
        ("wss://gw.example:8443", GatewayAddress("gw.example", 8443, True, "/")),
        ("wss://gw.example/ipsx/tunnel", GatewayAddress("gw.example", 443, True, "/ipsx/tunnel")),
        ("ws://[::1]:9000/", GatewayAddress("::1", 9000, False, "/")),
    ],
)
def test_gateway_addresses(text: str, expected: GatewayAddress) -> None:
    assert parse_gateway_address(text) == expected


def test_provide_with_an_unreadable_key_names_the_file_not_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("0xnot-a-key-at-all")
    result = ipsx("provide", "--key", str(bad), "--gateway", "127.0.0.1:1")
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert "not-a-key" not in result.stderr  # never echo key material


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ipsx_with_database(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IPSX_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "ipsx", *args], env=env, capture_output=True, text=True, timeout=90
    )


@pytest.mark.parametrize("command", [["migrate"], ["account", "list"], ["key", "list", "bob"]])
@pytest.mark.parametrize(
    ("port", "error"),
    [
        (None, "ConnectionRefusedError: "),  # a port nothing listens on
        ("5432x", "ValueError: invalid literal for int()"),
        ("99999", "OverflowError: connect(): port must be 0-65535"),
    ],
)
def test_database_commands_report_an_unusable_database_in_one_line(
    command: list[str], port: str | None, error: str
) -> None:
    url = f"postgresql://ipsx:s3cr3t-db@127.0.0.1:{port or _unused_port()}/ipsx"
    result = _ipsx_with_database(url, *command)
    assert result.returncode == 2
    shown = url.replace("s3cr3t-db", "[REDACTED]")
    assert result.stderr.startswith(
        f"ipsx {command[0]}: cannot use the database {shown} (IPSX_DATABASE_URL): {error}"
    )
    assert result.stderr.count("\n") == 1 and "s3cr3t" not in result.stderr


ADMIN_URL = os.environ.get("IPSX_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IPSX_TEST_CLI_REDIS_URL", "redis://127.0.0.1:6379/4")
SERVICES = {
    "gateway": ["gateway", "--http-port", "0", "--socks-port", "0", "--tunnel-port", "0"],
    "worker": ["worker"],
    "api": ["api", "--port", "0"],
}
ENCODE_HINT = "(percent-encode the password's '/', '?', '#' and '@' as %2F, %3F, %23 and %40)"


def _ipsx_service(
    command: str, database_url: str, redis_url: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "IPSX_DATABASE_URL": database_url,
        "IPSX_REDIS_URL": redis_url,
        "IPSX_JWT_SECRET": "j" * 32,  # the API's, checked before the database
    }
    return subprocess.run(
        [sys.executable, "-m", "ipsx", *SERVICES[command], *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.parametrize("command", SERVICES)
@pytest.mark.parametrize(
    ("url", "shown", "error"),
    [
        (
            "postgresql://nobody:s3cr3t-db@127.0.0.1:PORT/x",  # a port nothing listens on
            "postgresql://nobody:[REDACTED]@127.0.0.1:PORT/x",
            "ConnectionRefusedError: ",
        ),
        ("postgres://:::", "postgres://:::", "ValueError: invalid literal for int() with base 10: '::'"),
        (
            # asyncpg cuts the URL at the "/" and reads "pa" as the port
            "postgresql://ipsx:pa/ss#w@127.0.0.1:5432/ipsx",
            "postgresql://ipsx:[REDACTED]@127.0.0.1:5432/ipsx",
            f"ValueError: invalid literal for int() with base 10: '[REDACTED]' {ENCODE_HINT}\n",
        ),
        (
            "postgresql://nobody:s3cr3t pw@127.0.0.1:PORT/x",  # a space: no pattern tells where it ends
            "postgresql://nobody:[REDACTED]@127.0.0.1:PORT/x",
            "ConnectionRefusedError: ",
        ),
    ],
    ids=["refused", "malformed", "slash-in-password", "space-in-password"],
)
def test_services_report_an_unusable_database_in_one_line(
    command: str, url: str, shown: str, error: str
) -> None:
    port = str(_unused_port())
    result = _ipsx_service(command, url.replace("PORT", port), REDIS_URL)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"ipsx {command}: cannot use the database {shown.replace('PORT', port)} (IPSX_DATABASE_URL): {error}"
    )
    assert result.stderr.count("\n") == 1
    for secret in ("s3cr3t", "pa/", "'pa'", "ss#w"):
        assert secret not in result.stderr


def test_api_refuses_a_consent_lasting_past_30_days() -> None:
    result = _ipsx_service("api", ADMIN_URL, REDIS_URL, "--consent-ttl", "2592001")
    assert result.returncode == 2
    assert result.stderr == "ipsx api: --consent-ttl must be at most 30 days (2592000 seconds)\n"


def test_provide_warns_of_a_bind_address_the_host_does_not_have(tmp_path: Path) -> None:
    key = tmp_path / "w.key"
    ipsx("wallet", "new", "--out", str(key))
    gateway = f"127.0.0.1:{_unused_port()}"
    argv = ["provide", "--key", str(key), "--gateway", gateway, "--bind", "192.0.2.99,country=fr"]
    agent = subprocess.Popen(
        [sys.executable, "-m", "ipsx", *argv, "--state-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stderr is not None
        first = agent.stderr.readline()  # before it tries the gateway
    finally:
        agent.send_signal(signal.SIGINT)
        agent.communicate(timeout=30)
    assert "--bind 192.0.2.99: this host has no such address now" in first
    assert "streams through that exit fail until it has" in first


@pytest.mark.parametrize("command", SERVICES)
def test_services_report_a_missing_database_in_one_line_with_the_cure(command: str) -> None:
    name = f"ipsx_test_cli_missing_{os.getpid()}"
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    result = _ipsx_service(command, url, REDIS_URL)
    assert result.returncode == 2
    assert result.stderr == (
        f"ipsx {command}: cannot use the database {url} (IPSX_DATABASE_URL): InvalidCatalogNameError: "
        f'database "{name}" does not exist; `ipsx migrate` creates it and its tables\n'
    )


@pytest.mark.parametrize("command", SERVICES)
def test_services_report_a_malformed_redis_url_in_one_line(command: str) -> None:
    result = _ipsx_service(command, ADMIN_URL, "redis://:se/cr#et@127.0.0.1:6379/4")
    assert result.returncode == 2
    shown = "redis://:[REDACTED]@127.0.0.1:6379/4"
    assert result.stderr.startswith(
        f"ipsx {command}: cannot use Redis {shown} (IPSX_REDIS_URL): ValueError: "
    )
    assert result.stderr.endswith(f"{ENCODE_HINT}\n") and result.stderr.count("\n") == 1
    assert "se/" not in result.stderr and "'se'" not in result.stderr and "cr#et" not in result.stderr


def test_gateway_reports_an_unreachable_redis_in_one_line() -> None:
    port = _unused_port()
    result = _ipsx_service("gateway", ADMIN_URL, f"redis://:s3cr3t-redis@127.0.0.1:{port}/4")
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"ipsx gateway: cannot use Redis redis://:[REDACTED]@127.0.0.1:{port}/4 (IPSX_REDIS_URL): "
        f"ConnectionError: Error 111 connecting to 127.0.0.1:{port}."
    )
    assert result.stderr.count("\n") == 1 and "s3cr3t" not in result.stderr


@pytest.mark.timeout(180)  # five starts of a worker, with the supervisor's back-off between them
def test_gateway_workers_report_an_unusable_database_in_one_line_each() -> None:
    # Each worker process checks for itself, and the supervisor starts it again until it gives up.
    http, socks, tunnel = (str(_unused_port()) for _ in range(3))
    ports = ["--http-port", http, "--socks-port", socks, "--tunnel-port", tunnel]
    env = {
        **os.environ,
        "IPSX_DATABASE_URL": "postgresql://ipsx:pa/ss@127.0.0.1:5432/ipsx",
        "IPSX_REDIS_URL": REDIS_URL,
    }
    result = subprocess.run(
        [sys.executable, "-m", "ipsx", "gateway", "--workers", "2", "--node-id", "cli", *ports],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 1
    assert "giving up, stopping all workers" in result.stderr
    line = (
        "ipsx gateway: cannot use the database postgresql://ipsx:[REDACTED]@127.0.0.1:5432/ipsx "
        f"(IPSX_DATABASE_URL): ValueError: invalid literal for int() with base 10: '[REDACTED]' {ENCODE_HINT}"
    )
    assert result.stderr.count(line) >= 5  # one per start that failed, at least the 5 of one worker
    assert "Traceback" not in result.stderr and "pa/ss" not in result.stderr and "'pa'" not in result.stderr
