"""A market restart, on real PostgreSQL and Redis.

Time priority: an order the engine re-queued (a re-priced offer, a request with more IPs, a
scheduled offer put on the book or re-clipped, a waiting request whose time frame started) comes
back behind the orders it was behind, an order that kept its place keeps it, and migration 022
gives existing orders their arrival order. Deals: new deal ids never repeat an ended deal's, a
request is not given an exit it had before, it is amended as it would have been without the
restart, and a write that fails while loading fails the load (once)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import db
from matching import store
from matching.errors import InvalidOrder
from matching.market import Market, MarketRefused
from tests.billing.conftest import create_database, drop_database
from tests.matching.conftest import (
    GB,
    IPSX,
    PROVIDER_ADDRESS,
    REQUEST,
    clock,
    offer,
    offline,
    online,
    refused,
)

HOUR = 3600
DEDICATED = {**REQUEST, "dedicated": True}


async def restarted(market: Market, pg: asyncpg.Pool, rds: Redis) -> Market:
    """A new market on the same database and clock, loaded as after a restart."""
    again = Market(pg, rds, market.settings, clock=clock(market))
    await again.load()
    return again


def offers_in_priority(market: Market) -> list[str]:
    """Resting offer ids, first in time priority first (the engine lists them so)."""
    return [o.offer_id for o in market._engine.resting_offers()]


def requests_in_priority(market: Market) -> list[str]:
    """Resting request ids, first in time priority first (their max prices are all equal here)."""
    return [s.request.request_id for s in sorted(market._engine.resting_requests(), key=lambda s: s.seq)]


async def queued(pg: asyncpg.Pool, order_id: str) -> int:
    return int(await pg.fetchval("SELECT queued FROM market_orders WHERE order_id = $1", order_id))


@pytest.mark.parametrize(
    ("first_price", "amended_prices"),
    [(IPSX, [2 * IPSX, IPSX]), (2 * IPSX, [IPSX])],
    ids=["away-and-back", "down-to-the-seconds-price"],
)
async def test_a_repriced_offer_stays_behind_after_a_restart(
    market: Market, pg: asyncpg.Pool, rds: Redis, first_price: int, amended_prices: list[int]
) -> None:
    await online(rds, "e1")
    await online(rds, "e2")
    first = await offer(market, "e1", price_gb=first_price)
    second = await offer(market, "e2", price_gb=IPSX)
    for price in amended_prices:
        await market.amend("bob", first, {"price_per_gb": str(price)})
    assert offers_in_priority(market) == [second, first]  # re-priced: behind, at the same price
    assert await queued(pg, first) > await queued(pg, second)
    again = await restarted(market, pg, rds)
    assert offers_in_priority(again) == [second, first]
    _, result = await again.place_request("alice", REQUEST)
    assert [(fill.offer_id, fill.price_per_gb) for fill in result.fills] == [(second, IPSX)]


async def test_a_request_with_more_ips_stays_behind_and_one_with_fewer_keeps_its_place(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    lowered, _ = await market.place_request("alice", {**DEDICATED, "ips": 2})
    raised, _ = await market.place_request("alice", DEDICATED)
    third, _ = await market.place_request("alice", DEDICATED)
    kept = await queued(pg, lowered.request_id)
    await market.amend("alice", lowered.request_id, {"ips": 1})  # fewer IPs: keeps its place
    await market.amend("alice", raised.request_id, {"ips": 2})  # more IPs: re-queued
    before = requests_in_priority(market)
    assert before == [lowered.request_id, third.request_id, raised.request_id]
    assert await queued(pg, lowered.request_id) == kept
    again = await restarted(market, pg, rds)
    assert requests_in_priority(again) == before
    # One dedicated exit at a time: each serves the first request in time priority.
    served = []
    for exit_id in ("e1", "e2", "e3"):
        await online(rds, exit_id)
        _, result = await again.place_offer(
            "bob", PROVIDER_ADDRESS, {"exit_id": exit_id, "price_per_gb": str(IPSX), "sharing": "dedicated"}
        )
        served += [fill.request_id for fill in result.fills]
    assert served == before


async def test_a_scheduled_offer_put_on_the_book_as_its_window_opens_stays_behind(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await online(rds, "e2")
    scheduled = await offer(market, "e1", schedule="10:00-12:00")  # 08:00: held until 10:00
    always = await offer(market, "e2")
    clock(market).now += 2 * HOUR
    await market.tick()  # 10:00: the engine puts it on the book, behind the other
    assert offers_in_priority(market) == [always, scheduled]
    clock(market).now += HOUR / 2
    again = await restarted(market, pg, rds)  # 10:30, inside the window
    assert offers_in_priority(again) == [always, scheduled]
    _, result = await again.place_request("alice", REQUEST)
    assert [fill.offer_id for fill in result.fills] == [always]


async def test_a_reclipped_scheduled_offer_stays_behind(market: Market, pg: asyncpg.Pool, rds: Redis) -> None:
    await online(rds, "e1")
    await online(rds, "e2")
    scheduled = await offer(market, "e1", schedule="07:30-08:20")  # open: on the book at once
    always = await offer(market, "e2")
    assert offers_in_priority(market) == [scheduled, always]
    clock(market).now += 15 * 60  # 08:15: five minutes left, so it is re-placed, clipped again
    await market.tick()
    assert offers_in_priority(market) == [always, scheduled]
    again = await restarted(market, pg, rds)
    assert offers_in_priority(again) == [always, scheduled]
    _, result = await again.place_request("alice", {**REQUEST, "duration_s": 120})
    assert [fill.offer_id for fill in result.fills] == [always]


async def test_a_request_placed_as_its_time_frame_starts_stays_behind(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    start = clock(market).now + 300
    waiting, _ = await market.place_request("alice", {**DEDICATED, "starts_at": start})
    resting, _ = await market.place_request("alice", DEDICATED)
    clock(market).now += 300
    await market.tick()  # its time frame starts: on the book, behind the request already resting
    assert requests_in_priority(market) == [resting.request_id, waiting.request_id]
    again = await restarted(market, pg, rds)
    assert requests_in_priority(again) == [resting.request_id, waiting.request_id]
    await online(rds, "e1")
    _, result = await again.place_offer(
        "bob", PROVIDER_ADDRESS, {"exit_id": "e1", "price_per_gb": str(IPSX), "sharing": "dedicated"}
    )
    assert [fill.request_id for fill in result.fills] == [resting.request_id]


async def deals_of(pg: asyncpg.Pool, request_id: str) -> list[tuple[str, str, str]]:
    rows = await pg.fetch(
        "SELECT deal_id, exit_id, state FROM deals WHERE request_id = $1 ORDER BY created_at, deal_id",
        request_id,
    )
    return [(row["deal_id"], row["exit_id"], row["state"]) for row in rows]


async def test_deal_ids_and_exits_of_ended_deals_are_not_given_again_after_a_restart(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    e1 = await online(rds, "e1")
    await offer(market, "e1")
    request, placed = await market.place_request("alice", {**REQUEST, "ips": 2})
    first = placed.fills[0].deal_id
    await offline(rds, e1)
    clock(market).now += 10
    await market.tick()  # e1 went away: the deal ends; its offer and the request rest on
    await online(rds, "e1")
    again = await restarted(market, pg, rds)
    assert [s.filled for s in again._engine.resting_requests()] == [1]  # e1 is not its again
    await online(rds, "e2")
    await offer(again, "e2")
    rid = request.request_id
    assert await deals_of(pg, rid) == [(first, "e1", "completed"), (f"{rid}_2", "e2", "active")]


async def test_a_request_amended_after_a_restart_keeps_its_total(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    for n in range(1, 6):
        await online(rds, f"e{n}")
    await offer(market, "e1")
    await offer(market, "e2")
    request, _ = await market.place_request("alice", {**REQUEST, "ips": 4, "traffic_bytes": GB // 10})
    clock(market).now += 10  # new order ids, which the clock makes, differ from the first market's
    again = await restarted(market, pg, rds)
    with pytest.raises(InvalidOrder):
        await again.amend("alice", request.request_id, {"ips": 2})  # no more than it has: refused
    await again.amend("alice", request.request_id, {"ips": 3})  # one more IP wanted, not three
    for n in (3, 4, 5):
        await offer(again, f"e{n}")
    assert [exit_id for _, exit_id, _ in await deals_of(pg, request.request_id)] == ["e1", "e2", "e3"]
    row = await pg.fetchrow("SELECT state, filled FROM market_orders WHERE order_id = $1", request.request_id)
    assert (row["state"], row["filled"]) == ("done", 3)


async def test_an_open_request_with_every_ip_filled_is_done_after_a_restart(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1")
    request, _ = await market.place_request("alice", {**REQUEST, "ips": 2})
    # What an amendment down to its fills once left behind: open, with as many IPs as filled.
    await pg.execute(
        "UPDATE market_orders SET terms = jsonb_set(terms, '{ips}', '1') WHERE order_id = $1",
        request.request_id,
    )
    again = await restarted(market, pg, rds)
    assert again._engine.resting_requests() == []
    assert (
        await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", request.request_id) == "done"
    )


async def test_a_write_that_fails_while_loading_fails_the_load(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", schedule="10:00-12:00")  # the test clock starts at 08:00 UTC
    request, _ = await market.place_request("alice", REQUEST)
    clock(market).now += 2 * HOUR  # its window opened while no market ran: it fills on loading
    async with refused(pg, "deals", "INSERT"):
        with pytest.raises(asyncpg.RaiseError):
            await restarted(market, pg, rds)
    again = await restarted(market, pg, rds)
    assert [fill for fill, *_ in await deals_of(pg, request.request_id)] == [f"{request.request_id}_1"]
    assert again._engine.resting_requests() == []


async def test_a_market_whose_rebuild_failed_rebuilds_before_its_next_call(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", schedule="10:00-12:00")  # the test clock starts at 08:00 UTC
    request, _ = await market.place_request("alice", REQUEST)
    clock(market).now += 2 * HOUR  # the window opened: the rebuild fills the request
    async with refused(pg, "deals", "INSERT"):
        with pytest.raises(asyncpg.RaiseError):
            await market.load()
        # The engine took the fill, the database did not: nothing runs on that book.
        with pytest.raises(MarketRefused) as unavailable:
            await market.place_request("alice", REQUEST)
        assert (unavailable.value.status, unavailable.value.code) == (503, "market_unavailable")
    await market.tick()  # rebuilt first, then ticked
    assert [fill for fill, *_ in await deals_of(pg, request.request_id)] == [f"{request.request_id}_1"]
    assert market._engine.resting_requests() == []
    _, placed = await market.place_request("alice", REQUEST)  # serving again
    assert placed.fills == () and placed.rested


async def test_migration_022_gives_existing_orders_their_arrival_order(tmp_path: Path) -> None:
    # Migrate a fresh database up to 021, store orders the old way, then apply 022.
    for path in db.migration_files():
        if path.name < "022":
            shutil.copy(path, tmp_path / path.name)
    name = f"ipsx_test_queue_{os.getpid()}"
    pool = await db.connect(await create_database(name), max_size=2)
    try:
        await db.migrate(pool, directories=(tmp_path,))
        for order_id in ("a", "b", "c"):
            await pool.execute(
                "INSERT INTO market_orders (order_id, side, account, terms)"
                " VALUES ($1, 'offer', 'bob', '{}')",
                order_id,
            )
        await pool.execute("DELETE FROM market_orders WHERE order_id = 'b'")
        assert (await db.migrate(pool))[0] == "022_order_queue"  # then any later ones
        rows = await pool.fetch("SELECT order_id, seq, queued FROM market_orders ORDER BY seq")
        assert [(row["order_id"], row["queued"]) for row in rows] == [("a", 1), ("c", 3)]
        # New places come after every existing one, at insert and on re-queue.
        async with pool.acquire() as conn:
            await store.insert_order(conn, "offer", "bob", "d", {})
            await store.requeue(conn, "a")
        positions = await pool.fetch("SELECT order_id, queued FROM market_orders ORDER BY queued")
        assert [(row["order_id"], row["queued"]) for row in positions] == [("c", 3), ("d", 4), ("a", 5)]
        assert [row["order_id"] for row in await store.open_orders(pool)] == ["c", "d", "a"]
    finally:
        await pool.close()
        await drop_database(name)
