"""The market settles a deal only once the billing workers have ingested the usage stream past the
deal's end and its grace, on real PostgreSQL and Redis with the real worker's ingestion."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import ledger
from billing.keys import USAGE_GROUP, USAGE_STREAM
from billing.ledger import balance
from billing.usage import encode
from billing.worker import WorkerSettings, ensure_group, ingest_once
from matching.market import Market
from tests.billing.conftest import make_event, make_report
from tests.matching.conftest import GB, IPSX, PROVIDER_ADDRESS, REDIS_URL, REQUEST, clock, offer, online


async def publish_usage(rds: Redis, deal_id: str, at: float, nbytes: int) -> None:
    """The gateway's event and the agent's report of one stream of the deal, both meters agreeing."""
    event = make_event(
        deal_id=deal_id,
        provider=PROVIDER_ADDRESS,
        exit_id="e1",
        bytes_up=0,
        bytes_down=nbytes,
        opened_at=at - 1,
        closed_at=at,
    )
    report = make_report(
        event_id=event.event_id,
        provider=PROVIDER_ADDRESS,
        exit_id="e1",
        bytes_up=0,
        bytes_down=nbytes,
        opened_at=at - 1,
        closed_at=at,
    )
    for item in (event, report):
        await rds.xadd(USAGE_STREAM, encode(item))  # type: ignore[arg-type]


@pytest.mark.parametrize("stuck", ["pending", "undelivered"])
async def test_a_deal_settles_only_once_its_late_usage_is_ingested(
    market: Market, pg: asyncpg.Pool, rds: Redis, market_database_url: str, stuck: str
) -> None:
    await ensure_group(rds, USAGE_STREAM, USAGE_GROUP)
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    _, result = await market.place_request("alice", REQUEST)
    deal_id = result.fills[0].deal_id
    clock(market).now += 600
    await market.tick()  # time frame ended -> completed
    await publish_usage(rds, deal_id, clock(market).now, 3 * GB // 10)
    if stuck == "pending":  # a worker read the entries and died before storing them
        await rds.xreadgroup(USAGE_GROUP, "dead", {USAGE_STREAM: ">"}, count=10)
    clock(market).now += 5
    await market.tick()  # the grace has passed, but not the ingestion
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "completed"

    worker = WorkerSettings(
        redis_url=REDIS_URL, database_url=market_database_url, consumer="b", block_ms=0, claim_idle_ms=0
    )
    assert await ingest_once(rds, pg, worker) == 2
    await market.tick()
    row = await pg.fetchrow(
        "SELECT state, billable_bytes, charge::text FROM deals WHERE deal_id = $1", deal_id
    )
    charge = 3 * IPSX // 10  # the late 0.3 GB at 1 IPSX/GB
    assert (row["state"], row["billable_bytes"], int(row["charge"])) == ("settled", 3 * GB // 10, charge)
    assert await balance(pg, ledger.requester_account("alice")) == 10 * IPSX - charge
    assert await balance(pg, ledger.provider_account("bob")) == charge - charge // 10
