"""The real stack for end-to-end tests: gateway, worker and provider agents as separate processes.

They run from the ``ipsx`` command line against the machine's PostgreSQL (a database made for
this test session) and Redis (a database number of its own), with an origin on 127.0.0.1 that
answers with the source address each request came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import redis

from gateway.agent.settings import load_key
from gateway.tunnel import exit_id_for
from ipsx.origin import Origin

ADMIN_DSN = os.environ.get("IPSX_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IPSX_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/11")
EXITS = {"fr": "127.0.0.2", "de": "127.0.0.3", "us": "127.0.0.4"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Stack:
    env: dict[str, str]
    http_port: int
    socks_port: int
    tunnel_port: int
    account: str
    secret: str
    origin: Origin
    database_url: str
    tmp: Path
    redis_url: str = REDIS_URL
    metrics_port: int = 0  # the gateway's /metrics, /healthz, /readyz
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def proxy(self, user_suffix: str = "", scheme: str = "http", secret: str | None = None) -> str:
        port = self.http_port if scheme == "http" else self.socks_port
        return f"{scheme}://{self.account}{user_suffix}:{secret or self.secret}@127.0.0.1:{port}"

    def ipsx(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "ipsx", *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and done.returncode != 0:  # what it said, in the failure's report
            raise AssertionError(f"ipsx {args[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / log, "ab") as handle:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "ipsx", *args], env=self.env, stdout=handle, stderr=subprocess.STDOUT
            )
        self.processes.append(proc)
        return proc

    def start_agent(
        self, name: str, bind: str, country: str, *extra: str, gateway: str = ""
    ) -> subprocess.Popen[bytes]:
        """A provider agent (log ``<name>.log``), by default on this stack's gateway node."""
        key = self.tmp / f"{name}.key"
        if not key.exists():
            self.ipsx("wallet", "new", "--out", str(key))
        proc = self.spawn(
            "provide",
            "--key",
            str(key),
            "--gateway",
            gateway or f"127.0.0.1:{self.tunnel_port}",
            "--bind",
            bind,
            "--country",
            country,
            "--pool-size",
            "4",
            *extra,
            log=f"{name}.log",
        )
        self.agents[name] = proc
        return proc

    def spawn_gateway(
        self, node_id: str, http_port: int, tunnel_port: int, *extra: str
    ) -> subprocess.Popen[bytes]:
        """Another gateway node of this stack (its SOCKS5 port is any free one)."""
        return self.spawn(
            "gateway",
            "--http-port",
            str(http_port),
            "--socks-port",
            str(free_port()),
            "--tunnel-port",
            str(tunnel_port),
            "--node-id",
            node_id,
            *extra,
            log=f"{node_id}-gateway.log",
        )

    def wait_served(self, proxy: str, expected: str, timeout: float = 20.0) -> str:
        """What the origin's /ip answers through ``proxy``, retried until it is ``expected``."""
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                ["curl", "-sS", "--max-time", "5", "-x", proxy, self.origin.url("/ip")],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if result.stdout == expected or time.monotonic() > deadline:
                return result.stdout
            time.sleep(0.2)

    def stop_agent(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def live_exits(self) -> set[str]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            floor = int((time.time() - 10) * 1000)
            members = client.zrangebyscore("ipsx:{pool}:alive", floor, "+inf")
            return {m.decode().rsplit("|", 1)[1] for m in members}
        finally:
            client.close()

    def nodes_of(self, exit_id: str) -> set[str]:
        """The gateway nodes that hold a live tunnel to ``exit_id``."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            floor = int((time.time() - 10) * 1000)
            members = client.zrangebyscore("ipsx:{pool}:alive", floor, "+inf")
            return {
                node for node, _, exit in (m.decode().rpartition("|") for m in members) if exit == exit_id
            }
        finally:
            client.close()

    def exit_id(self, agent: str, bind: str) -> str:
        """The exit id the agent ``agent`` (its wallet in ``<agent>.key``) gets for ``bind``."""
        return exit_id_for(load_key(self.tmp / f"{agent}.key", None).address, bind)

    def wait_exit_on(self, exit_id: str, nodes: set[str], timeout: float = 30.0) -> None:
        """Until every one of ``nodes`` holds a tunnel to ``exit_id`` (agents learn new nodes from
        the node registry within a few seconds)."""
        deadline = time.monotonic() + timeout
        while not nodes <= self.nodes_of(exit_id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{exit_id} reached {self.nodes_of(exit_id)}, not all of {nodes}")
            time.sleep(0.1)

    def wait_exits(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.live_exits()) == count:
                return
            time.sleep(0.1)
        raise TimeoutError(f"expected {count} live exits, have {len(self.live_exits())}")

    def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    def wait_usage(
        self, where: str, *args: object, count: int = 1, timeout: float = 15.0
    ) -> list[asyncpg.Record]:
        deadline = time.monotonic() + timeout
        rows: list[asyncpg.Record] = []
        while time.monotonic() < deadline:
            rows = self.query(f"SELECT * FROM metered_streams WHERE {where}", *args)
            if len(rows) >= count:
                return rows
            time.sleep(0.1)
        raise TimeoutError(f"expected {count} usage rows for {where}, found {len(rows)}")


async def _create_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.contextmanager
def running_stack(tmp: Path, name: str, redis_url: str, *, gateway: bool = True) -> Iterator[Stack]:
    """A database ``name`` made afresh, the Redis database ``redis_url`` emptied, an origin, an
    account ``alice`` with a key, and (with ``gateway``) one gateway node, a worker and the three
    agents of ``EXITS``; everything stopped and dropped on the way out."""
    asyncio.run(_create_database(name))
    database_url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    redis.Redis.from_url(redis_url).flushdb()
    env = {**os.environ, "IPSX_DATABASE_URL": database_url, "IPSX_REDIS_URL": redis_url}
    origin = Origin("127.0.0.1", 0).start()
    stack = Stack(
        env=env,
        http_port=free_port(),
        socks_port=free_port(),
        tunnel_port=free_port(),
        metrics_port=free_port(),
        account="",
        secret="",
        origin=origin,
        database_url=database_url,
        tmp=tmp,
        redis_url=redis_url,
    )
    try:
        stack.ipsx("migrate")
        stack.ipsx("account", "create", "--address", "0x" + "ab" * 20, "--name", "alice")
        out = stack.ipsx("key", "create", "alice").stdout
        secret = re.search(r"secret: (\S+)", out)
        if secret is None:
            raise RuntimeError(f"no secret in {out!r}")
        stack.account, stack.secret = "alice", secret.group(1)
        if gateway:
            stack.spawn(
                "gateway",
                "--http-port",
                str(stack.http_port),
                "--socks-port",
                str(stack.socks_port),
                "--tunnel-port",
                str(stack.tunnel_port),
                "--node-id",
                "test-node",
                "--handshake-timeout",
                "2",
                "--metrics-port",
                str(stack.metrics_port),
                log="gateway.log",
            )
            stack.spawn("worker", log="worker.log")
            wait_port(stack.tunnel_port)
            for country, bind in EXITS.items():
                stack.start_agent(f"agent-{country}", bind, country, "--allow-private")
            stack.wait_exits(len(EXITS))
        yield stack
    finally:
        for proc in stack.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in stack.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        origin.stop()
        asyncio.run(_drop_database(name))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), f"ipsx_test_e2e_{os.getpid()}", REDIS_URL) as stack:
        yield stack
