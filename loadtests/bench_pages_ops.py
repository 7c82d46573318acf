"""Render times of the provider's and the operator's pages with 10,000 deals in the database.

The same approach and data as ``bench_pages.py`` (whose seed, server and measurement it reuses):
10,000 deals the way the market writes them, most settled over the last 30 days, 100 active,
three metered streams each, here all of them on the provider ``prov``, whose pages are therefore
the heaviest a provider can have; its usage rows name its wallet address, as the gateway writes
them. On top: 50 offers of ``prov`` with live exits in the pool (kept live by a heartbeat while the
benchmark runs), a payout channel with a signed proof, 20 disputed deals, and an operator key.

Redis is db 9 by default (``IPSX_BENCH_REDIS_URL``), not the web tests' db 0: this script
registers exits there, and deregisters them when it ends.

    .venv/bin/python loadtests/bench_pages_ops.py [--deals 10000] [--iterations 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import Any

os.environ.setdefault("IPSX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")

import bench_pages as base
import httpx
import psutil
import redis.asyncio

from billing import accounts, channels, db
from pool.models import ExitInfo
from pool.registry import ExitRegistry

NODE = "bench-node"

PAGES = (
    ("provider: exits and earnings", "prov", "/web/provider"),
    ("provider: earnings per deal (page 1)", "prov", "/web/provider/deals"),
    ("provider: offers", "prov", "/web/provider/offers"),
    ("provider: payouts", "prov", "/web/provider/payouts"),
    ("operator: network (map, alerts, top)", "ops", "/web/operator"),
    ("operator: order book and prices", "ops", "/web/operator/market"),
    ("operator: disputes", "ops", "/web/operator/disputes"),
    ("baseline: requester overview", "bench", "/web/overview"),
    ("baseline: static app.css", "prov", "/web/static/app.css"),
)


async def seed_more(database_url: str) -> tuple[str, dict[str, str]]:
    """A payout channel, disputes and keys on top of ``bench_pages.seed`` (whose 50 offers are
    ``prov``'s); the provider's wallet address and the keys' secrets."""
    pool = await db.open_migrated(database_url, max_size=2)
    try:
        address = await pool.fetchval("SELECT address FROM accounts WHERE name = 'prov'")
        await pool.execute("UPDATE usage_events SET provider = $1", address)
        await pool.execute(
            "UPDATE deals SET state = 'disputed' WHERE deal_id IN"
            " (SELECT deal_id FROM deals WHERE state = 'active' ORDER BY deal_id LIMIT 20)"
        )
        prov = await pool.fetchrow("SELECT id FROM accounts WHERE name = 'prov'")
        async with pool.acquire() as conn:
            await channels.open_in(
                conn, channel_id="0x" + "ab" * 32, contract="0x" + "77" * 20, sender="0x" + "42" * 20,
                receiver=address, role="provider", account_id=prov["id"], deposit=10**19, opened_block=1,
            )  # fmt: skip
        await accounts.create_account(pool, address="0x" + "ad" * 20, name="ops")
        keys = {
            "prov": (await accounts.create_key(pool, account_name="prov", label="bench")).secret,
            "ops": (
                await accounts.create_key(
                    pool, account_name="ops", scopes=frozenset({"read", "operator"}), operator=True
                )
            ).secret,
        }
        await pool.execute("ANALYZE")
        return str(address), keys
    finally:
        await pool.close()


def _exits(address: str) -> list[ExitInfo]:
    return [
        ExitInfo(f"{index:016x}", address, NODE, f"10.9.0.{index}", base.COUNTRIES[index % 10])
        for index in range(50)
    ]


async def _registry(what: str, exits: list[ExitInfo]) -> None:
    client = redis.asyncio.Redis.from_url(base.REDIS_URL)
    try:
        registry = ExitRegistry(client)
        if what == "register":
            await registry.register(exits)
        elif what == "heartbeat":
            await registry.heartbeat(NODE, exits)
        else:
            await registry.deregister(NODE, exits)
    finally:
        await client.aclose()


def _sign_in(client: httpx.Client, secret: str) -> None:
    token = re.search(r'name="signin_token" value="([^"]+)"', client.get("/signin").text)
    assert token is not None
    answer = client.post("/signin/key", data={"signin_token": token.group(1), "secret": secret})
    assert answer.status_code == 303, answer.text


def run(args: argparse.Namespace) -> dict[str, Any]:
    database_url = asyncio.run(base._recreate(base.DATABASE))
    started = time.monotonic()
    keys = {"bench": asyncio.run(base.seed(database_url, args.deals))}
    address, more = asyncio.run(seed_more(database_url))
    keys.update(more)
    print(f"seeded {args.deals} deals in {time.monotonic() - started:.1f} s")
    exits = _exits(address)
    asyncio.run(_registry("register", exits))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(2.0):
            asyncio.run(_registry("heartbeat", exits))

    heart = threading.Thread(target=beat, daemon=True)
    heart.start()
    port = base._free_port()
    env = {**os.environ, "IPSX_DATABASE_URL": database_url, "IPSX_JWT_SECRET": secrets.token_urlsafe(32)}
    child = subprocess.Popen([sys.executable, base.__file__, "--serve", "--port", str(port)], env=env)
    results: dict[str, Any] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.1)
        proc = psutil.Process(child.pid)
        clients = {name: httpx.Client(base_url=url, timeout=30) for name in keys}
        try:
            for name, client in clients.items():
                _sign_in(client, keys[name])
            for title, who, path in PAGES:
                results[title] = base._measure(clients[who], proc, path, args.iterations)
        finally:
            for client in clients.values():
                client.close()
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=15)
        stop.set()
        heart.join(timeout=10)
        asyncio.run(_registry("deregister", exits))
        asyncio.run(base._drop(base.DATABASE))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    results = run(args)
    base.report(results, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"deals": args.deals, "iterations": args.iterations, "pages": results}, handle, indent=2
            )


if __name__ == "__main__":
    main()
