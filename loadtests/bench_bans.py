"""Ban-aware rotation under a site that bans: 20 exits, each banned by the site after N requests.

A scraper of several sticky sessions fetches from a loopback site that answers 403 to any
source address past its N-th request (the origin's ``/guard/N/SITE``). Two runs side by side,
each as its own account against its own site name:

- ``bans``: on a 403 the session's next request carries ``X-IPSX-Ban: 1``;
- ``sticky, no bans`` (a baseline): the session just asks again, as a scraper on a proxy network
  without bans does; its exit keeps serving 403s from the site;
- ``rotating, no bans`` (a baseline): no session, a new exit per request; every exit keeps being
  used after the site banned it.

Reported for each: answers received, requests per useful answer, requests served by an exit
after the scraper banned it (must be 0), the load per exit (requests it carried; the bar is no
exit above twice the mean) and the gateway's CPU time per request.

    python loadtests/bench_bans.py [--exits 20] [--per-exit 25] [--sessions 8] [--json out.json]

Needs the machine's PostgreSQL and Redis (a database and a Redis db of its own, emptied).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ipsx.origin import Origin  # noqa: E402

ADMIN_DSN = os.environ.get("IPSX_BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IPSX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
DATABASE = "ipsx_bench_bans"


def log(message: str) -> None:
    print(f"[bench_bans {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def _database(sql: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@dataclass
class Stack:
    """A gateway, a worker and one agent lending ``exits`` addresses, from the ipsx command line."""

    tmp: Path
    exits: int
    env: dict[str, str] = field(default_factory=dict)
    http_port: int = 0
    tunnel_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ipsx(self, *argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ipsx", *argv], env=self.env, capture_output=True, text=True, timeout=120
        )
        if done.returncode:
            raise RuntimeError(f"ipsx {' '.join(argv)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ipsx", *argv], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def account(self, name: str, number: int) -> str:
        """A new account with a proxy key; returns the key's secret."""
        self.ipsx("account", "create", "--address", "0x" + f"{number:02x}" * 20, "--name", name)
        found = re.search(r"secret: (\S+)", self.ipsx("key", "create", name, "--scopes", "proxy"))
        if found is None:
            raise RuntimeError("no secret in the key's output")
        return found.group(1)

    def live_exits(self) -> int:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return int(client.zcount("ipsx:{pool}:alive", (time.time() - 10) * 1000, "+inf"))
        finally:
            client.close()


@contextlib.contextmanager
def running_stack(exits: int) -> Iterator[Stack]:
    asyncio.run(_database(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    asyncio.run(_database(f'CREATE DATABASE "{DATABASE}"'))
    redis.Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory(prefix="ipsx-bench-bans-") as tmp:
        stack = Stack(Path(tmp), exits)
        stack.env = {
            **os.environ,
            "IPSX_DATABASE_URL": ADMIN_DSN.rsplit("/", 1)[0] + f"/{DATABASE}",
            "IPSX_REDIS_URL": REDIS_URL,
            "PYTHONPATH": str(ROOT),
        }
        stack.http_port, stack.tunnel_port = free_port(), free_port()
        try:
            stack.ipsx("migrate")
            stack.spawn(
                "gateway",
                "gateway",
                "--http-port", str(stack.http_port),
                "--socks-port", str(free_port()),
                "--tunnel-port", str(stack.tunnel_port),
            )  # fmt: skip
            stack.spawn("worker", "worker")
            wait_port(stack.tunnel_port)
            stack.ipsx("wallet", "new", "--out", str(stack.tmp / "provider.key"))
            binds = [arg for n in range(exits) for arg in ("--bind", f"127.0.0.{n + 2}")]
            stack.spawn(
                "agent",
                "provide",
                "--key", str(stack.tmp / "provider.key"),
                "--gateway", f"127.0.0.1:{stack.tunnel_port}",
                "--country", "fr",
                "--allow-private",
                "--pool-size", "16",
                *binds,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while stack.live_exits() < exits:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{stack.live_exits()} of {exits} exits came up")
                time.sleep(0.1)
            yield stack
        finally:
            for proc in stack.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in stack.procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            asyncio.run(_database(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))


@dataclass
class Tally:
    """What the scraper saw, shared by its session threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    useful: int = 0
    requests: int = 0
    refused: int = 0  # 403s from the site
    no_exit: int = 0  # the gateway had no exit left that is not banned
    errors: Counter[str] = field(default_factory=Counter)
    load: Counter[str] = field(default_factory=Counter)  # requests carried, per exit address
    banned_at: dict[str, float] = field(default_factory=dict)  # exit → when its ban was answered
    after_ban: int = 0  # requests sent after an exit's ban was answered that it still carried


def scrape(
    stack: Stack, origin: Origin, account: str, secret: str, site: str, *, per_exit: int, target: int,
    sessions: int, mode: str,
) -> dict[str, Any]:  # fmt: skip
    tally = Tally()
    url = origin.url(f"/guard/{per_exit}/{site}")
    budget = target * 4  # requests at most, so a scraper that cannot finish stops

    def session(number: int) -> None:
        user = account if mode == "rotating" else f"{account}-session-s{number}"
        proxy = f"http://{user}:{secret}@127.0.0.1:{stack.http_port}"
        ban_next: str | None = None  # the exit the next request bans (the session's, on a 403)
        with requests.Session() as client:
            client.proxies = {"http": proxy}
            while True:
                with tally.lock:
                    if tally.useful >= target or tally.requests >= budget or tally.no_exit:
                        return
                    tally.requests += 1
                headers = {"X-IPSX-Ban": "1"} if ban_next else {}
                if mode == "rotating":  # a new connection, so a new exit, for every request
                    headers["Connection"] = "close"
                sent = time.monotonic()
                try:
                    answer = client.get(url, headers=headers, timeout=30)
                except requests.RequestException as error:
                    with tally.lock:
                        tally.errors[type(error).__name__] += 1
                    continue
                with tally.lock:
                    if ban_next is not None:  # the gateway took the ban with this request
                        tally.banned_at.setdefault(ban_next, time.monotonic())
                        ban_next = None
                    if answer.status_code == 502 and answer.headers.get("X-IPSX-Error") == "no_exit_matches":
                        tally.no_exit += 1
                        return
                    source = answer.text
                    if answer.status_code not in (200, 403):
                        tally.errors[str(answer.status_code)] += 1
                        continue
                    tally.load[source] += 1
                    if tally.banned_at.get(source, sent) < sent:
                        tally.after_ban += 1
                    if answer.status_code == 200:
                        tally.useful += 1
                    else:
                        tally.refused += 1
                        if mode == "bans":
                            ban_next = source

    gateway = psutil.Process(stack.procs[0].pid)
    cpu_before = sum(gateway.cpu_times()[:2])
    started = time.perf_counter()
    threads = [threading.Thread(target=session, args=(n,)) for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = sum(gateway.cpu_times()[:2]) - cpu_before
    loads = [tally.load.get(f"127.0.0.{n + 2}", 0) for n in range(stack.exits)]
    mean = statistics.fmean(loads)
    return {
        "mode": {"bans": "bans", "sticky": "sticky, no bans", "rotating": "rotating, no bans"}[mode],
        "useful": tally.useful,
        "target": target,
        "completed": tally.useful >= target,
        "requests": tally.requests,
        "requests_per_useful": round(tally.requests / max(tally.useful, 1), 3),
        "refused_403": tally.refused,
        "served_after_ban": tally.after_ban,
        "exits_banned": len(tally.banned_at),
        "load_max": max(loads),
        "load_mean": round(mean, 2),
        "load_max_over_mean": round(max(loads) / mean, 3) if mean else None,
        "load_min": min(loads),
        "errors": dict(tally.errors),
        "seconds": round(elapsed, 2),
        "gateway_cpu_ms_per_request": round(1000 * cpu / max(tally.requests, 1), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exits", type=int, default=20, help="exits lent by the agent (default 20)")
    parser.add_argument("--per-exit", type=int, default=25, help="requests the site lets each exit make")
    parser.add_argument(
        "--job", type=float, default=0.9, help="useful answers wanted, as a share of what the site gives"
    )
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sticky sessions (default 8)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.exits <= 200:
        parser.error("--exits must be 1 to 200 (one loopback address each)")
    target = int(args.exits * args.per_exit * args.job)
    origin = Origin("127.0.0.1", 0).start()
    results: list[dict[str, Any]] = []
    try:
        log(f"starting a gateway, a worker and an agent with {args.exits} exits")
        with running_stack(args.exits) as stack:
            for number, mode in enumerate(("sticky", "rotating", "bans"), start=1):
                name = {"bans": "banning", "sticky": "sticking", "rotating": "rotating"}[mode]
                secret = stack.account(name, number)
                log(f"{name}: {target} useful answers wanted from a site that bans after {args.per_exit}")
                results.append(
                    scrape(
                        stack, origin, name, secret, f"site{number}", per_exit=args.per_exit, target=target,
                        sessions=args.sessions, mode=mode,
                    )
                )  # fmt: skip
                log(json.dumps(results[-1]))
    finally:
        origin.stop()
    print(f"\n{args.exits} exits, site bans each after {args.per_exit} requests, {args.sessions} sessions\n")
    print("| mode | useful / wanted | requests per useful | served after ban | load max ÷ mean | min | "
          "gateway CPU ms / request |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['useful']} / {r['target']} | {r['requests_per_useful']} | "
            f"{r['served_after_ban']} | {r['load_max_over_mean']} | {r['load_min']} | "
            f"{r['gateway_cpu_ms_per_request']} |"
        )
    if args.json:
        found = {"exits": args.exits, "per_exit": args.per_exit, "results": results}
        args.json.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
