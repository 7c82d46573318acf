"""Run the locust scenarios of ``loadtests/locustfile.py`` headless against a stack started here.

It starts, on this machine: an origin on 127.0.0.1, ``ipsx gateway --workers N``, ``ipsx worker``,
three provider agents on 127.0.0.2-4, and ``ipsx api`` (PostgreSQL database ``ipsx_locust`` made
afresh, Redis database 15 flushed), creates an account with an API key, runs each scenario for
``--duration`` seconds, and prints a table: requests, failures, req/s, latency percentiles, the
CPU time of the gateway and agent processes per request, and the streams the gateway metered.

    .venv/bin/python loadtests/run_locust.py                     # all three scenarios, 30 s each
    .venv/bin/python loadtests/run_locust.py --users 20 --duration 10 --scenarios rotating
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
import redis

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from ipsx.origin import Origin  # noqa: E402

SCENARIOS = {"rotating": "RotatingScraper", "sticky": "StickyScraper", "api": "ApiUser"}
EXITS = {"fr": "127.0.0.2", "de": "127.0.0.3", "us": "127.0.0.4"}
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


async def _recreate(database: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()


async def _metered(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(bytes_up + bytes_down), 0) AS bytes FROM usage_events"
        )
        assert row is not None
        return int(row["n"]), int(row["bytes"])
    finally:
        await conn.close()


@dataclass
class Stack:
    env: dict[str, str]
    http_port: int
    api_port: int
    origin: Origin
    secret: str
    gateway: subprocess.Popen[bytes]
    agents: list[subprocess.Popen[bytes]]

    def cpu_seconds(self) -> dict[str, float]:
        def tree(pid: int) -> float:
            try:
                proc = psutil.Process(pid)
                total = 0.0
                for p in [proc, *proc.children(recursive=True)]:
                    times = p.cpu_times()
                    total += times.user + times.system
                return total
            except psutil.Error:
                return 0.0

        return {"gateway": tree(self.gateway.pid), "agents": sum(tree(a.pid) for a in self.agents)}


@contextlib.contextmanager
def running_stack(args: argparse.Namespace, logs: Path) -> Iterator[Stack]:
    asyncio.run(_recreate(args.database))
    database_url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{args.database}"
    redis.Redis.from_url(args.redis_url).flushdb()
    env = {
        **os.environ,
        "IPSX_DATABASE_URL": database_url,
        "IPSX_REDIS_URL": args.redis_url,
        "IPSX_JWT_SECRET": secrets.token_hex(32),
    }
    ipsx = [sys.executable, "-m", "ipsx"]
    procs: list[subprocess.Popen[bytes]] = []

    def cli(*argv: str) -> str:
        return subprocess.run([*ipsx, *argv], env=env, capture_output=True, text=True, check=True).stdout

    def spawn(name: str, *argv: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen([*ipsx, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    origin = Origin("127.0.0.1", 0).start()
    try:
        cli("migrate")
        cli("account", "create", "--address", "0x" + "cd" * 20, "--name", "loadtest")
        cli("account", "credit", "loadtest", "1000")
        found = re.search(r"secret: (\S+)", cli("key", "create", "loadtest"))
        assert found is not None
        http_port, tunnel_port, api_port = free_port(), free_port(), free_port()
        gateway = spawn(
            "gateway",
            "gateway",
            "--workers",
            str(args.workers),
            "--http-port",
            str(http_port),
            "--socks-port",
            str(free_port()),
            "--tunnel-port",
            str(tunnel_port),
            "--node-id",
            "locust",
        )
        spawn("worker", "worker")
        spawn("api", "api", "--port", str(api_port))
        wait_port(http_port)
        agents = []
        for country, bind in EXITS.items():
            key = logs / f"agent-{country}.key"
            cli("wallet", "new", "--out", str(key))
            agents.append(
                spawn(
                    f"agent-{country}",
                    "provide",
                    "--key",
                    str(key),
                    "--gateway",
                    f"127.0.0.1:{tunnel_port}",
                    "--bind",
                    bind,
                    "--country",
                    country,
                    "--allow-private",
                    "--pool-size",
                    "32",
                )
            )
        wait_port(api_port)
        client = redis.Redis.from_url(args.redis_url)
        deadline = time.monotonic() + 60
        while len({m.rsplit(b"|", 1)[1] for m in client.zrange("ipsx:{pool}:alive", 0, -1)}) < len(EXITS):
            if time.monotonic() > deadline:
                raise TimeoutError("the agents did not come online")
            time.sleep(0.2)
        time.sleep(3)  # the agents reach every gateway worker through the node registry
        yield Stack(env, http_port, api_port, origin, found.group(1), gateway, agents)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        origin.stop()


def run_scenario(stack: Stack, scenario: str, args: argparse.Namespace, logs: Path) -> dict[str, float | str]:
    env = {
        **stack.env,
        "IPSX_LOCUST_GATEWAY": f"127.0.0.1:{stack.http_port}",
        "IPSX_LOCUST_USER": "loadtest",
        "IPSX_LOCUST_SECRET": stack.secret,
        "IPSX_LOCUST_ORIGIN": stack.origin.url("").rstrip("/"),
        "IPSX_LOCUST_API": f"http://127.0.0.1:{stack.api_port}",
    }
    prefix = logs / scenario
    before_cpu = stack.cpu_seconds()
    before_metered = asyncio.run(_metered(stack.env["IPSX_DATABASE_URL"]))
    before_origin = stack.origin.connections
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--only-summary",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{args.duration:.0f}s",
        "--csv",
        str(prefix),
        *(["--host", env["IPSX_LOCUST_API"]] if scenario == "api" else []),
        SCENARIOS[scenario],
    ]
    with open(logs / f"locust-{scenario}.log", "wb") as out:
        subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    after_cpu = stack.cpu_seconds()
    time.sleep(2)  # the last usage events reach PostgreSQL
    after_metered = asyncio.run(_metered(stack.env["IPSX_DATABASE_URL"]))
    origin_connections = stack.origin.connections - before_origin
    with open(f"{prefix}_stats.csv", newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    requests = int(total["Request Count"])
    row: dict[str, float | str] = {
        "scenario": f"{scenario} ({SCENARIOS[scenario]})",
        "requests": requests,
        "failures": int(total["Failure Count"]),
        "rps": float(total["Requests/s"]),
        "p50": float(total["50%"]),
        "p95": float(total["95%"]),
        "p99": float(total["99%"]),
        "streams": after_metered[0] - before_metered[0],
        "origin": origin_connections,
        "mb": (after_metered[1] - before_metered[1]) / 1e6,
    }
    for role in ("gateway", "agents"):
        spent = after_cpu[role] - before_cpu[role]
        row[f"cpu_{role}"] = spent * 1e6 / requests if requests else 0.0
    return row


def markdown(rows: list[dict[str, float | str]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.users} users, {args.duration:.0f} s per scenario, gateway --workers {args.workers}, "
        "3 agents; locust and the stack share this machine.",
        "",
        "| scenario | requests | failures | req/s | p50 ms | p95 ms | p99 ms | gateway CPU µs/req "
        "| agents CPU µs/req | origin connections | streams metered | MB metered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['requests']:,} | {row['failures']:,} | {row['rps']:,.0f} "
            f"| {row['p50']:.0f} | {row['p95']:.0f} | {row['p99']:.0f} | {row['cpu_gateway']:,.0f} "
            f"| {row['cpu_agents']:,.0f} | {row['origin']:,} | {row['streams']:,} | {row['mb']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios", default="rotating,sticky,api", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--users", type=int, default=50, help="concurrent locust users (default: %(default)s)"
    )
    parser.add_argument(
        "--spawn-rate", type=float, default=25, help="users started per second (default: %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=30, help="seconds per scenario (default: %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gateway --workers (default: %(default)s)")
    parser.add_argument("--database", default="ipsx_locust", help="scratch database (default: %(default)s)")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/15", help="Redis, flushed first (default: %(default)s)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    logs = Path(tempfile.mkdtemp(prefix="ipsx-locust-"))
    log(f"logs and locust CSV files in {logs}")
    rows = []
    with running_stack(args, logs) as stack:
        log(f"stack up: proxy 127.0.0.1:{stack.http_port}, API 127.0.0.1:{stack.api_port}")
        for scenario in scenarios:
            log(f"{scenario}: {args.users} users for {args.duration:.0f}s")
            rows.append(run_scenario(stack, scenario, args, logs))
            log(f"{scenario}: {rows[-1]['requests']:,} requests, {rows[-1]['failures']:,} failures")
    table = markdown(rows, args)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 1 if any(row["failures"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
