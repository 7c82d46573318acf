"""The market on real PostgreSQL and Redis: orders to deals, reserves, routes, the deal lifecycle
driven by its clock, settlement to the base unit, reload after a restart, and spot deals."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis

from billing import holds, ledger, resellers
from billing.accounts import create_account, create_key
from billing.ledger import COMMISSION, Amount, balance, check_balances
from matching import routing, store
from matching.deals import State
from matching.errors import InvalidOrder
from matching.market import Market, MarketRefused
from matching.orders import RequestFilters
from tests.matching.conftest import (
    GB,
    IPSX,
    PROVIDER_ADDRESS,
    REQUEST,
    REQUESTER_ADDRESS,
    clock,
    offer,
    offline,
    online,
)


async def test_a_request_meets_an_offer_reserves_and_routes(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    request, result = await market.place_request("alice", REQUEST)
    assert len(result.fills) == 1 and not result.rested
    fill = result.fills[0]
    assert (fill.exit_id, fill.price_per_gb, fill.reserve) == ("e1", IPSX, IPSX)  # 1 GB at 1 IPSX/GB
    # The reserve moved to alice's hold, and the deal is active and routed (the exit is live).
    assert await balance(pg, ledger.requester_account("alice")) == 9 * IPSX
    assert await holds.reserved(pg, ledger.requester_account("alice")) == IPSX
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", fill.deal_id) == "active"
    # Routed, with the traffic allowance the gateways hold its streams to.
    assert await rds.hgetall(routing.routes_key("alice")) == {
        b"e1": fill.deal_id.encode(),
        b"@" + fill.deal_id.encode(): str(GB).encode(),
    }
    assert (
        await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", request.request_id) == "done"
    )
    events = await pg.fetch(
        "SELECT event, actor, to_state FROM deal_transitions WHERE deal_id = $1 ORDER BY id", fill.deal_id
    )
    assert [tuple(e) for e in events] == [("ready", "provider", "active")]


async def test_offers_only_for_own_live_exits(market: Market, rds: Redis) -> None:
    with pytest.raises(MarketRefused) as unknown:
        await offer(market, "nope")
    assert unknown.value.status == 404
    await online(rds, "e2", provider=REQUESTER_ADDRESS)
    with pytest.raises(MarketRefused) as other:
        await offer(market, "e2")
    assert (other.value.status, other.value.code) == (403, "not_your_exit")


async def test_a_request_beyond_the_balance_opens_no_deal_and_moves_nothing(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    _, result = await market.place_request(
        "alice", {**REQUEST, "traffic_bytes": 11 * GB, "max_price_per_gb": str(IPSX)}
    )
    assert result.fills == () and result.stopped_for_funds
    assert await balance(pg, ledger.requester_account("alice")) == 10 * IPSX
    assert await pg.fetchval("SELECT count(*) FROM deals") == 0


async def usage(
    pg: asyncpg.Pool, deal_id: str, gateway: int, agent: int | None, at: float, requester: str = "alice"
) -> None:
    event_id = uuid.uuid4().hex
    await pg.execute(
        "INSERT INTO usage_events (event_id, deal_id, requester, provider, exit_id, node, protocol, target,"
        " bytes_up, bytes_down, opened_at, closed_at, outcome, attempts)"
        " VALUES ($1, $2, $6, $3, 'e1', 'n1', 'connect', 'x:443', 0, $4,"
        " to_timestamp($5), to_timestamp($5), 'ok', 1)",
        event_id,
        deal_id,
        PROVIDER_ADDRESS,
        gateway,
        at,
        requester,
    )
    if agent is not None:
        await pg.execute(
            "INSERT INTO agent_reports (event_id, provider, exit_id, bytes_up, bytes_down, opened_at,"
            " closed_at, outcome) VALUES ($1, $2, 'e1', 0, $3, to_timestamp($4), to_timestamp($4), 'ok')",
            event_id,
            PROVIDER_ADDRESS,
            agent,
            at,
        )


async def test_a_subusers_orders_leave_its_resellers_markup_covered(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    # alice resells with a 25 % markup; her sub-user's 1 GB deal at 1 IPSX/GB reserves 1 IPSX
    # and, used in full, owes her 0.25 IPSX on top: 1.25 IPSX in all.
    reseller = await resellers.create_reseller(pg, "alice", brand="Acme", markup_bps=2500)
    sub = await resellers.create_subuser(pg, reseller.account_id, "shop")
    fund = Amount(5 * IPSX // 4 - 1)
    await resellers.transfer(pg, reseller.account_id, "shop", fund, to_subuser=True, reference="f1")
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    _, short = await market.place_request(sub.account_name, {**REQUEST, "max_price_per_gb": str(IPSX)})
    assert short.fills == () and short.stopped_for_funds  # the reserve fits, the markup would not
    assert await pg.fetchval("SELECT count(*) FROM deals") == 0
    await resellers.transfer(pg, reseller.account_id, "shop", Amount(1), to_subuser=True, reference="f2")
    _, result = await market.place_request(sub.account_name, {**REQUEST, "max_price_per_gb": str(IPSX)})
    assert [fill.reserve for fill in result.fills] == [IPSX]
    deal_id = result.fills[0].deal_id
    await usage(pg, deal_id, GB, GB, clock(market).now, requester=sub.account_name)
    clock(market).now += 600
    await market.tick()
    clock(market).now += 5
    await market.tick()
    row = await pg.fetchrow(
        "SELECT due::text, charged::text FROM reseller_markups WHERE deal_id = $1", deal_id
    )
    assert dict(row) == {"due": str(IPSX // 4), "charged": str(IPSX // 4)}  # charged in full
    assert await balance(pg, ledger.requester_account(sub.account_name)) == 0
    assert await balance(pg, ledger.provider_account("alice")) == IPSX // 4
    assert await check_balances(pg) == {}


async def test_deal_completes_reconciles_and_settles_to_the_base_unit(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    _, result = await market.place_request("alice", REQUEST)
    deal_id = result.fills[0].deal_id
    await usage(pg, deal_id, 300_000_000, 300_000_000, clock(market).now)  # 0.3 GB, both meters agree
    clock(market).now += 600
    await market.tick()  # time frame ended -> completed, route withdrawn
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "completed"
    assert await rds.hgetall(routing.routes_key("alice")) == {}
    clock(market).now += 5
    await market.tick()  # grace passed -> reconciled and settled
    row = await pg.fetchrow(
        "SELECT state, charge::text, commission::text, billable_bytes FROM deals WHERE deal_id = $1", deal_id
    )
    charge = 3 * IPSX // 10  # 0.3 GB at 1 IPSX/GB
    commission = charge // 10
    assert dict(row) == {
        "state": "settled",
        "charge": str(charge),
        "commission": str(commission),
        "billable_bytes": 300_000_000,
    }
    assert await balance(pg, ledger.requester_account("alice")) == 10 * IPSX - charge
    assert await balance(pg, ledger.provider_account("bob")) == charge - commission
    assert await balance(pg, COMMISSION) == commission
    assert await holds.reserved(pg, ledger.requester_account("alice")) == 0
    assert await pg.fetchval("SELECT SUM(balance)::text FROM ledger_balances") == "0"
    assert await check_balances(pg) == {}
    events = [
        r["event"]
        for r in await pg.fetch("SELECT event FROM deal_transitions WHERE deal_id = $1 ORDER BY id", deal_id)
    ]
    assert events == ["ready", "time_frame_ended", "meters_reconciled", "settle"]


async def test_meters_that_disagree_bill_the_lower_count(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    _, result = await market.place_request("alice", REQUEST)
    deal_id = result.fills[0].deal_id
    await usage(pg, deal_id, 500_000_000, 400_000_000, clock(market).now)  # 20 % apart
    clock(market).now += 600
    await market.tick()  # completed
    clock(market).now += 5
    await market.tick()  # reconciled: disputed, resolved by the automatic rule, settled
    row = await pg.fetchrow(
        "SELECT state, billable_bytes, charge::text FROM deals WHERE deal_id = $1", deal_id
    )
    assert (row["state"], row["billable_bytes"], int(row["charge"])) == (
        "settled",
        400_000_000,
        4 * IPSX // 10,
    )
    events = [
        (r["event"], r["to_state"])
        for r in await pg.fetch(
            "SELECT event, to_state FROM deal_transitions WHERE deal_id = $1 ORDER BY id", deal_id
        )
    ]
    assert events[-3:] == [
        ("meters_reconciled", "disputed"),
        ("dispute_resolved", "resolved"),
        ("settle", "settled"),
    ]


async def test_a_deal_whose_exit_never_comes_online_is_cancelled_and_its_reserve_returned(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    info = await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    await offline(rds, info)
    _, result = await market.place_request("alice", REQUEST)
    deal_id = result.fills[0].deal_id
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "proposed"
    assert await rds.hgetall(routing.routes_key("alice")) == {}
    clock(market).now += 60
    await market.tick()
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "cancelled"
    assert await balance(pg, ledger.requester_account("alice")) == 10 * IPSX
    assert (await holds.get(pg, deal_id)).state == "voided"  # type: ignore[union-attr]


async def test_an_exit_that_goes_offline_ends_its_active_deal(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    info = await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    _, result = await market.place_request("alice", REQUEST)
    await offline(rds, info)
    clock(market).now += 10
    await market.tick()
    row = await pg.fetchrow("SELECT state FROM deals WHERE deal_id = $1", result.fills[0].deal_id)
    assert row["state"] == "completed"
    last = await pg.fetchrow("SELECT event, actor FROM deal_transitions ORDER BY id DESC LIMIT 1")
    assert tuple(last) == ("stopped", "gateway")


async def test_a_resting_request_fills_when_an_offer_arrives(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    request, result = await market.place_request("alice", {**REQUEST, "ips": 2})
    assert result.fills == () and result.rested
    await online(rds, "e1")
    await online(rds, "e2")
    await offer(market, "e1")
    await offer(market, "e2")
    row = await pg.fetchrow("SELECT state, filled FROM market_orders WHERE order_id = $1", request.request_id)
    assert (row["state"], row["filled"]) == ("done", 2)
    exits = {key for key in await rds.hkeys(routing.routes_key("alice")) if not key.startswith(b"@")}
    assert exits == {b"e1", b"e2"}


async def test_the_book_survives_a_restart(market: Market, pg: asyncpg.Pool, rds: Redis) -> None:
    await online(rds, "e1")
    await online(rds, "e2")
    await offer(market, "e1", sharing="dedicated")
    _, first = await market.place_request("alice", {**REQUEST, "dedicated": True})
    await offer(market, "e2", price_gb=3 * IPSX)  # above alice's max price: rests
    resting, _ = await market.place_request("alice", {**REQUEST, "dedicated": True})
    again = Market(pg, rds, market.settings, clock=clock(market))
    await again.load()
    # e1 is still held by the restored dedicated deal; e2 is too dear: nothing new, nothing lost.
    assert [o.offer_id for o in again._engine.resting_offers()] == [
        o.offer_id for o in market._engine.resting_offers()
    ]
    assert [s.request.request_id for s in again._engine.resting_requests()] == [resting.request_id]
    assert [d.deal_id for d in again._engine.active_deals()] == [first.fills[0].deal_id]
    assert again._book.deals[first.fills[0].deal_id].state is State.ACTIVE


async def test_cancel_only_own_open_orders(market: Market, pg: asyncpg.Pool) -> None:
    request, _ = await market.place_request("alice", REQUEST)
    with pytest.raises(MarketRefused):
        await market.cancel("bob", request.request_id)
    await market.cancel("alice", request.request_id)
    assert (
        await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", request.request_id)
        == "cancelled"
    )
    assert market._engine.resting_requests() == []


async def test_spot_through_the_redis_queue(market: Market, pg: asyncpg.Pool, rds: Redis) -> None:
    for n in range(3):
        await online(rds, f"e{n}")
        await offer(market, f"e{n}", price_gb=IPSX, shared_capacity=4)
    stop = asyncio.Event()
    running = asyncio.create_task(market.run(stop))
    try:
        routes = routing.DealRoutes(rds)
        assert await routes.ask_spot("alice", RequestFilters(country="fr", protocol="https")) == "ok"
        found = await routes.routes("alice")
        assert set(found) == {"e0", "e1", "e2"}
        assert await pg.fetchval("SELECT count(*) FROM deals WHERE spot AND state = 'active'") == 3
        # No offer in Germany, at any price; offers in France, but not at 0.5 IPSX/GB.
        de = RequestFilters(country="de", protocol="https")
        assert await routes.ask_spot("alice", de) == "no_offer"
        fr = RequestFilters(country="fr", protocol="https")
        assert await routes.ask_spot("alice", fr, max_price_per_gb=IPSX // 2) == "above_price"
        # One German exit with room for one shared deal: taken, then full.
        await online(rds, "e_de", country="de")
        await offer(market, "e_de", price_gb=IPSX, shared_capacity=1)
        assert await routes.ask_spot("alice", de) == "ok"
        assert await routes.ask_spot("alice", de) == "offers_busy"
        assert await routes.ask_spot("alice", de, max_price_per_gb=IPSX // 2) == "above_price"
        # A requester with no money gets no deal.
        await create_account(pg, address="0x" + "12" * 20, name="carol")
        assert (
            await routes.ask_spot("carol", RequestFilters(country="fr", protocol="https"))
            == "insufficient_funds"
        )
    finally:
        stop.set()
        await running


async def test_a_key_spend_limit_caps_what_its_orders_reserve(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    for n in range(3):
        await online(rds, f"e{n}")
        await offer(market, f"e{n}", price_gb=IPSX)  # each deal reserves 1 IPSX (1 GB)
    limited = await create_key(pg, account_name="alice", spend_limit=3 * IPSX // 2)
    request, result = await market.place_request("alice", {**REQUEST, "ips": 3}, key_id=limited.key.key_id)
    # 1.5 IPSX of budget: one deal, the rest dropped (a limited key's orders never rest).
    assert len(result.fills) == 1 and result.stopped_for_funds and not result.rested
    assert (
        await pg.fetchval("SELECT key_id FROM deals WHERE deal_id = $1", result.fills[0].deal_id)
        == limited.key.key_id
    )
    assert (
        await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", request.request_id) == "done"
    )
    # The next order through the same key has 0.5 IPSX left: nothing; without the key, the balance rules.
    _, again = await market.place_request("alice", REQUEST, key_id=limited.key.key_id)
    assert again.fills == ()
    _, free = await market.place_request("alice", REQUEST)
    assert len(free.fills) == 1


async def test_a_parent_keys_spend_limit_covers_its_sub_keys(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    for n in range(8):
        await online(rds, f"e{n}")
        await offer(market, f"e{n}", price_gb=IPSX)  # each deal reserves 1 IPSX (1 GB)
    parent = await create_key(pg, account_name="alice", spend_limit=5 * IPSX // 2)
    subs = [
        await create_key(pg, account_name="alice", spend_limit=2 * IPSX, parent=parent.key) for _ in range(2)
    ]
    keys = [sub.key.key_id for sub in subs] + [parent.key.key_id]

    async def tree_spent() -> int:
        spent = await pg.fetchval(
            "SELECT COALESCE(SUM(COALESCE(charge, reserve)), 0)::text FROM deals"
            " WHERE key_id = ANY($1::text[]) AND state NOT IN ('cancelled', 'expired')",
            keys,
        )
        return int(spent)

    _, own = await market.place_request("alice", REQUEST, key_id=keys[2])
    assert len(own.fills) == 1  # the parent's own deal: 1.5 IPSX of its limit left
    _, first = await market.place_request("alice", {**REQUEST, "ips": 3}, key_id=keys[0])
    assert len(first.fills) == 1  # below the sub-key's own 2 IPSX: the parent's limit rules
    # 0.5 IPSX is left, for the other sub-key as for the parent itself: no deal.
    for key_id in keys[1:]:
        _, refused = await market.place_request("alice", {**REQUEST, "ips": 3}, key_id=key_id)
        assert refused.fills == () and refused.stopped_for_funds
    assert await tree_spent() == 2 * IPSX <= 5 * IPSX // 2


async def test_spot_price_cap_comes_from_maxprice_then_preference_then_default(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX, shared_capacity=8)
    fr = RequestFilters(country="fr", protocol="https")
    await store.set_spot_max_price(pg, "alice", IPSX // 2)  # alice pays at most 0.5 IPSX/GB
    assert (await market.spot("alice", fr)).fills == ()
    # A connection's maxprice overrides the preference...
    assert len((await market.spot("alice", fr, max_price_per_gb=IPSX)).fills) == 1
    # ...and without a preference the market's default cap (10 IPSX/GB) applies.
    await store.set_spot_max_price(pg, "alice", None)
    assert len((await market.spot("alice", fr)).fills) == 1


async def test_a_deal_that_carried_its_allowance_ends_and_its_exit_is_unrouted(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", price_gb=IPSX)
    _, result = await market.place_request("alice", REQUEST)  # 1 GB allowance
    deal_id = result.fills[0].deal_id
    await usage(pg, deal_id, 600_000_000, 600_000_000, clock(market).now)
    clock(market).now += 1
    await market.tick()
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "active"
    await usage(pg, deal_id, 400_000_000, 400_000_000, clock(market).now)  # 1 GB carried in all
    clock(market).now += 1
    await market.tick()
    assert await pg.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id) == "completed"
    assert await rds.hgetall(routing.routes_key("alice")) == {}
    last = await pg.fetchrow("SELECT event, actor, detail FROM deal_transitions ORDER BY id DESC LIMIT 1")
    assert tuple(last) == ("allowance_used", "system", "traffic allowance used")
    clock(market).now += 5
    await market.tick()  # settled for exactly the allowance its reserve covered
    row = await pg.fetchrow("SELECT state, charge::text FROM deals WHERE deal_id = $1", deal_id)
    assert (row["state"], int(row["charge"])) == ("settled", IPSX)


async def test_amending_a_resting_request_to_a_higher_price_trades_at_once(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    await offer(market, "e1", price_gb=3 * IPSX)
    request, result = await market.place_request("alice", REQUEST)  # max 2 IPSX/GB: rests
    assert result.fills == () and result.rested
    amended = await market.amend("alice", request.request_id, {"max_price_per_gb": str(3 * IPSX)})
    assert len(amended.fills) == 1 and amended.fills[0].price_per_gb == 3 * IPSX
    terms = await pg.fetchval(
        "SELECT terms->>'max_price_per_gb' FROM market_orders WHERE order_id = $1", request.request_id
    )
    assert terms == str(3 * IPSX)
    assert (
        await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", request.request_id) == "done"
    )


async def test_a_spend_limited_key_amends_only_the_requests_placed_with_it(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    offer_id = await offer(market, "e1", price_gb=3 * IPSX)
    request, _ = await market.place_request("alice", REQUEST)  # no key: rests at max 2 IPSX/GB
    limited = await create_key(pg, account_name="alice", spend_limit=IPSX // 10)
    raise_price = {"max_price_per_gb": str(3 * IPSX)}
    # Its deals would count against no limit (the order has no key): the limited key may not.
    with pytest.raises(MarketRefused) as refused:
        await market.amend("alice", request.request_id, raise_price, limited_key=limited.key.key_id)
    assert (refused.value.status, refused.value.code) == (403, "spend_limited_key")
    assert await pg.fetchval("SELECT count(*) FROM deals") == 0
    # Offers spend nothing: a limited key of their provider amends them.
    bobs = await create_key(pg, account_name="bob", spend_limit=1)
    await market.amend("bob", offer_id, {"price_per_gb": str(2 * IPSX)}, limited_key=bobs.key.key_id)
    assert await pg.fetchval("SELECT count(*) FROM deals") == 1


async def test_amend_refuses_others_orders_and_foreign_fields(market: Market, rds: Redis) -> None:
    await online(rds, "e1")
    offer_id = await offer(market, "e1", price_gb=3 * IPSX)
    with pytest.raises(MarketRefused):
        await market.amend("alice", offer_id, {"price_per_gb": "1"})
    with pytest.raises(InvalidOrder) as foreign:
        await market.amend("bob", offer_id, {"ips": 2})
    assert foreign.value.field == "ips"
    await market.amend("bob", offer_id, {"price_per_gb": str(IPSX)})
    assert [o.price_per_gb for o in market._engine.resting_offers()] == [IPSX]


async def test_a_package_is_placed_as_the_request_it_maps_onto(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    for n in range(2):
        await online(rds, f"e{n}")
        await offer(market, f"e{n}", price_gb=IPSX)
    package = {
        "filters": {"country": "fr", "protocol": "https"},
        "count": 2,
        "duration_s": 600,
        "total_traffic_bytes": 3 * 10**9,  # 1.5 GB for each of the two IPs
        "max_price_per_gb": str(2 * IPSX),
    }
    request, result = await market.place_package("alice", package)
    assert request.ips == 2 and request.traffic_bytes == 1_500_000_000
    assert [fill.reserve for fill in result.fills] == [3 * IPSX // 2, 3 * IPSX // 2]
    assert (
        await pg.fetchval("SELECT side FROM market_orders WHERE order_id = $1", request.request_id)
        == "request"
    )


# Schedules and time frames. The test clock starts at 08:00 UTC.
HOUR = 3600


async def test_a_scheduled_offer_trades_only_inside_its_daily_window(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    offer_id = await offer(market, "e1", schedule="10:00-12:00")
    _, early = await market.place_request("alice", {**REQUEST, "rest": False})
    assert early.fills == ()  # 08:00: the offer waits for its window
    assert market._engine.resting_offers() == []
    resting, _ = await market.place_request("alice", REQUEST)
    clock(market).now += 2 * HOUR  # 10:00
    await market.tick()
    (deal,) = [d for d in market._engine.active_deals() if d.request_id == resting.request_id]
    assert deal.offer_id == offer_id
    clock(market).now += 2 * HOUR  # 12:00: the window closed, the offer is off the book
    await market.tick()
    assert market._engine.resting_offers() == []
    assert await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", offer_id) == "open"
    _, late = await market.place_request("alice", {**REQUEST, "rest": False})
    assert late.fills == ()
    clock(market).now += 22 * HOUR  # 10:00 the next day: back on the book
    await market.tick()
    assert [o.offer_id for o in market._engine.resting_offers()] == [offer_id]


async def test_deals_of_a_scheduled_offer_end_before_its_window_closes(market: Market, rds: Redis) -> None:
    await online(rds, "e1")
    await offer(market, "e1", schedule="07:30-08:20", sharing="shared", shared_capacity=4)  # 20 minutes left
    _, long = await market.place_request("alice", {**REQUEST, "duration_s": 1800, "rest": False})
    assert long.fills == ()
    _, short = await market.place_request("alice", {**REQUEST, "duration_s": 600, "rest": False})
    assert len(short.fills) == 1
    clock(market).now += 15 * 60  # 08:15: five minutes left
    await market.tick()
    (held,) = market._engine.resting_offers()
    assert held.max_duration_s == 300
    _, too_long = await market.place_request("alice", {**REQUEST, "duration_s": 600, "rest": False})
    assert too_long.fills == ()


async def test_a_request_waits_for_its_time_frame(market: Market, pg: asyncpg.Pool, rds: Redis) -> None:
    await online(rds, "e1")
    await offer(market, "e1")
    start = clock(market).now + 300
    request, placed = await market.place_request(
        "alice", {**REQUEST, "starts_at": start, "expires_at": start + HOUR, "rest": False}
    )
    assert placed.fills == () and placed.rested
    assert await holds.reserved(pg, ledger.requester_account("alice")) == 0
    clock(market).now += 100
    await market.tick()
    assert market._engine.active_deals() == []
    # A restart meanwhile keeps it waiting.
    again = Market(pg, rds, market.settings, clock=clock(market))
    await again.load()
    assert again._engine.resting_requests() == [] and request.request_id in again._orders.waiting
    clock(market).now += 200  # its time frame starts: it trades, immediate-or-cancel as asked
    await again.tick()
    (deal,) = again._engine.active_deals()
    assert deal.request_id == request.request_id
    assert await holds.reserved(pg, ledger.requester_account("alice")) == IPSX
    row = await pg.fetchrow("SELECT state, filled FROM market_orders WHERE order_id = $1", request.request_id)
    assert (row["state"], row["filled"]) == ("done", 1)


async def test_waiting_orders_can_be_amended_cancelled_and_expire(
    market: Market, pg: asyncpg.Pool, rds: Redis
) -> None:
    await online(rds, "e1")
    offer_id = await offer(market, "e1", schedule="10:00-12:00")
    await market.amend("bob", offer_id, {"price_per_gb": str(3 * IPSX)})
    assert market._orders.scheduled[offer_id].price_per_gb == 3 * IPSX
    start = clock(market).now + HOUR
    request, _ = await market.place_request(
        "alice", {**REQUEST, "starts_at": start, "expires_at": start + 60}
    )
    await market.amend("alice", request.request_id, {"ips": 2})
    assert market._orders.waiting[request.request_id][0].ips == 2
    await market.cancel("bob", offer_id)
    assert await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", offer_id) == "cancelled"
    clock(market).now += HOUR + 61  # past the request's time frame before it could trade
    await market.tick()
    state = await pg.fetchval("SELECT state FROM market_orders WHERE order_id = $1", request.request_id)
    assert state == "expired" and request.request_id not in market._orders.waiting


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"schedule": "25:00-01:00"}, "schedule"),
        ({"schedule": "10-12"}, "schedule"),
        ({"schedule": 10}, "schedule"),
    ],
)
async def test_a_bad_schedule_is_refused(
    market: Market, rds: Redis, terms: dict[str, object], field: str
) -> None:
    await online(rds, "e1")
    with pytest.raises(InvalidOrder) as info:
        await offer(market, "e1", **terms)
    assert info.value.field == field


async def test_a_time_frame_that_ends_before_it_starts_is_refused(market: Market) -> None:
    with pytest.raises(InvalidOrder) as info:
        await market.place_request(
            "alice", {**REQUEST, "starts_at": 2_000_000_000, "expires_at": 1_999_999_999}
        )
    assert info.value.field == "expires_at"


@pytest.mark.parametrize("when", [-1, 10**11 + 1, 6.65e16])
async def test_a_time_outside_unix_seconds_0_to_1e11_is_refused(market: Market, when: float) -> None:
    with pytest.raises(InvalidOrder) as info:
        await market.place_request("alice", {**REQUEST, "expires_at": when})
    assert info.value.field == "expires_at"
    with pytest.raises(InvalidOrder) as started:
        await market.place_request("alice", {**REQUEST, "starts_at": when})
    assert started.value.field == "starts_at"
