"""The market's deal side on real PostgreSQL and Redis: activation by the provider's report,
routes of deals that share an exit, the room an ended deal frees, and a cancelled deal's hold."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import holds, ledger
from billing.ledger import TREASURY, Amount, transfer
from matching import routing
from matching.deals import State
from matching.market import Market
from pool import keys
from tests.matching.conftest import GB, IPSX, REQUEST, clock, offer, online, refused


async def late_heartbeat(rds: Redis, exit_id: str) -> None:
    """The exit stays registered, but its agent's last heartbeat is too old for it to be live."""
    await rds.zadd(keys.alive(), {keys.alive_member("n1", exit_id): 0})


async def test_a_ready_report_activates_and_routes_a_deal_only_on_a_live_exit(
    market: Market, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1")
    await late_heartbeat(rds, "e1")
    _, placed = await market.place_request("alice", REQUEST)
    deal_id = placed.fills[0].deal_id
    assert (await market.report("bob", deal_id, "ready")).state is State.PROPOSED
    assert await rds.hgetall(routing.routes_key("alice")) == {}
    await online(rds, "e1")  # the heartbeat is back
    assert (await market.report("bob", deal_id, "ready")).state is State.ACTIVE
    assert await rds.hgetall(routing.routes_key("alice")) == {
        b"e1": deal_id.encode(),
        f"@{deal_id}".encode(): str(GB).encode(),
    }


@pytest.mark.parametrize(("first_s", "second_s"), [(60, 600), (600, 60)], ids=["first-ends", "second-ends"])
async def test_deals_that_share_an_exit_keep_it_routed_until_the_last_ends(
    market: Market, rds: Redis, first_s: int, second_s: int
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", shared_capacity=2)
    _, first = await market.place_request("alice", {**REQUEST, "duration_s": first_s})
    _, second = await market.place_request("alice", {**REQUEST, "duration_s": second_s})
    ending, staying = sorted([first.fills[0], second.fills[0]], key=lambda fill: fill.duration_s)
    clock(market).now += 61
    await online(rds, "e1")
    await market.tick()
    assert market._book.deals[ending.deal_id].state is State.COMPLETED
    assert await rds.hgetall(routing.routes_key("alice")) == {
        b"e1": staying.deal_id.encode(),
        f"@{staying.deal_id}".encode(): str(GB).encode(),
    }
    clock(market).now += 600
    await online(rds, "e1")
    await market.tick()
    assert await rds.hgetall(routing.routes_key("alice")) == {}


async def test_room_an_ended_deal_frees_is_judged_on_current_funds(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1")  # 1 IPSX per GB, one deal at a time
    await market.place_request("alice", {**REQUEST, "duration_s": 60})  # reserves 1 of her 10 IPSX
    waiting, _ = await market.place_request("alice", {**REQUEST, "traffic_bytes": 12 * GB})  # needs 12
    await transfer(
        pg, debit=TREASURY, credit=ledger.requester_account("alice"), amount=Amount(10 * IPSX), kind="credit"
    )
    clock(market).now += 61
    await online(rds, "e1")
    await market.tick()  # the first deal's time frame ends: e1 is free for the one she can pay now
    row = await pg.fetchrow("SELECT state, filled FROM market_orders WHERE order_id = $1", waiting.request_id)
    assert (row["state"], row["filled"]) == ("done", 1)
    reserve = await pg.fetchval("SELECT reserve::text FROM deals WHERE request_id = $1", waiting.request_id)
    assert int(reserve) == 12 * IPSX


async def test_a_cancelled_deal_and_its_returned_reserve_are_written_together(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1")
    await late_heartbeat(rds, "e1")
    _, placed = await market.place_request("alice", REQUEST)
    deal_id = placed.fills[0].deal_id
    async with refused(pg, "ledger_holds", "UPDATE"):  # the hold cannot be voided: all rolls back
        with pytest.raises(asyncpg.RaiseError):
            await market.report("alice", deal_id, "cancel")
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "proposed"
    hold = await holds.get(pg, deal_id)
    assert hold is not None and hold.state == "pending"
    clock(market).now += 1
    again = Market(pg, rds, market.settings, clock=clock(market))
    await again.load()
    await again.report("alice", deal_id, "cancel")
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "cancelled"
    hold = await holds.get(pg, deal_id)
    assert hold is not None and hold.state == "voided"
    assert await holds.reserved(pg, ledger.requester_account("alice")) == 0
