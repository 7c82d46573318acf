"""The market: the one writer of the order book and the deal book.

It keeps :class:`matching.engine.Engine` in memory and makes every change durable in PostgreSQL in
one transaction per operation: the order, the deals it opened, their reserves and every deal
transition. If a transaction fails, the in-memory book is rebuilt from the database, which stays
the truth. :class:`Market` is the entry point: it checks who may do what, runs one operation at a
time and drives the clock; open orders are placed through :mod:`matching.market_orders`, deals
are opened, moved on and settled by :mod:`matching.market_deals`.

One process runs the market (the API process); an advisory lock keeps a second one out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing.errors import InsufficientFunds as LedgerInsufficientFunds
from billing.ledger import Amount
from billing.worker import ingested_until
from matching import routing, store
from matching.deal_errors import EventRefused
from matching.deals import Actor, Deal, Event, EventKind, State, apply
from matching.engine import Engine, MatchResult, Unmatched
from matching.errors import MatchingError
from matching.market_deals import DealBook
from matching.market_orders import LedgerFunds, OrderDesk
from matching.orders import ExitAttributes, Offer, Request, RequestFilters
from matching.settlement import Tolerance
from matching.terms import offer_for, package_for, request_for
from pool.registry import ExitRegistry

log = logging.getLogger("ipsx.market")

SECONDS = 1.0
IPSX = 10**18
SPOT_MAX_PRICE = Amount(10 * IPSX)  # per GB and per hour, unless the operator sets others


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
        self._empty()
        self._lock = asyncio.Lock()
        self._stale = False  # the last rebuild failed: the book in memory is not the database's
        self._sequence = 0

    def _empty(self) -> None:
        """An empty book: the engine, with the order side and the deal side working on it."""
        self._funds = LedgerFunds(self._pool)
        self._engine = Engine(self._funds)
        self._orders = OrderDesk(self._pool, self._engine, self._funds, clock=self._clock)
        self._book = DealBook(
            self._pool,
            self._redis,
            self._registry,
            self._engine,
            self._funds,
            self.settings,
            clock=self._clock,
        )

    # -- start-up --------------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild the book from PostgreSQL: live deals first (they hold room), then open orders."""
        async with self._lock:
            await self._load()

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The market's lock, the book rebuilt first if the last rebuild failed: MarketRefused 503
        while it cannot be."""
        async with self._lock:
            if self._stale:
                try:
                    await self._load()
                except Exception:
                    log.exception("the book could not be rebuilt from the database")
                    raise MarketRefused(
                        503, "market_unavailable", "the market is rebuilding its book; try again shortly"
                    ) from None
            yield

    async def _load(self) -> None:
        """Rebuild the book; raises what a failed write raised (it does not try again). Until a
        rebuild succeeds the book is stale, and the next call under :meth:`_locked` tries again."""
        self._stale = True
        self._empty()
        self._engine.restore_deal_number(await store.last_deal_number(self._pool))
        for row in await store.live_deals(self._pool):
            self._book.restore(row)
        rows = await store.open_orders(self._pool)
        replayed = await self._orders.restore(rows)
        # Room freed while no market ran (deals that ended) may fill resting requests now. A
        # write failing here is not retried by loading again: that would replay the same fills.
        for result in replayed:
            if result.fills or result.unfunded:
                await self._write(result)
        await routing.publish_all(self._redis, self._book.routes())
        self._stale = False
        log.info("market loaded: %d open orders, %d live deals", len(rows), len(self._book.deals))

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
        async with self._locked():
            await self._check_new_order(offer.offer_id)
            result = await self._orders.place_offer(offer)
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
        async with self._locked():
            await self._check_new_order(request.request_id)
            request, result = await self._orders.place_request(request, key_id)
            placed = ("request", account, request.request_id, store.request_terms(request), key_id)
            await self._commit(result, placed=placed)
        return request, result

    async def cancel(self, account: str, order_id: str) -> None:
        """Cancel one of ``account``'s resting orders; MarketRefused 404 if it has none by that id."""
        async with self._locked():
            owner = await self._pool.fetchval(
                "SELECT account FROM market_orders WHERE order_id = $1 AND state = 'open'", order_id
            )
            if owner != account:
                raise MarketRefused(404, "unknown_order", "you have no open order with this id")
            await self._orders.cancel(order_id)

    async def amend(
        self, account: str, order_id: str, changes: dict[str, Any], *, limited_key: str | None = None
    ) -> MatchResult:
        """Amend one of ``account``'s open orders: an offer's prices, a request's IPs or max prices.

        A changed price re-queues the order and may trade at once (see ``Engine.amend_*``); its
        deals count against the key the order was placed with. So an API key with a spend limit
        (``limited_key``) amends only the requests placed with it: another key's would open deals
        its limit does not cover. Raises MarketRefused 404 for no such open order of the account,
        403 for another key's request, ``InvalidOrder`` for bad values or a field that side does
        not have.
        """
        async with self._locked():
            row = await self._pool.fetchrow(
                "SELECT account, side, key_id, terms::text AS terms FROM market_orders"
                " WHERE order_id = $1 AND state = 'open'",
                order_id,
            )
            if row is None or row["account"] != account:
                raise MarketRefused(404, "unknown_order", "you have no open order with this id")
            if limited_key is not None and row["side"] == "request" and row["key_id"] != limited_key:
                detail = "a key with a spend limit amends only the requests placed with it"
                raise MarketRefused(403, "spend_limited_key", detail)
            amended = await self._orders.amend(account, order_id, row["side"], row["terms"], changes)
            await self._commit(
                amended.result,
                amended=(order_id, amended.terms),
                queued=order_id if amended.requeued else None,
            )
        return amended.result

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
        result, _ = await self._spot(account, filters, key_id, max_price_per_gb)
        return result

    async def _spot(
        self, account: str, filters: RequestFilters, key_id: str | None, max_price_per_gb: int | None
    ) -> tuple[MatchResult, Unmatched | None]:
        """:meth:`spot`, and why it opened no deal when it opened none and funds were not short
        (else ``None``), as the book stood when it was placed."""
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
        async with self._locked():
            result = await self._orders.place_spot(request, key_id)
            unmatched = None
            if not result.fills and not result.unfunded:
                unmatched = self._engine.unmatched(request, self._clock())
            await self._commit(result, spot=True, key_id=key_id)
        return result, unmatched

    async def _check_new_order(self, order_id: str) -> None:
        if await store.order_exists(self._pool, order_id):
            raise MarketRefused(409, "duplicate_order", "an order with this id exists")

    def depth(self, country: str | None, type: str | None) -> list[tuple[Amount, Amount, int]]:
        """Price levels of resting offers with room; raises ``InvalidOrder`` for bad filters."""
        return self._engine.depth(country, type)

    # -- deals -------------------------------------------------------------------------------

    async def report(self, account: str, deal_id: str, what: str) -> Deal:
        """A party's report on one of its deals: the provider's ``ready``/``serving``/``stopped``,
        the requester's ``accepted``/``ok``/``complaint``, or ``cancel`` from either before it
        is active. A report that ends the deal unroutes its exit and frees its room; the
        provider's ``ready`` activates and routes it only once its exit is live in the pool
        (until then the deal stays proposed, and the tick activates it).

        Raises MarketRefused: 404 when the account is no party to an open deal by that id, 422
        for a report its side cannot make, 409 when the deal's state does not allow it.
        """
        async with self._locked():
            deal = self._book.deals.get(deal_id)
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
                await self._rematch(await self._book.end(deal, event))
            elif deal.state is State.PROPOSED and after.state is State.ACTIVE:
                # As the tick activates it: only on a live exit, and routed then (else it waits).
                await self._book.activate([deal_id])
            else:
                await self._book.apply(deal_id, event)
            return self._book.deals.get(deal_id, after)

    async def resolve(self, deal_id: str, billable_bytes: int) -> Deal:
        """The operator's decision on a disputed deal: the bytes it bills (the next tick settles
        it). Raises MarketRefused 404 for no such deal, 409 unless it is disputed, and
        ``InvalidEvent`` for a byte count out of range."""
        async with self._locked():
            deal = self._book.deals.get(deal_id)
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
            return await self._book.apply(deal_id, event)

    # -- making it durable -------------------------------------------------------------------

    async def _commit(
        self,
        result: MatchResult,
        *,
        placed: tuple[str, str, str, dict[str, Any], str | None] | None = None,
        spot: bool = False,
        key_id: str | None = None,
        amended: tuple[str, dict[str, Any]] | None = None,
        queued: str | None = None,
    ) -> None:
        """Make one operation durable in one transaction: the order it ``placed`` (side, account,
        id, terms, key), the open order it ``amended`` (id, new terms), the open order it put back
        on the book (``queued``: stored with a fresh place in time priority, as the engine gave it
        one), the deals its fills opened and the requests it finished. Raises MarketRefused 409
        when the transaction fails, after rebuilding the book from the database."""
        try:
            await self._write(result, placed=placed, spot=spot, key_id=key_id, amended=amended, queued=queued)
        except (LedgerInsufficientFunds, asyncpg.PostgresError):
            log.warning("market commit failed; reloading the book from the database", exc_info=True)
            try:
                await self._load()
            except Exception:  # stale: the next call tries again
                log.exception("the book could not be rebuilt from the database")
            raise MarketRefused(409, "conflict", "the book changed meanwhile; try again") from None

    async def _write(
        self,
        result: MatchResult,
        *,
        placed: tuple[str, str, str, dict[str, Any], str | None] | None = None,
        spot: bool = False,
        key_id: str | None = None,
        amended: tuple[str, dict[str, Any]] | None = None,
        queued: str | None = None,
    ) -> None:
        """The transaction of :meth:`_commit`, then the new deals join the book; raises as the
        ledger and PostgreSQL do, leaving the in-memory book ahead of the database."""
        now = int(self._clock())
        async with self._pool.acquire() as conn, conn.transaction():
            if placed is not None:
                await store.insert_order(conn, *placed)
            if amended is not None:
                await store.update_order(conn, amended[0], terms=amended[1])
            if queued is not None:
                await store.requeue(conn, queued)
            new = await self._book.open_in(conn, result.fills, now=now, spot=spot, key_id=key_id)
            # Requests the operation touched that no longer rest are done (the engine is asked
            # about those only: the book may hold any number of others).
            touched = {fill.request_id for fill in result.fills} | set(result.unfunded)
            for request_id in sorted(touched):
                if not spot and not self._engine.is_resting(request_id):
                    await store.update_order(conn, request_id, state="done")
            waits = placed is not None and placed[2] in self._orders.waiting
            if (
                placed is not None
                and placed[0] == "request"
                and not self._engine.is_resting(placed[2])
                and not waits
            ):
                await store.update_order(conn, placed[2], state="done")
        await self._book.opened(new)

    async def _rematch(self, freed: MatchResult) -> None:
        """Commit what the engine matched in the room an ended deal freed."""
        if freed.fills or freed.unfunded:
            await self._funds.refresh(fill.requester for fill in freed.fills)
            await self._commit(freed)

    # -- running -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass of the timers: expiries, activations, ends, reconciliation and settlement."""
        async with self._locked():
            now_f = self._clock()
            now = int(now_f)
            await self._orders.pass_time(now_f, self._commit)
            await self._book.activate(
                [d.deal_id for d in self._book.deals.values() if d.state is State.PROPOSED]
            )
            live = await self._registry.live_ids()
            carried = await store.carried(
                self._pool,
                [
                    d.deal_id
                    for d in self._book.deals.values()
                    if d.state is State.ACTIVE and d.traffic_bytes > 0
                ],
            )
            ingested = await ingested_until(self._redis, now_f)
            for deal in list(self._book.deals.values()):
                try:
                    freed = await self._book.advance(deal, now, live, carried.get(deal.deal_id, 0), ingested)
                    if freed is not None:
                        await self._rematch(freed)
                except Exception:
                    # The transaction rolled back but the in-memory deal may have moved on:
                    # the database is the truth, so the book is rebuilt from it.
                    log.exception("deal %s could not advance; reloading the book", deal.deal_id)
                    await self._load()
                    return

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
            # Ended before the caller closes Redis: a read still waiting would fail on it.
            spot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spot

    async def _serve_spot(self, stop: asyncio.Event) -> None:
        """Answer spot requests until ``stop`` is set. Redis or PostgreSQL away is a warning and
        a retry a second later; anything else is logged whole, and the queue served on: the
        gateways wait for these answers (the request of a failed answer times out there)."""
        while not stop.is_set():
            try:
                asked = await routing.next_spot_request(self._redis, wait=1)
                if asked is None:
                    continue
                answer = await self._answer_spot(asked)
                await routing.answer_spot(self._redis, asked.reply_to, answer)
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("spot queue unavailable, retrying in 1 s: %s", type(error).__name__)
                await asyncio.sleep(1)
            except Exception:  # our bug
                log.exception("serving the spot queue failed")
                await asyncio.sleep(1)

    async def _answer_spot(self, asked: routing.SpotRequest) -> str:
        """The answer to a gateway's spot request (see :meth:`routing.DealRoutes.ask_spot`)."""
        try:
            result, unmatched = await self._spot(
                asked.requester, asked.filters, asked.key_id, asked.max_price_per_gb
            )
        except MarketRefused:
            return "unavailable"
        except MatchingError:
            return Unmatched.NO_OFFER.value
        if result.fills:
            return "ok"
        if result.unfunded:
            return "insufficient_funds"
        return (unmatched or Unmatched.NO_OFFER).value
