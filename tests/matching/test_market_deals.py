"""The market's deal side on real PostgreSQL and Redis: activation by the provider's report,
routes of deals that share an exit (and the book's index of them, across a restart), the room an
ended deal frees, and a cancelled deal's hold."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import holds, ledger
from billing.accounts import create_account
from billing.ledger import TREASURY, Amount, transfer
from matching import routing
from matching.deals import State
from matching.market import Market
from pool import keys
from tests.matching.conftest import GB, IPSX, REQUEST, clock, offer, online, refused


async def late_heartbeat(rds: Redis, exit_id: str) -> None:
    """The exit stays registered, but its agent's last heartbeat is too old for it to be live."""
    await rds.zadd(keys.alive(), {keys.alive_member("n1", exit_id): 0})


async def routed(rds: Redis, exit_id: str = "e1") -> str | None:
    """The deal alice's traffic through ``exit_id`` goes under, as the gateways read it."""
    deal_id = await rds.hget(routing.routes_key("alice"), exit_id)
    return None if deal_id is None else deal_id.decode()


def route_index(market: Market) -> dict[tuple[str, str], list[str]]:
    """The deal book's index by (requester, exit), checked against the same grouping of its deals
    (in their order) recomputed from scratch."""
    book = market._book
    expected: dict[tuple[str, str], list[str]] = {}
    for deal in book.deals.values():
        expected.setdefault((deal.requester, deal.exit_id), []).append(deal.deal_id)
    index = {route: list(deal_ids) for route, deal_ids in book._by_route.items()}
    assert index == expected
    return index


async def three_deals_on_e1(market: Market, rds: Redis) -> list[str]:
    """Three active deals of alice on e1, in the order they opened (the last one is routed)."""
    await online(rds, "e1")
    await offer(market, "e1", shared_capacity=3)
    deal_ids = []
    for _ in range(3):
        _, placed = await market.place_request("alice", REQUEST)
        deal_ids.append(placed.fills[0].deal_id)
    assert [market._book.deals[deal_id].state for deal_id in deal_ids] == [State.ACTIVE] * 3
    return deal_ids


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


async def test_an_ending_routed_deal_hands_its_exit_to_the_first_other_active_deal(
    market: Market, rds: Redis
) -> None:
    first, second, third = await three_deals_on_e1(market, rds)
    assert await routed(rds) == third
    assert route_index(market) == {("alice", "e1"): [first, second, third]}
    await market.report("bob", third, "stopped")
    assert await routed(rds) == first
    await market.report("bob", first, "stopped")
    assert await routed(rds) == second
    await market.report("bob", second, "stopped")
    assert await routed(rds) is None
    # Ended deals stay in the book (and the index) until they are settled.
    assert route_index(market) == {("alice", "e1"): [first, second, third]}
    clock(market).now += 5
    await market.tick()
    assert [market._book.deals.get(deal_id) for deal_id in (first, second, third)] == [None] * 3
    assert route_index(market) == {}


async def test_after_a_restart_an_ending_routed_deal_hands_its_exit_to_another_restored_one(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    first, second, third = await three_deals_on_e1(market, rds)
    await market.report("bob", first, "stopped")  # completed, not settled: restored, never a successor
    clock(market).now += 1
    again = Market(pg, rds, market.settings, clock=clock(market))
    await again.load()
    assert route_index(again) == {("alice", "e1"): [first, second, third]}
    assert again._book.deals[first].state is State.COMPLETED
    assert await routed(rds) == third
    await again.report("bob", third, "stopped")
    assert await routed(rds) == second
    await again.report("bob", second, "stopped")
    assert await routed(rds) is None
    assert route_index(again) == {("alice", "e1"): [first, second, third]}


async def test_a_proposed_deal_on_the_exit_does_not_take_its_route_over(market: Market, rds: Redis) -> None:
    await online(rds, "e1")
    await offer(market, "e1", shared_capacity=3)
    _, placed = await market.place_request("alice", REQUEST)
    active = placed.fills[0].deal_id
    await late_heartbeat(rds, "e1")
    _, placed = await market.place_request("alice", REQUEST)
    waiting = placed.fills[0].deal_id
    _, placed = await market.place_request("alice", REQUEST)
    cancelled = placed.fills[0].deal_id
    assert market._book.deals[waiting].state is State.PROPOSED
    await market.report("alice", cancelled, "cancel")  # closed: leaves the book and the index
    assert route_index(market) == {("alice", "e1"): [active, waiting]}
    await market.report("bob", active, "stopped")
    assert await routed(rds) is None
    await online(rds, "e1")
    await market.tick()  # the exit is live again: the proposed deal is activated and routed
    assert market._book.deals[waiting].state is State.ACTIVE
    assert await routed(rds) == waiting
    assert route_index(market) == {("alice", "e1"): [active, waiting]}


async def test_room_another_requesters_deal_frees_is_judged_on_current_funds(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await create_account(pg, address="0x" + "12" * 20, name="carol")
    await transfer(
        pg, debit=TREASURY, credit=ledger.requester_account("carol"), amount=Amount(IPSX), kind="credit"
    )
    await online(rds, "e1")
    await offer(market, "e1")  # 1 IPSX per GB, one deal at a time
    _, placed = await market.place_request("carol", REQUEST)
    waiting, _ = await market.place_request("alice", {**REQUEST, "traffic_bytes": 12 * GB})  # has 10
    await transfer(
        pg, debit=TREASURY, credit=ledger.requester_account("alice"), amount=Amount(10 * IPSX), kind="credit"
    )
    await market.report("bob", placed.fills[0].deal_id, "stopped")  # e1 is free for alice's request
    row = await pg.fetchrow("SELECT state, filled FROM market_orders WHERE order_id = $1", waiting.request_id)
    assert (row["state"], row["filled"]) == ("done", 1)
    reserve = await pg.fetchval("SELECT reserve::text FROM deals WHERE request_id = $1", waiting.request_id)
    assert int(reserve) == 12 * IPSX


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
