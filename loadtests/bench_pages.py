"""Dashboard page render times with 10,000 deals in the database.

The dashboard issue's bar: every page renders in under 300 ms with 10,000 deals. This script
makes its own database (``ipsx_bench_pages``) and writes, for one requester, 10,000 deals the way
the market writes them (``matching.store.insert_order`` / ``insert_deal``, most of them settled
with a charge over the last 30 days, 100 active), three metered streams per deal (the billing
worker's row shape), 200 request orders and a few keys. It then serves the API with its web pages
in a child process (this script with ``--serve``, the market off so it leaves the deals alone),
signs in with an API key, and requests each page many times in a row over loopback.

For each page it reports the latency (p50, p95, max: loopback time, i.e. the server's time plus
well under a millisecond) and the API process's CPU time per request (from /proc, via psutil).
Baselines in the same run: the JSON API's ``GET /v1/deals`` (the same deals, no HTML) and a static
file (``/web/static/app.css``). Redis is db 0 (read only: the exit registry, exit health).

    .venv/bin/python loadtests/bench_pages.py [--deals 10000] [--iterations 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import httpx
import psutil

from billing import accounts, db, ledger
from billing.ledger import Amount
from matching import store
from matching.deals import propose
from matching.engine import Fill

ADMIN_URL = os.environ.get("IPSX_BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("IPSX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE = "ipsx_bench_pages"
IPSX = 10**18
REQUESTER = "bench"
COUNTRIES = ("fr", "de", "us", "gb", "nl", "es", "it", "pl", "br", "jp")
BAR_MS = 300.0

PAGES = (
    ("overview", "/web/overview"),
    ("usage per day", "/web/usage"),
    ("deals (page 1)", "/web/deals"),
    ("deals (page 2)", None),  # the "Older" link of page 1
    ("active deals + exits", "/web/deals?live=1"),
    ("orders", "/web/orders"),
    ("API keys", "/web/keys"),
    ("proxy URL builder", "/web/proxy?country=fr&session=s1"),
    ("payments", "/web/payments"),
    ("baseline: GET /v1/deals (JSON)", "/v1/deals?limit=50"),
    ("baseline: static app.css", "/web/static/app.css"),
)


def _database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


async def _recreate(name: str) -> str:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _database_url(name)


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def seed(database_url: str, deals: int) -> str:
    """The requester, its deals, usage and orders; returns its API key's secret."""
    pool = await db.open_migrated(database_url, max_size=2)
    try:
        await accounts.create_account(pool, address="0x" + "be" * 20, name=REQUESTER)
        await accounts.create_account(pool, address="0x" + "cf" * 20, name="prov")
        await ledger.credit_account(pool, REQUESTER, ledger.parse_amount("100000"), "bench-funding")
        for label in ("scraper", "seo", "reseller"):
            await accounts.create_key(pool, account_name=REQUESTER, label=label)
        secret = (await accounts.create_key(pool, account_name=REQUESTER, label="bench")).secret
        now = dt.datetime.now(dt.UTC)
        events: list[tuple[Any, ...]] = []
        async with pool.acquire() as conn, conn.transaction():
            offers = []
            for index in range(50):
                offer_id, exit_id = f"o{index:04d}", f"{index:016x}"
                country = COUNTRIES[index % len(COUNTRIES)]
                terms = {
                    "offer_id": offer_id,
                    "provider": "prov",
                    "exit_id": exit_id,
                    "attributes": {
                        "country": country,
                        "type": "residential",
                        "region": "",
                        "city": "",
                        "asn": 0,
                    },
                    "price_per_gb": str(IPSX),
                    "price_per_hour": "0",
                }
                await store.insert_order(conn, "offer", "prov", offer_id, terms)
                offers.append((offer_id, exit_id))
            for index in range(200):
                wants: dict[str, Any] = {
                    "filters": {"country": COUNTRIES[index % 10], "protocol": "http"},
                    "ips": 2,
                }
                await store.insert_order(conn, "request", REQUESTER, f"r{index:06d}", wants)
            for index in range(deals):
                offer_id, exit_id = offers[index % len(offers)]
                created = now - dt.timedelta(seconds=(deals - index) * 30 * 86400 // deals)
                deal_id = f"s{index:08d}"
                fill = Fill(
                    deal_id=deal_id, request_id=deal_id, offer_id=offer_id, requester=REQUESTER,
                    provider="prov", exit_id=exit_id, price_per_gb=Amount(IPSX), price_per_hour=Amount(0),
                    duration_s=600, traffic_bytes=10**9, dedicated=False, reserve=Amount(IPSX),
                    opened_at=created.timestamp(),
                )  # fmt: skip
                record = propose(
                    deal_id=deal_id, requester=REQUESTER, provider="prov", exit_id=exit_id,
                    price_per_gb=fill.price_per_gb, price_per_hour=fill.price_per_hour, reserve=fill.reserve,
                    duration_s=600, traffic_bytes=10**9, created_at=int(created.timestamp()), accepted=True,
                )  # fmt: skip
                await store.insert_deal(conn, fill, record, spot=True)
                live = index >= deals - 100
                await conn.execute(
                    "UPDATE deals SET state = $2, created_at = $3, updated_at = $3 WHERE deal_id = $1",
                    deal_id,
                    "active" if live else "settled",
                    created,
                )
                if not live:
                    await store.settled(conn, deal_id, 3 * 10**12, 3 * 10**11, 3000)
                for _ in range(3):
                    events.append(
                        (uuid.uuid4().hex, deal_id, REQUESTER, "prov", exit_id, "node", "connect",
                         "example.com:443", 200, 800, created, created + dt.timedelta(seconds=1), "ok", 1)
                    )  # fmt: skip
            await conn.copy_records_to_table(
                "usage_events",
                records=events,
                columns=["event_id", "deal_id", "requester", "provider", "exit_id", "node", "protocol",
                         "target", "bytes_up", "bytes_down", "opened_at", "closed_at", "outcome", "attempts"],
            )  # fmt: skip
        await pool.execute("ANALYZE")
        return secret
    finally:
        await pool.close()


def serve(port: int) -> None:
    """The child: the API with its web pages, the market off."""
    from aiohttp import web

    from dashboard.app import build_app
    from dashboard.settings import ApiSettings
    from dashboard.web import add_web_routes

    settings = ApiSettings(
        database_url=os.environ["IPSX_DATABASE_URL"],
        redis_url=REDIS_URL,
        jwt_secret=os.environ["IPSX_JWT_SECRET"],
        port=port,
        market=False,
        web_signin_limit=1000,
    )
    app = build_app(settings)
    if "web-overview" not in app.router.named_resources():
        add_web_routes(app)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, shutdown_timeout=2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _measure(client: httpx.Client, proc: psutil.Process, path: str, iterations: int) -> dict[str, float]:
    for _ in range(5):  # warm-up: connections, statement caches
        client.get(path).raise_for_status()
    times = []
    cpu = proc.cpu_times()
    for _ in range(iterations):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    spent = proc.cpu_times()
    cpu_ms = ((spent.user - cpu.user) + (spent.system - cpu.system)) * 1000 / iterations
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": times[int(0.95 * (len(times) - 1))],
        "max_ms": times[-1],
        "cpu_ms": cpu_ms,
        "bytes": float(len(answer.content)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    database_url = asyncio.run(_recreate(DATABASE))
    started = time.monotonic()
    secret = asyncio.run(seed(database_url, args.deals))
    print(
        f"seeded {args.deals} deals, {3 * args.deals} metered streams in {time.monotonic() - started:.1f} s"
    )
    port = _free_port()
    env = {**os.environ, "IPSX_DATABASE_URL": database_url, "IPSX_JWT_SECRET": secrets.token_urlsafe(32)}
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port)], env=env)
    results: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.1)
        proc = psutil.Process(child.pid)
        with httpx.Client(base_url=base, timeout=30) as client:
            signin = client.get("/signin").text
            token = re.search(r'name="signin_token" value="([^"]+)"', signin)
            assert token is not None
            answer = client.post("/signin/key", data={"signin_token": token.group(1), "secret": secret})
            assert answer.status_code == 303, answer.text
            first = client.get("/web/deals").text
            older = re.search(r'href="(/web/deals\?after=[^"]+)" rel="next"', first)
            assert older is not None, "no second page of deals"
            for name, path in PAGES:
                target = path or older.group(1).replace("&amp;", "&")
                headers = {"Authorization": f"Bearer {secret}"} if target.startswith("/v1/") else {}
                client.headers.update(headers)
                results[name] = _measure(client, proc, target, args.iterations)
                for header in headers:
                    del client.headers[header]
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=15)
        asyncio.run(_drop(DATABASE))
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n{args.deals} deals, {args.iterations} sequential requests per page over loopback; "
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"Python {platform.python_version()}\n"
    )
    print("| page | p50 ms | p95 ms | max ms | API CPU ms / request | HTML bytes |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        print(
            f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['max_ms']:.1f} | "
            f"{row['cpu_ms']:.1f} | {int(row['bytes'])} |"
        )
    pages = {name: row for name, row in results.items() if not name.startswith("baseline")}
    worst = max(pages.items(), key=lambda item: item[1]["p95_ms"])
    verdict = "under" if worst[1]["p95_ms"] < BAR_MS else "OVER"
    print(
        f"\nslowest page at p95: {worst[0]}, {worst[1]['p95_ms']:.1f} ms ({verdict} the {BAR_MS:.0f} ms bar)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port)
        return
    results = run(args)
    report(results, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"deals": args.deals, "iterations": args.iterations, "pages": results}, handle, indent=2
            )


if __name__ == "__main__":
    main()
