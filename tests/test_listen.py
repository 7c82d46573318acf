"""Ports the services cannot listen on: one line naming the option and the address, a non-zero
exit status, never a traceback (``ipsx.listen``).

The commands run for real, as subprocesses, against a loopback port another socket of this test
holds; they need PostgreSQL (IPSX_TEST_DATABASE_ADMIN_URL) and Redis (IPSX_TEST_LISTEN_REDIS_URL,
db 1 by default), which each reaches before it binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboard.app import running_api
from dashboard.settings import ApiSettings
from ipsx import demo
from ipsx.listen import ListenError, check_free, listening
from tests.billing.conftest import create_and_migrate, drop_database

ADMIN_URL = os.environ.get("IPSX_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IPSX_TEST_LISTEN_REDIS_URL", "redis://127.0.0.1:6379/1")
IN_USE = (
    "Address already in use; another process listens there (`ss -ltnp` shows which): stop it or "
    "pick another port"
)
NOT_HERE = "192.0.2.1"  # TEST-NET-1: no host has it
NOT_HERE_REASON = (
    "Cannot assign requested address; this host has no such address (`ip addr` lists its addresses)"
)


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port that a socket of this test listens on (without SO_REUSEPORT, so that the
    gateway's --workers cannot share it either)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ipsx(*args: str, prefix: tuple[str, ...] = (), timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "IPSX_DATABASE_URL": ADMIN_URL,
        "IPSX_REDIS_URL": REDIS_URL,
        "IPSX_JWT_SECRET": "j" * 32,
    }
    return subprocess.run(
        [*prefix, sys.executable, "-m", "ipsx", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _in_use(command: str, option: str, port: int) -> str:
    return f"ipsx {command}: cannot listen on 127.0.0.1:{port} ({option}): {IN_USE}"


def _assert_one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr == line + "\n"


def _assert_last_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    """The command said ``line`` last (after the log lines of what it started before binding)."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == line
    assert "Traceback" not in result.stderr


# ---- the error itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "host", "port", "expected"),
    [
        (
            # as asyncio and uvloop raise it: the address and errno in a message of their own
            OSError(
                98, "error while attempting to bind on address ('127.0.0.1', 8080): address already in use"
            ),
            "127.0.0.1",
            8080,
            f"cannot listen on 127.0.0.1:8080 (--http-port): {IN_USE}",
        ),
        (
            PermissionError(13, "Permission denied"),
            "0.0.0.0",
            80,
            "cannot listen on 0.0.0.0:80 (--http-port): Permission denied; ports below 1024 need root "
            "or the CAP_NET_BIND_SERVICE capability",
        ),
        (
            PermissionError(13, "Permission denied"),
            "0.0.0.0",
            8080,
            "cannot listen on 0.0.0.0:8080 (--http-port): Permission denied",
        ),
        (
            OSError(99, "error while attempting to bind on address ('192.0.2.1', 0): cannot assign"),
            NOT_HERE,
            0,
            f"cannot listen on {NOT_HERE}:0 (--http-port): {NOT_HERE_REASON}",
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            "gw.invalid",
            8080,
            "cannot listen on gw.invalid:8080 (--http-port): Name or service not known",
        ),
        (
            OSError(98, "Address already in use"),
            "::1",
            8080,
            f"cannot listen on [::1]:8080 (--http-port): {IN_USE}",
        ),
    ],
    ids=["in-use", "privileged", "denied", "not-here", "unknown-host", "ipv6"],
)
def test_listen_error_call(error: OSError, host: str, port: int, expected: str) -> None:
    listen_error = ListenError("--http-port", host, port, error)
    assert str(listen_error) == expected
    assert listen_error.errno == error.errno and listen_error.os_error is error
    assert isinstance(listen_error, OSError)


def test_listening_call(taken: int) -> None:
    with (
        pytest.raises(ListenError) as raised,
        listening("--port", "127.0.0.1", taken),
        socket.socket() as sock,
    ):
        sock.bind(("127.0.0.1", taken))
    assert raised.value.errno == errno.EADDRINUSE
    assert (raised.value.option, raised.value.host, raised.value.port) == ("--port", "127.0.0.1", taken)
    with pytest.raises(ValueError), listening("--port", "127.0.0.1", taken):  # not a bind's error
        raise ValueError("kept as it is")


def test_check_free_call(taken: int) -> None:
    with pytest.raises(ListenError) as raised:
        check_free("--api-port", "127.0.0.1", taken)
    assert str(raised.value) == f"cannot listen on 127.0.0.1:{taken} (--api-port): {IN_USE}"
    check_free("--api-port", "127.0.0.1", 0)  # any free port: nothing to check
    check_free("--api-port", "127.0.0.1", _unused_port())


# ---- the commands -------------------------------------------------------------------------------

GATEWAY_PORTS = ("--http-port", "--socks-port", "--tunnel-port")


@pytest.mark.parametrize("option", [*GATEWAY_PORTS, "--metrics-port"])
def test_gateway_reports_a_port_in_use_in_one_line(taken: int, option: str) -> None:
    ports = {flag: "0" for flag in GATEWAY_PORTS}
    ports[option] = str(taken)
    result = _ipsx("gateway", *(item for pair in ports.items() for item in pair))
    _assert_one_line(result, _in_use("gateway", option, taken))


def test_gateway_reports_an_address_this_host_lacks_in_one_line() -> None:
    result = _ipsx("gateway", "--host", NOT_HERE, *(item for flag in GATEWAY_PORTS for item in (flag, "0")))
    _assert_one_line(result, f"ipsx gateway: cannot listen on {NOT_HERE}:0 (--http-port): {NOT_HERE_REASON}")


@pytest.mark.timeout(180)  # five starts of a worker, with the supervisor's back-off between them
def test_gateway_workers_report_a_port_in_use_in_one_line_each(taken: int) -> None:
    # The workers share the HTTP port (SO_REUSEPORT), but not with a socket that did not ask to.
    # Each one says why it failed; the supervisor starts it again until it gives up.
    ports = [
        "--http-port",
        str(taken),
        "--socks-port",
        str(_unused_port()),
        "--tunnel-port",
        str(_unused_port()),
    ]
    result = _ipsx("gateway", "--workers", "2", "--node-id", "listen", *ports, timeout=150)
    assert result.returncode == 1
    assert "giving up, stopping all workers" in result.stderr
    assert result.stderr.count(_in_use("gateway", "--http-port", taken) + "\n") >= 5
    assert "Traceback" not in result.stderr


def test_api_reports_a_port_in_use_before_it_starts_anything(taken: int) -> None:
    # One line: no market loaded, no leadership taken and given up, only the refusal.
    _assert_one_line(_ipsx("api", "--port", str(taken)), _in_use("api", "--port", taken))


def test_api_reports_an_address_this_host_lacks_in_one_line() -> None:
    result = _ipsx("api", "--host", NOT_HERE, "--port", "0")
    _assert_one_line(result, f"ipsx api: cannot listen on {NOT_HERE}:0 (--port): {NOT_HERE_REASON}")


def test_worker_reports_a_metrics_port_in_use_in_one_line(taken: int) -> None:
    result = _ipsx("worker", "--metrics-port", str(taken))
    _assert_last_line(result, _in_use("worker", "--metrics-port", taken))


def test_inspect_reports_a_port_in_use_in_one_line(taken: int) -> None:
    result = _ipsx("inspect", "--port", str(taken), "--gateway", f"127.0.0.1:{_unused_port()}")
    _assert_last_line(result, _in_use("inspect", "--port", taken))
    assert "mitmproxy" not in result.stderr  # told once, by us


def test_devchain_reports_a_port_in_use_in_one_line(taken: int) -> None:
    _assert_one_line(_ipsx("devchain", "--port", str(taken)), _in_use("devchain", "--port", taken))


# Runs the command line's imports, then listens on port 1: PermissionError without the right to.
_PROBE = "import ipsx.cli, socket; socket.socket().bind(('127.0.0.1', 1))"


def _unprivileged() -> tuple[str, ...]:
    """What runs a command without the right to listen on port 1: nothing when this process has
    none; as root, a user namespace of its own (``unshare``: still root for the files, not for
    the host's ports) or the nobody user (``setpriv``), whichever runs this Python here. Skips
    when none does, or when this host lets anyone listen on port 1."""
    candidates: list[tuple[str, ...]] = [()]
    if os.geteuid() == 0:
        candidates = [
            (tool, *options)
            for tool, options in (
                ("unshare", ("--user", "--map-root-user")),
                ("setpriv", ("--reuid=65534", "--regid=65534", "--clear-groups")),
            )
            if shutil.which(tool)
        ]
    tried = []
    for prefix in candidates:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60
        )
        if probe.stderr.rstrip().endswith("PermissionError: [Errno 13] Permission denied"):
            return prefix
        tried.append(f"{' '.join(prefix) or 'as is'}: {probe.stderr.strip()[-160:]!r}")
    pytest.skip(f"no unprivileged run that cannot listen on port 1 here ({'; '.join(tried)})")


def test_devchain_reports_a_privileged_port_in_one_line() -> None:
    result = _ipsx("devchain", "--port", "1", prefix=_unprivileged())
    _assert_one_line(
        result,
        "ipsx devchain: cannot listen on 127.0.0.1:1 (--port): Permission denied; ports below 1024 need "
        "root or the CAP_NET_BIND_SERVICE capability",
    )


DEMO_PORTS = ("--http-port", "--socks-port", "--tunnel-port", "--origin-port", "--api-port")


@pytest.mark.parametrize("option", DEMO_PORTS)
def test_demo_reports_a_port_in_use_before_it_starts_anything(
    tmp_path: Path, taken: int, option: str
) -> None:
    ports = {flag: "0" for flag in DEMO_PORTS}
    ports[option] = str(taken)
    result = _ipsx("demo", "--data-dir", str(tmp_path), *(item for pair in ports.items() for item in pair))
    _assert_one_line(result, _in_use("demo", option, taken))
    assert result.stdout == ""  # no embedded service, no chain started
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo.lock"]


# ---- the demo's API on a port it picked ---------------------------------------------------------


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A migrated database of this module's own (sync, so it does not pin an event loop)."""
    name = f"ipsx_test_listen_{os.getpid()}"
    url = asyncio.run(create_and_migrate(name))
    yield url
    asyncio.run(drop_database(name))


async def test_demo_api_picks_another_port_when_its_pick_is_taken(
    taken: int, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process takes the port the demo picked for its API before the API listens on it.
    picks = iter([taken])
    pick = demo.free_port
    monkeypatch.setattr(demo, "free_port", lambda: next(picks, 0) or pick())

    def settings(port: int) -> ApiSettings:
        return ApiSettings(
            database_url, REDIS_URL, "j" * 32, port=port, siwe_domain=f"127.0.0.1:{port}", market=False
        )

    async with contextlib.AsyncExitStack() as stack:
        with caplog.at_level(logging.WARNING, logger="ipsx.demo"):
            port = await demo._start_api(stack, 0, settings)
        assert port != taken
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/openapi.json")).status_code == 200
    assert f"port {taken} was taken before the API could listen on it; picking another" in caplog.text


async def test_demo_api_on_a_port_in_use_names_the_demos_option(taken: int, database_url: str) -> None:
    settings = ApiSettings(database_url, REDIS_URL, "j" * 32, port=taken, market=False)
    with pytest.raises(ListenError) as raised:
        async with running_api(settings):
            pytest.fail("served on a port in use")
    assert raised.value.option == "--port"
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(ListenError) as relabelled:
            await demo._start_api(stack, taken, lambda port: settings)
    assert str(relabelled.value) == f"cannot listen on 127.0.0.1:{taken} (--api-port): {IN_USE}"
