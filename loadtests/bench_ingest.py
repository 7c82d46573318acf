"""Usage ingestion benchmark: events per second from the Redis Stream into PostgreSQL, exactly once.

Issue 3's bar is 5,000 events/s with exactly-once. This script fills the usage stream the way
gateways do (one entry per flush, holding a batch of events and the agents' reports), runs the
billing worker's own ``ingest_once`` loop in this process until the stream is drained, then
replays a share of the entries (as after a worker crash before its ack) and checks that every
event is stored exactly once. In the same run, as the baseline, the same events are written the
naive way: one ``INSERT … ON CONFLICT DO NOTHING`` per event and report.

It needs the machine's PostgreSQL and Redis; it creates (and drops) its own database and uses
Redis db 13.

    python loadtests/bench_ingest.py [--events 100000] [--batch 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import psutil
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from billing import db
from billing.usage import AgentReport, UsageEvent, encode_batch
from billing.worker import WorkerSettings, ensure_group, ingest_once

PROVIDER = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def make_items(count: int) -> list[UsageEvent | AgentReport]:
    items: list[UsageEvent | AgentReport] = []
    now = time.time()
    for n in range(count):
        event_id = uuid.uuid4().hex
        items.append(
            UsageEvent(
                event_id=event_id,
                deal_id=f"r{n % 97}_1",
                requester="alice",
                provider=PROVIDER,
                exit_id=f"exit{n % 31}",
                node="gw-1",
                protocol="connect",
                target="example.com:443",
                bytes_up=512 + n % 1000,
                bytes_down=4096 + n % 5000,
                opened_at=now,
                closed_at=now + 0.5,
                outcome="client_closed",
                attempts=1,
            )
        )
        items.append(
            AgentReport(
                event_id=event_id,
                provider=PROVIDER,
                exit_id=f"exit{n % 31}",
                bytes_up=512 + n % 1000,
                bytes_down=4096 + n % 5000,
                opened_at=now,
                closed_at=now + 0.5,
                outcome="gateway_closed",
            )
        )
    return items


def postgres_cpu() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres"):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
    return total


async def fresh_database(admin_url: str, name: str) -> str:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    pool = await db.connect(url, max_size=2)
    try:
        await db.migrate(pool)
    finally:
        await pool.close()
    return url


async def run_worker_phase(
    redis: Redis, pool: asyncpg.Pool, items: list[UsageEvent | AgentReport], batch: int, replay_share: float
) -> dict[str, float]:
    settings = WorkerSettings(redis_url="", database_url="", consumer="bench", batch=500, block_ms=0)
    await redis.delete(settings.stream)
    await ensure_group(redis, settings.stream, settings.group)
    entries = [encode_batch(items[i : i + batch * 2]) for i in range(0, len(items), batch * 2)]
    pipe = redis.pipeline(transaction=False)
    for entry in entries:
        pipe.xadd(settings.stream, entry)  # type: ignore[arg-type]
    await pipe.execute()
    log(f"worker: {len(entries):,} stream entries of {batch} events + {batch} reports queued")
    cpu0, pg0, t0 = time.process_time(), postgres_cpu(), time.perf_counter()
    handled = 0
    while True:
        done = await ingest_once(redis, pool, settings)
        if done == 0:
            break
        handled += done
    elapsed = time.perf_counter() - t0
    cpu, pg_cpu = time.process_time() - cpu0, postgres_cpu() - pg0
    # A worker that died before acking: its entries come again. Nothing may be stored twice.
    replayed = entries[: int(len(entries) * replay_share)]
    for entry in replayed:
        await redis.xadd(settings.stream, entry)  # type: ignore[arg-type]
    while await ingest_once(redis, pool, settings):
        pass
    events = len(items) // 2
    stored = await pool.fetchval("SELECT count(*) FROM usage_events")
    reports = await pool.fetchval("SELECT count(*) FROM agent_reports")
    if (stored, reports) != (events, events):
        raise SystemExit(
            f"exactly-once violated: {stored} events and {reports} reports stored, {events} sent"
        )
    log(
        f"worker: replayed {len(replayed):,} entries;"
        f" stored exactly {stored:,} events and {reports:,} reports"
    )
    return {
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "worker_cpu_us_per_event": cpu / events * 1e6,
        "postgres_cpu_us_per_event": pg_cpu / events * 1e6,
        "replayed_entries": len(replayed),
    }


async def run_naive_phase(pool: asyncpg.Pool, items: list[UsageEvent | AgentReport]) -> dict[str, float]:
    await pool.execute("TRUNCATE usage_events, agent_reports")
    cpu0, pg0, t0 = time.process_time(), postgres_cpu(), time.perf_counter()
    for item in items:
        if isinstance(item, UsageEvent):
            await pool.execute(
                "INSERT INTO usage_events (event_id, deal_id, requester, provider, exit_id, node, protocol,"
                " target, bytes_up, bytes_down, opened_at, closed_at, outcome, attempts) VALUES ($1, $2, $3,"
                " $4, $5, $6, $7, $8, $9, $10, to_timestamp($11), to_timestamp($12), $13, $14)"
                " ON CONFLICT (event_id) DO NOTHING",
                item.event_id,
                item.deal_id,
                item.requester,
                item.provider,
                item.exit_id,
                item.node,
                item.protocol,
                item.target,
                item.bytes_up,
                item.bytes_down,
                item.opened_at,
                item.closed_at,
                item.outcome,
                item.attempts,
            )
        else:
            await pool.execute(
                "INSERT INTO agent_reports (event_id, provider, exit_id, bytes_up, bytes_down, opened_at,"
                " closed_at, outcome) VALUES ($1, $2, $3, $4, $5, to_timestamp($6), to_timestamp($7), $8)"
                " ON CONFLICT (event_id) DO NOTHING",
                item.event_id,
                item.provider,
                item.exit_id,
                item.bytes_up,
                item.bytes_down,
                item.opened_at,
                item.closed_at,
                item.outcome,
            )
    elapsed = time.perf_counter() - t0
    events = len(items) // 2
    return {
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "worker_cpu_us_per_event": (time.process_time() - cpu0) / events * 1e6,
        "postgres_cpu_us_per_event": (postgres_cpu() - pg0) / events * 1e6,
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    name = "ipsx_bench_ingest"
    url = await fresh_database(args.database_admin_url, name)
    redis = Redis.from_url(args.redis_url)
    pool = await db.connect(url, min_size=2, max_size=4)
    try:
        await redis.flushdb()
        log(f"building {args.events:,} events and as many agent reports")
        items = make_items(args.events)
        ours = await run_worker_phase(redis, pool, items, args.batch, args.replay)
        log(
            f"worker: {ours['events_per_s']:,.0f} events/s,"
            f" {ours['worker_cpu_us_per_event']:.1f} µs worker CPU/event"
        )
        naive_items = items[: args.naive_events * 2]
        naive = await run_naive_phase(pool, naive_items)
        log(f"naive: {naive['events_per_s']:,.0f} events/s over the first {len(naive_items) // 2:,} events")
    finally:
        await pool.close()
        await redis.flushdb()
        await redis.aclose()
        admin = await asyncpg.connect(args.database_admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    return {"worker": ours, "naive": naive, "ratio": ours["events_per_s"] / naive["events_per_s"]}


def report(result: dict[str, object]) -> str:
    ours, naive = result["worker"], result["naive"]
    assert isinstance(ours, dict) and isinstance(naive, dict)
    rows = [
        ("events/s", f"{ours['events_per_s']:,.0f}", f"{naive['events_per_s']:,.0f}"),
        (
            "worker CPU µs per event",
            f"{ours['worker_cpu_us_per_event']:.1f}",
            f"{naive['worker_cpu_us_per_event']:.1f}",
        ),
        (
            "PostgreSQL CPU µs per event",
            f"{ours['postgres_cpu_us_per_event']:.1f}",
            f"{naive['postgres_cpu_us_per_event']:.1f}",
        ),
        ("events measured", f"{ours['events']:,}", f"{naive['events']:,}"),
    ]
    lines = ["| | IPSX worker (batched, exactly-once) | naive (one INSERT per row) |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append(
        f"\nworker ÷ naive events/s: {result['ratio']:.1f} times; every event stored exactly once"
        f" after replaying {ours['replayed_entries']:,} entries."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="usage events (default: %(default)s)")
    parser.add_argument(
        "--batch", type=int, default=64, help="events per stream entry (default: %(default)s)"
    )
    parser.add_argument(
        "--replay", type=float, default=0.1, help="share of entries delivered twice (default: 0.1)"
    )
    parser.add_argument(
        "--naive-events", type=int, default=10_000, help="events for the baseline (default: %(default)s)"
    )
    parser.add_argument(
        "--database-admin-url",
        default=os.environ.get(
            "IPSX_BENCH_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("IPSX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    print(report(outcome))
    if arguments.json:
        arguments.json.write_text(json.dumps(outcome, indent=2))
