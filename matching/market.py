"""The market: the one writer of the order book and the deal book.

It keeps :class:`matching.engine.Engine` in memory and makes every change durable in PostgreSQL in
one transaction per operation: the order, the deals it opened, their reserves (``billing.holds``,
one hold per deal, referenced by the deal id) and every deal transition. If a transaction fails,
the in-memory book is rebuilt from the database, which stays the truth.

Deals follow :mod:`matching.deals`; the market drives them on a tick: a deal becomes active when
its exit is live in the pool (the agent's heartbeat is the provider's "ready"), ends when its
time frame does or its exit goes away, is reconciled from both meters once the usage of its last
streams had time to be ingested, and is settled through its hold (payout, commission, release).
The exits of active deals are published to Redis for the gateway (:mod:`matching.routing`).

One process runs the market (the API process); an advisory lock keeps a second one out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from billing import holds, ledger, reseller_terms
from billing.errors import InsufficientFunds as LedgerInsufficientFunds
from billing.ledger import Amount
from matching import routing, store
from matching.deal_errors import EventRefused
from matching.deals import Actor, Deal, Event, EventKind, State, apply, propose
from matching.engine import Engine, Fill, MatchResult
from matching.errors import MatchingError
from matching.orders import ExitAttributes, Offer, Request, RequestFilters, is_expired, schedule_window
from matching.settlement import (
    SettlementAccounts,
    Tolerance,
    automatic_resolution,
    billable_seconds,
    hold_payouts,
    reconcile,
    settle,
)
from matching.terms import amendment, offer_for, package_for, request_for
from pool.registry import ExitRegistry

log = logging.getLogger("ipsx.market")

SECONDS = 1.0
IPSX = 10**18
SPOT_MAX_PRICE = Amount(10 * IPSX)  # per GB and per hour, unless the operator sets others
_LIVE = (State.PROPOSED, State.ACTIVE)  # deals that hold room on their exit
_RECLIP_S = 60  # a scheduled offer is re-placed once its window's end cuts its deals this much shorter


@dataclass(frozen=True, slots=True)
class MarketSettings:
    commission_bps: int = 1_000  # the operator's commission: 10 % of each charge
    ready_timeout: int = 60  # seconds a deal waits for its exit to come online, then is cancelled
    settle_grace: float = 5 * SECONDS  # after a deal ends, time for its last usage to be ingested
    tick_interval: float = 1 * SECONDS
    tolerance: Tolerance = field(default_factory=Tolerance)
    # Spot deals: opened for traffic that comes without an order, at most at these prices.
    spot_ips: int = 8
    spot_duration_s: int = 600
    spot_traffic_bytes: int = 10**9
    spot_max_price_per_gb: Amount = SPOT_MAX_PRICE
    spot_max_price_per_hour: Amount = SPOT_MAX_PRICE


# What each party of a deal may report over the API, and the event each report is.
_PARTY_REPORTS: dict[Actor, dict[str, EventKind]] = {
    Actor.PROVIDER: {
        "ready": EventKind.READY,
        "serving": EventKind.SERVING,
        "stopped": EventKind.STOPPED,
        "cancel": EventKind.PROVIDER_CANCEL,
    },
    Actor.REQUESTER: {
        "accepted": EventKind.ACCEPTED,
        "ok": EventKind.OK,
        "complaint": EventKind.COMPLAINT,
        "cancel": EventKind.REQUESTER_CANCEL,
    },
}


class MarketRefused(MatchingError):
    """An operation the market refuses: ``code`` is a stable slug, ``status`` the HTTP answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class _LedgerFunds:
    """The engine's view of requesters' available balances, refreshed from the ledger before
    each operation; the ledger refuses for real when the operation is committed."""

    def __init__(self) -> None:
        self.available: dict[str, int] = {}

    def try_reserve(self, requester: str, amount: Amount) -> bool:
        if self.available.get(requester, 0) < amount:
            return False
        self.available[requester] -= amount
        return True

    def release(self, requester: str, amount: Amount) -> None:
        self.available[requester] = self.available.get(requester, 0) + amount


def _accounts() -> SettlementAccounts:
    return SettlementAccounts(
        reserve=lambda name: holds.hold_account(ledger.requester_account(name)),
        available=ledger.requester_account,
        payout=ledger.provider_account,
        commission=ledger.COMMISSION,
    )


class Market:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        settings: MarketSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self.settings = settings or MarketSettings()
        self._clock = clock
        self._registry = ExitRegistry(redis)
        self._funds = _LedgerFunds()
        self._engine = Engine(self._funds)
        self._deals: dict[str, Deal] = {}  # deals not closed yet
        # Open orders the engine holds only part of the time: offers with a daily schedule (as
        # placed; the engine holds them, clipped to the window, while it is open) and requests
        # waiting for their time frame to start (with the IPs already filled and the key used).
        self._scheduled: dict[str, Offer] = {}
        self._waiting: dict[str, tuple[Request, int, str | None]] = {}
        self._lock = asyncio.Lock()
        self._sequence = 0

    # -- start-up --------------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild the book from PostgreSQL: live deals first (they hold room), then open orders."""
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        self._funds = _LedgerFunds()
        self._engine = Engine(self._funds)
        self._deals = {}
        self._scheduled, self._waiting = {}, {}
        for row in await store.live_deals(self._pool):
            deal = store.deal_from(orjson.loads(row["record"]))
            fill = Fill(
                deal_id=row["deal_id"],
                request_id=row["request_id"],
                offer_id=row["offer_id"],
                requester=row["requester"],
                provider=row["provider"],
                exit_id=row["exit_id"],
                price_per_gb=Amount(int(row["price_per_gb"])),
                price_per_hour=Amount(int(row["price_per_hour"])),
                duration_s=row["duration_s"],
                traffic_bytes=row["traffic_bytes"],
                dedicated=row["dedicated"],
                reserve=Amount(int(row["reserve"])),
                opened_at=float(row["created"]),
            )
            self._deals[deal.deal_id] = deal
            if deal.state in _LIVE:
                self._engine.restore_deal(fill)
        rows = await store.open_orders(self._pool)
        await self._refresh_funds(row["account"] for row in rows if row["side"] == "request")
        now = self._clock()
        replayed: list[MatchResult] = []
        for row in rows:
            terms = orjson.loads(row["terms"])
            if row["side"] == "offer":
                offer = self._hold_offer(store.offer_from(terms), now)
                if offer is not None:
                    replayed.append(self._engine.place_offer(offer, now))
            else:
                request = store.request_from(terms)
                if self._hold_request(request, row["filled"], row["key_id"], now):
                    continue
                request = replace(request, ips=request.ips - row["filled"])
                replayed.append(self._engine.place_request(request, now))
        # Room freed while no market ran (deals that ended) may fill resting requests now.
        for result in replayed:
            if result.fills or result.unfunded:
                await self._commit(result)
        await routing.publish_all(self._redis, self._active_routes())
        log.info("market loaded: %d open orders, %d live deals", len(rows), len(self._deals))

    # -- orders ------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._sequence += 1
        return f"{prefix}{int(self._clock() * 1000):x}{self._sequence:04x}"

    async def place_offer(
        self, account: str, address: str, terms: dict[str, Any]
    ) -> tuple[Offer, MatchResult]:
        """Offer one of the caller's live exits; its attributes come from the pool, not the caller.

        Raises MarketRefused (404 unknown exit, 403 another provider's exit) or
        ``matching.errors.InvalidOrder`` for bad terms.
        """
        exit_id = str(terms.get("exit_id", ""))[:128]
        info = await self._registry.get(exit_id) if exit_id else None
        if info is None:
            raise MarketRefused(404, "unknown_exit", "no live exit has this id; is its agent online?")
        if info.provider != address:
            raise MarketRefused(403, "not_your_exit", "this exit belongs to another provider")
        attributes = ExitAttributes(
            country=info.country, type=info.type, region=info.region, city=info.city, asn=info.asn
        )
        offer = offer_for(
            account, exit_id, attributes, terms, str(terms.get("offer_id") or self._new_id("o"))
        )
        async with self._lock:
            await self._check_new_order(offer.offer_id)
            await self._refresh_funds(status.request.requester for status in self._engine.resting_requests())
            now = self._clock()
            held = self._hold_offer(offer, now)
            result = MatchResult(rested=True) if held is None else self._engine.place_offer(held, now)
            await self._commit(
                result, placed=("offer", account, offer.offer_id, store.offer_terms(offer), None)
            )
        return offer, result

    async def place_request(
        self, account: str, terms: dict[str, Any], *, key_id: str | None = None
    ) -> tuple[Request, MatchResult]:
        """A request order of ``account``; reserves are taken for each deal it opens.

        Placed with an API key that has a spend limit, the order is immediate-or-cancel and its
        deals may not reserve more than what the limit has left.
        """
        request = request_for(account, terms, str(terms.get("request_id") or self._new_id("r")))
        return await self._place_request(account, request, key_id)

    async def place_package(
        self, account: str, terms: dict[str, Any], *, key_id: str | None = None
    ) -> tuple[Request, MatchResult]:
        """A package as IPSX sold them (IPs, duration, total traffic, dedicated or shared), placed
        as the request order it maps onto (``matching.orders.package_request``)."""
        request = package_for(account, terms, str(terms.get("request_id") or self._new_id("p")))
        return await self._place_request(account, request, key_id)

    async def _place_request(
        self, account: str, request: Request, key_id: str | None
    ) -> tuple[Request, MatchResult]:
        async with self._lock:
            await self._check_new_order(request.request_id)
            await self._refresh_funds([account])
            if await self._limit_to_key(account, key_id):
                request = replace(request, rest=False)
            placed = ("request", account, request.request_id, store.request_terms(request), key_id)
            if self._hold_request(request, 0, key_id, self._clock()):
                await self._commit(MatchResult(rested=True), placed=placed)
                return request, MatchResult(rested=True)
            result = self._engine.place_request(request, self._clock())
            await self._commit(result, placed=placed)
        return request, result

    # -- orders the engine holds part of the time ---------------------------------------------

    def _hold_offer(self, offer: Offer, now: float) -> Offer | None:
        """The offer as the engine may hold it at ``now``: as it is without a schedule; inside its
        window, for deals that end before the window closes; ``None`` outside it (the market keeps
        it, and puts it on the book when its window opens)."""
        if offer.schedule is None:
            return offer
        self._scheduled[offer.offer_id] = offer
        window = schedule_window(offer.schedule, now)
        left = 0 if window is None else int(window[1] - now)
        if window is None or left < offer.min_duration_s:
            return None
        closes = window[1] - offer.min_duration_s  # after that no deal fits the window
        expires_at = closes if offer.expires_at is None else min(offer.expires_at, closes)
        return replace(offer, max_duration_s=min(offer.max_duration_s, left), expires_at=expires_at)

    def _hold_request(self, request: Request, filled: int, key_id: str | None, now: float) -> bool:
        """Keep a request whose time frame has not started off the book; True if it waits."""
        if request.starts_at is None or request.starts_at <= now:
            return False
        self._waiting[request.request_id] = (request, filled, key_id)
        return True

    async def _reschedule(self, now: float) -> None:
        """Put offers on the book as their windows open and take them off as they close (a held
        offer is re-placed, clipped again, as its window's end nears), and requests as their time
        frames start. Orders that expired meanwhile are marked so."""
        for offer_id, offer in list(self._scheduled.items()):
            if is_expired(offer.expires_at, now):
                await self._expired(offer_id)
                continue
            held, admitted = self._engine.resting_offer(offer_id), self._hold_offer(offer, now)
            if admitted is None:
                if held is not None:
                    self._engine.cancel(offer_id)
                continue
            if held is not None and held.max_duration_s - admitted.max_duration_s < _RECLIP_S:
                continue
            if held is not None:
                self._engine.cancel(offer_id)
            await self._refresh_funds(status.request.requester for status in self._engine.resting_requests())
            await self._commit(self._engine.place_offer(admitted, now))
        for request_id, (request, filled, key_id) in list(self._waiting.items()):
            if is_expired(request.expires_at, now):
                await self._expired(request_id)
            elif request.starts_at is not None and request.starts_at <= now:
                del self._waiting[request_id]
                await self._refresh_funds([request.requester])
                if await self._limit_to_key(request.requester, key_id):
                    request = replace(request, rest=False)
                result = self._engine.place_request(replace(request, ips=request.ips - filled), now)
                await self._commit(result)
                if not self._engine.is_resting(request_id):
                    async with self._pool.acquire() as conn, conn.transaction():
                        await store.update_order(conn, request_id, state="done")

    async def _expired(self, order_id: str) -> None:
        self._scheduled.pop(order_id, None)
        self._waiting.pop(order_id, None)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.update_order(conn, order_id, state="expired")

    async def _limit_to_key(self, account: str, key_id: str | None) -> bool:
        """Cap the account's available funds for this operation at the key's budget, if any."""
        if key_id is None:
            return False
        budget = await store.key_budget(self._pool, key_id)
        if budget is None:
            return False
        self._funds.available[account] = min(self._funds.available.get(account, 0), budget)
        return True

    async def cancel(self, account: str, order_id: str) -> None:
        """Cancel one of ``account``'s resting orders; MarketRefused 404 if it has none by that id."""
        async with self._lock:
            owner = await self._pool.fetchval(
                "SELECT account FROM market_orders WHERE order_id = $1 AND state = 'open'", order_id
            )
            if owner != account:
                raise MarketRefused(404, "unknown_order", "you have no open order with this id")
            self._scheduled.pop(order_id, None)
            self._waiting.pop(order_id, None)
            if self._engine.is_resting(order_id):
                self._engine.cancel(order_id)
            async with self._pool.acquire() as conn, conn.transaction():
                await store.update_order(conn, order_id, state="cancelled")

    async def report(self, account: str, deal_id: str, what: str) -> Deal:
        """A party's report on one of its deals: the provider's ``ready``/``serving``/``stopped``,
        the requester's ``accepted``/``ok``/``complaint``, or ``cancel`` from either before it
        is active. A report that ends the deal unroutes its exit and frees its room.

        Raises MarketRefused: 404 when the account is no party to an open deal by that id, 422
        for a report its side cannot make, 409 when the deal's state does not allow it.
        """
        async with self._lock:
            deal = self._deals.get(deal_id)
            if deal is None or account not in (deal.requester, deal.provider):
                raise MarketRefused(404, "unknown_deal", "you are no party to an open deal with this id")
            actor = Actor.REQUESTER if account == deal.requester else Actor.PROVIDER
            kind = _PARTY_REPORTS[actor].get(what)
            if kind is None:
                allowed = ", ".join(sorted(_PARTY_REPORTS[actor]))
                raise MarketRefused(422, "invalid_report", f"as the deal's {actor}, report one of: {allowed}")
            event = Event(kind, actor, max(int(self._clock()), deal.last_at))
            try:
                after, _ = apply(deal, event)
            except EventRefused:
                raise MarketRefused(
                    409, "conflict", f"a {deal.state} deal does not take {what!r} from its {actor}"
                ) from None
            serving = (State.PROPOSED, State.ACTIVE)
            if deal.state in serving and after.state not in serving:
                await self._end(deal, event)
            else:
                await self._apply(deal_id, event)
            return self._deals.get(deal_id, after)

    async def resolve(self, deal_id: str, billable_bytes: int) -> Deal:
        """The operator's decision on a disputed deal: the bytes it bills (the next tick settles
        it). Raises MarketRefused 404 for no such deal, 409 unless it is disputed, and
        ``InvalidEvent`` for a byte count out of range."""
        async with self._lock:
            deal = self._deals.get(deal_id)
            state = (
                deal.state
                if deal is not None
                else await self._pool.fetchval("SELECT state FROM deals WHERE deal_id = $1", deal_id)
            )
            if state is None:
                raise MarketRefused(404, "unknown_deal", "no deal has this id")
            if deal is None or deal.state is not State.DISPUTED:
                raise MarketRefused(409, "conflict", f"the deal is {state}, not disputed")
            event = Event(
                EventKind.DISPUTE_RESOLVED,
                Actor.OPERATOR,
                max(int(self._clock()), deal.last_at),
                billable_bytes=billable_bytes,
            )
            return await self._apply(deal_id, event)

    async def amend(self, account: str, order_id: str, changes: dict[str, Any]) -> MatchResult:
        """Amend one of ``account``'s open orders: an offer's prices, a request's IPs or max prices.

        A changed price re-queues the order and may trade at once (see ``Engine.amend_*``).
        Raises MarketRefused 404 for no such open order of the account, ``InvalidOrder`` for bad
        values or a field that side does not have.
        """
        async with self._lock:
            row = await self._pool.fetchrow(
                "SELECT account, side, terms::text AS terms FROM market_orders"
                " WHERE order_id = $1 AND state = 'open'",
                order_id,
            )
            if row is None or row["account"] != account:
                raise MarketRefused(404, "unknown_order", "you have no open order with this id")
            now = self._clock()
            kwargs = amendment(row["side"], changes)
            changed = {name: value for name, value in kwargs.items() if value is not None}
            result = MatchResult(rested=True)
            if row["side"] == "offer":
                scheduled = self._scheduled.get(order_id)
                if scheduled is not None:
                    self._scheduled[order_id] = replace(scheduled, **changed)
                if scheduled is None or self._engine.is_resting(order_id):
                    await self._refresh_funds(
                        status.request.requester for status in self._engine.resting_requests()
                    )
                    result = self._engine.amend_offer(order_id, now=now, **kwargs)
            elif order_id in self._waiting:
                request, filled, key_id = self._waiting[order_id]
                self._waiting[order_id] = (replace(request, **changed), filled, key_id)
            else:
                await self._refresh_funds([account])
                result = self._engine.amend_request(order_id, now=now, **kwargs)
            terms = orjson.loads(row["terms"])
            terms.update({k: (v if k == "ips" else str(v)) for k, v in kwargs.items() if v is not None})
            async with self._pool.acquire() as conn, conn.transaction():
                await store.update_order(conn, order_id, terms=terms)
            await self._commit(result)
        return result

    async def spot(
        self,
        account: str,
        filters: RequestFilters,
        *,
        key_id: str | None = None,
        max_price_per_gb: int | None = None,
    ) -> MatchResult:
        """Open spot deals for traffic that came without an order: up to ``spot_ips`` shared
        exits at the best prices, immediate-or-cancel. The price per GB is capped by
        ``max_price_per_gb`` (the connection's ``maxprice``), else the account's preference, else
        the market's default."""
        s = self.settings
        cap = max_price_per_gb or await store.spot_max_price(self._pool, account) or s.spot_max_price_per_gb
        request = Request(
            request_id=self._new_id("s"),
            requester=account,
            filters=filters,
            ips=s.spot_ips,
            duration_s=s.spot_duration_s,
            traffic_bytes=s.spot_traffic_bytes,
            max_price_per_gb=Amount(cap),
            max_price_per_hour=s.spot_max_price_per_hour,
            dedicated=False,
            rest=False,
        )
        async with self._lock:
            await self._refresh_funds([account])
            await self._limit_to_key(account, key_id)
            result = self._engine.place_request(request, self._clock())
            await self._commit(result, spot=True, key_id=key_id)
        return result

    async def _check_new_order(self, order_id: str) -> None:
        if await store.order_exists(self._pool, order_id):
            raise MarketRefused(409, "duplicate_order", "an order with this id exists")

    async def _refresh_funds(self, requesters: Iterable[str]) -> None:
        names = sorted(set(requesters))
        if not names:
            return
        rows = await self._pool.fetch(
            "SELECT account, balance::text AS balance FROM ledger_balances WHERE account = ANY($1::text[])",
            [ledger.requester_account(name) for name in names],
        )
        found = {row["account"]: int(row["balance"]) for row in rows}
        # A reseller's sub-user pays its markup on top of each settled charge: its orders may
        # reserve only what leaves the markup covered.
        markups = await reseller_terms.markups_of(self._pool, names)
        for name in names:
            funds = found.get(ledger.requester_account(name), 0)
            bps = markups.get(name)
            self._funds.available[name] = funds if bps is None else reseller_terms.spendable(funds, bps)

    def depth(self, country: str | None, type: str | None) -> list[tuple[Amount, Amount, int]]:
        """Price levels of resting offers with room; raises ``InvalidOrder`` for bad filters."""
        return self._engine.depth(country, type)

    # -- making it durable -------------------------------------------------------------------

    async def _commit(
        self,
        result: MatchResult,
        *,
        placed: tuple[str, str, str, dict[str, Any], str | None] | None = None,
        spot: bool = False,
        key_id: str | None = None,
    ) -> None:
        now = int(self._clock())
        new: list[tuple[Fill, Deal]] = []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if placed is not None:
                    await store.insert_order(conn, *placed)
                for fill in result.fills:
                    deal = propose(
                        deal_id=fill.deal_id,
                        requester=fill.requester,
                        provider=fill.provider,
                        exit_id=fill.exit_id,
                        price_per_gb=fill.price_per_gb,
                        price_per_hour=fill.price_per_hour,
                        reserve=fill.reserve,
                        duration_s=fill.duration_s,
                        traffic_bytes=fill.traffic_bytes,
                        created_at=now,
                        accepted=True,  # the requester placed the order (or sent the traffic)
                    )
                    await store.insert_deal(conn, fill, deal, spot=spot, key_id=key_id)
                    if fill.reserve > 0:
                        await holds.reserve_in(
                            conn, ledger.requester_account(fill.requester), fill.reserve, fill.deal_id
                        )
                    if not spot:
                        await store.update_order(conn, fill.request_id, filled_delta=1)
                    new.append((fill, deal))
                resting = {status.request.request_id for status in self._engine.resting_requests()}
                touched = {fill.request_id for fill in result.fills} | set(result.unfunded)
                for request_id in sorted(touched - resting):
                    if not spot:
                        await store.update_order(conn, request_id, state="done")
                waits = placed is not None and placed[2] in self._waiting
                if placed is not None and placed[0] == "request" and placed[2] not in resting and not waits:
                    await store.update_order(conn, placed[2], state="done")
        except (LedgerInsufficientFunds, asyncpg.PostgresError):
            log.warning("market commit failed; reloading the book from the database", exc_info=True)
            await self._load()
            raise MarketRefused(409, "conflict", "the book changed meanwhile; try again") from None
        for fill, deal in new:
            self._deals[fill.deal_id] = deal
        if new:
            await self._activate([deal.deal_id for _, deal in new])

    async def _apply(self, deal_id: str, event: Event, conn: asyncpg.Connection | None = None) -> Deal:
        deal, record = apply(self._deals[deal_id], event)
        if conn is None:
            async with self._pool.acquire() as own, own.transaction():
                await store.save_deal(own, deal, record)
        else:
            await store.save_deal(conn, deal, record)
        if deal.state in (State.SETTLED, State.CANCELLED, State.EXPIRED):
            self._deals.pop(deal_id, None)
        else:
            self._deals[deal_id] = deal
        return deal

    # -- the deal lifecycle ------------------------------------------------------------------

    def _active_routes(self) -> dict[str, dict[str, str | tuple[str, int]]]:
        routes: dict[str, dict[str, str | tuple[str, int]]] = {}
        for deal in self._deals.values():
            if deal.state is State.ACTIVE:
                routes.setdefault(deal.requester, {})[deal.exit_id] = (deal.deal_id, deal.traffic_bytes)
        return routes

    async def _activate(self, deal_ids: list[str]) -> None:
        """Proposed deals whose exit is live become active and routable."""
        live = await self._registry.live_ids()
        now = int(self._clock())
        for deal_id in deal_ids:
            deal = self._deals.get(deal_id)
            if deal is None or deal.state is not State.PROPOSED or deal.exit_id not in live:
                continue
            deal = await self._apply(deal_id, Event(EventKind.READY, Actor.PROVIDER, max(now, deal.last_at)))
            if deal.state is State.ACTIVE:
                await routing.publish(
                    self._redis, deal.requester, deal.exit_id, deal.deal_id, deal.traffic_bytes
                )

    async def tick(self) -> None:
        """One pass of the timers: expiries, activations, ends, reconciliation and settlement."""
        async with self._lock:
            now_f = self._clock()
            now = int(now_f)
            for order_id in self._engine.expire(now_f):
                scheduled = self._scheduled.get(order_id)
                if scheduled is not None and not is_expired(scheduled.expires_at, now_f):
                    continue  # its window closed: it waits for the next one
                await self._expired(order_id)
            await self._reschedule(now_f)
            await self._activate([d.deal_id for d in self._deals.values() if d.state is State.PROPOSED])
            live = await self._registry.live_ids()
            carried = await store.carried(
                self._pool,
                [d.deal_id for d in self._deals.values() if d.state is State.ACTIVE and d.traffic_bytes > 0],
            )
            for deal in list(self._deals.values()):
                try:
                    await self._advance(deal, now, live, carried.get(deal.deal_id, 0))
                except Exception:
                    # The transaction rolled back but the in-memory deal may have moved on:
                    # the database is the truth, so the book is rebuilt from it.
                    log.exception("deal %s could not advance; reloading the book", deal.deal_id)
                    await self._load()
                    return

    async def _advance(self, deal: Deal, now: int, live: set[str], carried: int) -> None:
        """Move one deal on by its timers; ``carried`` is what its finished streams metered."""
        at = max(now, deal.last_at)
        if deal.state is State.PROPOSED and now - deal.created_at >= self.settings.ready_timeout:
            await self._end(deal, Event(EventKind.READY_TIMEOUT, Actor.SYSTEM, at))
        elif deal.state is State.ACTIVE and deal.activated_at is not None:
            if now >= deal.activated_at + deal.duration_s:
                await self._end(deal, Event(EventKind.TIME_FRAME_ENDED, Actor.SYSTEM, at))
            elif deal.traffic_bytes > 0 and carried >= deal.traffic_bytes:
                # Its reserve covers no more: new streams go to other deals (or a new spot deal).
                await self._end(deal, Event(EventKind.ALLOWANCE_USED, Actor.SYSTEM, at))
            elif deal.exit_id not in live:
                await self._end(deal, Event(EventKind.STOPPED, Actor.GATEWAY, at))
        elif deal.state in (State.COMPLETED, State.DISPUTED, State.RESOLVED):
            ended = deal.ended_at or deal.last_at
            if self._clock() - ended >= self.settings.settle_grace:
                await self._close(deal, at)

    async def _end(self, deal: Deal, event: Event) -> None:
        """The deal stops serving: unroute its exit, free its room, and cancel or complete it."""
        await routing.withdraw(self._redis, deal.requester, deal.exit_id, deal.deal_id)
        ended = await self._apply(deal.deal_id, event)
        if ended.state is State.CANCELLED and deal.reserve > 0:
            async with self._pool.acquire() as conn, conn.transaction():
                await holds.resolve_in(conn, deal.deal_id, ())
        freed = self._engine.end_deal(deal.deal_id, float(event.at))
        if freed.fills or freed.unfunded:
            await self._refresh_funds(fill.requester for fill in freed.fills)
            await self._commit(freed)

    async def _close(self, deal: Deal, at: int) -> None:
        """Reconcile both meters, resolve a mismatch by the automatic rule, settle the hold."""
        async with self._pool.acquire() as conn, conn.transaction():
            # A dispute the requester opened is an operator's to decide (see ``resolve``); one
            # the meters opened is decided here by the automatic rule.
            complained = deal.state is State.DISPUTED
            if deal.gateway_bytes is None and deal.state in (State.COMPLETED, State.DISPUTED):
                gateway, agent = await store.metered(conn, deal.deal_id)
                reconciliation = reconcile(gateway, agent, self.settings.tolerance)
                deal = await self._apply(
                    deal.deal_id,
                    Event(EventKind.METERS_RECONCILED, Actor.SYSTEM, at, reconciliation=reconciliation),
                    conn,
                )
                if deal.state is State.DISPUTED and not complained:
                    deal = await self._apply(
                        deal.deal_id,
                        Event(
                            EventKind.DISPUTE_RESOLVED,
                            Actor.SYSTEM,
                            at,
                            billable_bytes=automatic_resolution(reconciliation),
                        ),
                        conn,
                    )
            if deal.state not in (State.COMPLETED, State.RESOLVED) or deal.billable_bytes is None:
                return  # a complaint's dispute waits for an operator
            settlement = settle(
                deal, deal.billable_bytes, billable_seconds(deal), self.settings.commission_bps
            )
            if deal.reserve > 0:
                await holds.resolve_in(conn, deal.deal_id, hold_payouts(settlement, _accounts()))
            await reseller_terms.charge_markup_in(conn, deal.deal_id, deal.requester, settlement.charge)
            await store.settled(
                conn, deal.deal_id, int(settlement.charge), int(settlement.commission), deal.billable_bytes
            )
            await self._apply(deal.deal_id, Event(EventKind.SETTLE, Actor.SYSTEM, at), conn)
        log.info(
            "deal %s settled: %d bytes, charge %s IPSX (commission %s)",
            deal.deal_id,
            deal.billable_bytes,
            ledger.format_amount(settlement.charge),
            ledger.format_amount(settlement.commission),
        )

    # -- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tick and answer the gateways' spot requests until ``stop`` is set."""
        spot = asyncio.create_task(self._serve_spot(stop))
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:  # one bad tick must not stop the market; the next one retries
                    log.exception("market tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.tick_interval)
        finally:
            spot.cancel()

    async def _serve_spot(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                asked = await routing.next_spot_request(self._redis, wait=1)
            except Exception:  # Redis away: try again shortly
                log.warning("spot queue unavailable", exc_info=True)
                await asyncio.sleep(1)
                continue
            if asked is None:
                continue
            answer = await self._answer_spot(asked)
            await routing.answer_spot(self._redis, asked.reply_to, answer)

    async def _answer_spot(self, asked: routing.SpotRequest) -> str:
        try:
            result = await self.spot(
                asked.requester, asked.filters, key_id=asked.key_id, max_price_per_gb=asked.max_price_per_gb
            )
        except MarketRefused:
            return "unavailable"
        except MatchingError:
            return "no_offer"
        if result.fills:
            return "ok"
        return "insufficient_funds" if result.unfunded else "no_offer"
