"""Matching engine benchmark: orders per second on a deep book, beside a naive linear-scan matcher.

In-process and single-threaded, no I/O. The script builds a book of ``--offers`` resting offers
(default 100,000) over 30 countries x 3 IP types with seeded random prices, then places a stream
of ``--orders`` mixed orders (default 50,000): requests for 1-5 IPs (some with ``None`` filters,
some priced below the market so that they rest, some immediate-or-cancel), new offers, cancels
and deal ends. Order objects are built before the clock starts: the figures are the engine's.

Side by side, in the same run, a naive matcher written here (a linear scan over every offer per
request and over every resting request per offer, same rules) replays the first
``--baseline-orders`` orders of the same stream on the same book; the ratio of the two is
reported, and the deals both opened on that slice are compared, which doubles as a check of the
engine's price-time priority against brute force.

A last phase ends deals while ``--live-deals`` others are live (default 1,000 and 10,000) and
``--resting-requests`` wait on the book, through the market's own deal book
(``matching.market_deals.DealBook.end``: route withdrawn, transition written, funds read, room
freed and matched) with PostgreSQL and Redis stood in for by no-op answers, so the figure is the
market's work under its lock without the round trips. Side by side, on a copy of the same world,
the end of a deal as it was before the route index (a scan of every deal for the route's
successor, the funds of every resting request's requester read from the ledger) ends the same
deals; both must withdraw the same routes and open the same deals. It also times one tick's pass
over the live deals (none due), which stays proportional to them.

    .venv/bin/python loadtests/bench_matching.py                  # about 30 s on one core
    .venv/bin/python loadtests/bench_matching.py --orders 10000 --baseline-orders 300
    .venv/bin/python loadtests/bench_matching.py --orders 0 --baseline-orders 0   # deal ends only
    .venv/bin/python loadtests/bench_matching.py --json /tmp/matching.json

Figures: orders/s (wall clock, ``time.perf_counter``) and CPU us per order (``time.process_time``,
which a busy neighbour on a shared machine does not inflate).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from billing.ledger import Amount
from matching import routing, store
from matching.deals import Actor, Deal, Event, EventKind, State, apply, propose
from matching.engine import Engine, Fill, InMemoryFunds, MatchResult
from matching.errors import UnknownOrder
from matching.market import MarketSettings
from matching.market_deals import DealBook
from matching.market_orders import LedgerFunds
from matching.orders import DAY, HOUR, PROTOCOLS, ExitAttributes, Offer, Request, RequestFilters

CENTI = 10**16  # 0.01 IPSX in base units
GB = 10**9
# Ordered by market size: offers and requests favour the first ones.
COUNTRIES = ["us", "de", "fr", "gb", "nl", "ca", "jp", "br", "in", "it", "es", "pl", "se", "au", "kr"]
COUNTRIES += ["sg", "mx", "tr", "ua", "ro", "ch", "be", "at", "cz", "dk", "fi", "no", "pt", "ar", "za"]
TYPES = ["residential", "mobile", "datacenter"]
TYPE_WEIGHTS = [6, 2, 3]
REQUESTERS = 500
POOR_EVERY = 20  # one requester in 20 can afford only a few deals


# -- the order stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """The initial book and the operations that follow, all built before timing."""

    book: list[Offer]
    ops: list[tuple[str, Any]]  # ("request", Request) | ("offer", Offer) | ("cancel", int) | ("end", int)
    balances: dict[str, int]


def _offer(rng: random.Random, n: int) -> Offer:
    country = COUNTRIES[min(int(rng.expovariate(0.12)), len(COUNTRIES) - 1)]  # a few big markets
    kind = rng.random()
    gb = rng.randint(50, 300) * CENTI if kind < 0.75 else 0  # 55% per GB, 25% per hour, 20% both
    hour = rng.randint(5, 100) * CENTI if kind >= 0.55 else 0
    sharing = rng.choices(["dedicated", "shared", "both"], [25, 45, 30])[0]
    protocols = rng.choices([PROTOCOLS, frozenset({"http", "https"}), frozenset({"socks5"})], [85, 10, 5])[0]
    return Offer(
        offer_id=f"o{n}",
        provider=f"p{n % 2000}",
        exit_id=f"x{n}",
        attributes=ExitAttributes(
            country=country,
            type=rng.choices(TYPES, TYPE_WEIGHTS)[0],
            region=f"r{rng.randrange(5)}",
            city=f"c{rng.randrange(20)}",
            asn=rng.randint(1000, 1100),
        ),
        price_per_gb=Amount(gb),
        price_per_hour=Amount(hour),
        min_duration_s=rng.choice([5, 60]),
        max_duration_s=rng.choice([DAY, 30 * DAY]),
        protocols=protocols,
        sharing=sharing,
        shared_capacity=rng.randint(1, 20) if sharing != "dedicated" else 1,
    )


def _request(rng: random.Random, n: int) -> Request:
    country = COUNTRIES[min(int(rng.expovariate(0.12)), len(COUNTRIES) - 1)] if rng.random() < 0.85 else None
    type_ = rng.choices(TYPES, TYPE_WEIGHTS)[0] if rng.random() < 0.7 else None
    region = f"r{rng.randrange(5)}" if country and rng.random() < 0.03 else None
    # About one request in five bids below the cheapest asks and rests: a book with a spread.
    low = rng.random() < 0.2
    return Request(
        request_id=f"q{n}",
        requester=f"u{rng.randrange(REQUESTERS)}",
        filters=RequestFilters(
            country=country,
            type=type_,
            region=region,
            protocol=rng.choices(["http", "https", "socks5"], [60, 25, 15])[0],
        ),
        ips=rng.choices([1, 2, 3, 4, 5], [40, 20, 15, 10, 15])[0],
        duration_s=rng.choice([60, 600, HOUR, DAY]),
        traffic_bytes=rng.choices([0, GB // 10, GB, 10 * GB], [5, 30, 40, 25])[0],
        max_price_per_gb=Amount(rng.randint(10, 49) * CENTI if low else rng.randint(60, 350) * CENTI),
        max_price_per_hour=Amount(rng.randint(1, 4) * CENTI if low else rng.randint(10, 120) * CENTI),
        dedicated=rng.random() < 0.3,
        rest=rng.random() < 0.5,
    )


def build_stream(offers: int, orders: int, seed: int) -> Stream:
    rng = random.Random(seed)
    book = [_offer(rng, n) for n in range(offers)]
    ops: list[tuple[str, Any]] = []
    for n in range(orders):
        roll = rng.random()
        if roll < 0.65:
            ops.append(("request", _request(rng, n)))
        elif roll < 0.75:
            ops.append(("offer", _offer(rng, offers + n)))
        elif roll < 0.80:
            ops.append(("cancel", rng.randrange(1 << 30)))
        else:
            ops.append(("end", rng.randrange(1 << 30)))
    balances = {f"u{n}": (50 * 10**18 if n % POOR_EVERY == 0 else 10**30) for n in range(REQUESTERS)}
    return Stream(book, ops, balances)


# -- the naive baseline ----------------------------------------------------------------------------


class NaiveMatcher:
    """The engine's rules by brute force: every request scans every offer, every offer every request."""

    def __init__(self, funds: InMemoryFunds) -> None:
        self.funds = funds
        self.seq = 0
        self.deal_no = 0
        self.offers: dict[str, tuple[int, Offer]] = {}
        self.requests: dict[str, list[Any]] = {}  # id -> [seq, request, filled, exits]
        self.dedicated: dict[str, int] = {}  # exit -> active dedicated deals
        self.shared: dict[str, int] = {}  # exit -> active shared deals
        # deal id -> (request id, exit, dedicated, requester, reserve)
        self.deals: dict[str, tuple[str, str, bool, str, int]] = {}

    def room(self, offer: Offer, dedicated: bool) -> bool:
        if self.dedicated.get(offer.exit_id, 0):
            return False
        if dedicated:
            return offer.serves_dedicated and not self.shared.get(offer.exit_id, 0)
        return offer.serves_shared and self.shared.get(offer.exit_id, 0) < offer.shared_capacity

    def open(self, entry: list[Any], offer: Offer, cost: int) -> tuple[str, str, str]:
        self.deal_no += 1
        request: Request = entry[1]
        deal_id = f"{request.request_id}_{self.deal_no}"
        counts = self.dedicated if request.dedicated else self.shared
        counts[offer.exit_id] = counts.get(offer.exit_id, 0) + 1
        entry[2] += 1
        entry[3].add(offer.exit_id)
        self.deals[deal_id] = (request.request_id, offer.exit_id, request.dedicated, request.requester, cost)
        return deal_id, request.request_id, offer.offer_id

    def place_offer(self, offer: Offer, now: float) -> list[tuple[str, str, str]]:
        self.seq += 1
        self.offers[offer.offer_id] = (self.seq, offer)
        return self.serve(offer, now)

    def serve(self, offer: Offer, now: float) -> list[tuple[str, str, str]]:
        fills = []
        waiting = sorted(self.requests.values(), key=lambda e: (-e[1].willingness, e[0]))
        for entry in waiting:
            request: Request = entry[1]
            if offer.exit_id in entry[3] or not request.accepts(offer, now):
                continue
            if not self.room(offer, request.dedicated):
                continue
            cost = request.cost_of(offer)
            if not self.funds.try_reserve(request.requester, cost):
                del self.requests[request.request_id]
                continue
            fills.append(self.open(entry, offer, cost))
            if entry[2] == request.ips:
                del self.requests[request.request_id]
        return fills

    def place_request(self, request: Request, now: float) -> tuple[list[tuple[str, str, str]], bool]:
        self.seq += 1
        entry: list[Any] = [self.seq, request, 0, set()]
        ranked = sorted(
            (request.cost_of(offer), seq, offer)
            for seq, offer in self.offers.values()
            if request.accepts(offer, now) and self.room(offer, request.dedicated)
        )
        fills: list[tuple[str, str, str]] = []
        for cost, _, offer in ranked:
            if offer.exit_id in entry[3] or not self.room(offer, request.dedicated):
                continue
            if not self.funds.try_reserve(request.requester, Amount(cost)):
                return fills, False
            fills.append(self.open(entry, offer, cost))
            if entry[2] == request.ips:
                return fills, False
        if request.rest:
            self.requests[request.request_id] = entry
        return fills, request.rest

    def cancel(self, order_id: str) -> None:
        if self.offers.pop(order_id, None) is None and self.requests.pop(order_id, None) is None:
            raise UnknownOrder(order_id)

    def end_deal(self, deal_id: str, now: float) -> list[tuple[str, str, str]]:
        _, exit_id, dedicated, requester, reserve = self.deals.pop(deal_id)
        self.funds.release(requester, Amount(reserve))
        counts = self.dedicated if dedicated else self.shared
        counts[exit_id] -= 1
        fills: list[tuple[str, str, str]] = []
        for _, offer in sorted(o for o in self.offers.values() if o[1].exit_id == exit_id):
            fills += self.serve(offer, now)
        return fills


# -- running a stream ------------------------------------------------------------------------------


@dataclass
class Runner:
    """Feeds operations to a matcher, resolving cancels and deal ends against what it has seen.

    A cancel picks one of the orders seen resting (offers, and requests that rested when placed;
    it misses if one of those has filled since), a deal end one of the open deals.
    """

    place_offer: Callable[[Offer, float], list[tuple[str, str, str]]]
    place_request: Callable[[Request, float], tuple[list[tuple[str, str, str]], bool]]
    cancel: Callable[[str], None]
    end_deal: Callable[[str, float], list[tuple[str, str, str]]]
    cancellable: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    fills: list[tuple[str, str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def note(self, fills: list[tuple[str, str, str]]) -> None:
        self.fills += fills
        self.active += [deal_id for deal_id, _, _ in fills]

    def run(self, op: tuple[str, Any], now: float) -> None:
        kind, arg = op
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "request":
            fills, rested = self.place_request(arg, now)
            self.note(fills)
            if rested:
                self.cancellable.append(arg.request_id)
        elif kind == "offer":
            self.cancellable.append(arg.offer_id)
            self.note(self.place_offer(arg, now))
        elif kind == "cancel" and self.cancellable:
            try:
                self.cancel(_swap_pop(self.cancellable, arg))
            except UnknownOrder:
                self.counts["cancel_missed"] = self.counts.get("cancel_missed", 0) + 1
        elif kind == "end" and self.active:
            self.note(self.end_deal(_swap_pop(self.active, arg), now))


def _swap_pop(items: list[str], n: int) -> str:
    """Remove and return a pseudo-random item (index ``n`` modulo the length) in O(1)."""
    i = n % len(items)
    item = items[i]
    items[i] = items[-1]
    items.pop()
    return item


def engine_runner(engine: Engine) -> Runner:
    def fills(result: MatchResult) -> list[tuple[str, str, str]]:
        return [(f.deal_id, f.request_id, f.offer_id) for f in result.fills]

    def rested(result: MatchResult) -> tuple[list[tuple[str, str, str]], bool]:
        return fills(result), result.rested

    return Runner(
        place_offer=lambda offer, now: fills(engine.place_offer(offer, now)),
        place_request=lambda request, now: rested(engine.place_request(request, now)),
        cancel=engine.cancel,
        end_deal=lambda deal_id, now: fills(engine.end_deal(deal_id, now)),
    )


def naive_runner(naive: NaiveMatcher) -> Runner:
    return Runner(naive.place_offer, naive.place_request, naive.cancel, naive.end_deal)


@dataclass
class Timing:
    orders: int
    wall_s: float
    cpu_s: float

    def figures(self) -> dict[str, float]:
        return {
            "orders": self.orders,
            "wall_s": round(self.wall_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "orders_per_s": round(self.orders / self.wall_s, 1) if self.wall_s else 0.0,
            "cpu_us_per_order": round(self.cpu_s / self.orders * 1e6, 2) if self.orders else 0.0,
        }


def timed(label: str, ops: list[tuple[str, Any]], step: Callable[[tuple[str, Any], float], None]) -> Timing:
    progress_every = max(len(ops) // 10, 1)
    wall, cpu = time.perf_counter(), time.process_time()
    for n, op in enumerate(ops, 1):
        step(op, float(n))
        if n % progress_every == 0:
            elapsed = time.perf_counter() - wall
            print(f"  {label}: {n:>7,} / {len(ops):,} orders, {n / elapsed:>10,.0f}/s", file=sys.stderr)
    return Timing(len(ops), time.perf_counter() - wall, time.process_time() - cpu)


def build_book(place: Callable[[Offer, float], object], offers: list[Offer]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    for offer in offers:
        place(offer, 0.0)
    return Timing(len(offers), time.perf_counter() - wall, time.process_time() - cpu)


# -- ending deals while many others are live ---------------------------------------------------------

PLENTY = 10**30  # every requester's ledger balance in the deal-end phase: no reserve is refused
DEAL_REQUESTERS = 2_000  # requesters of the live deals
RESTING_REQUESTERS = 1_000  # requesters of the resting requests
SAME_ROUTE = 0.3  # how often an exit's second deal is its first deal's requester's too
WAITING_FOR_ROOM = 0.1  # resting requests that bid enough and wait for room, not priced below the asks


class NoIO:
    """Stands in for PostgreSQL and Redis under the market's deal book: every statement is answered
    at once (each ledger balance as ``PLENTY``, no reseller markup) and counted, and the routes
    withdrawn are recorded, so the two deal books can be compared."""

    def __init__(self) -> None:
        self.statements = 0
        self.ledger_reads = 0  # funds refreshes that reached the ledger
        self.ledger_accounts = 0  # accounts they read
        self.withdrawn: list[tuple[str, ...]] = []  # (routes key, exit, deal, successor if any)

    def acquire(self) -> NoIO:  # asyncpg.Pool
        return self

    def transaction(self) -> NoIO:  # asyncpg.Connection
        return self

    async def __aenter__(self) -> NoIO:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, query: str, *args: object) -> None:
        self.statements += 1

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        self.statements += 1
        if "ledger_balances" not in query:
            return []  # reseller markups
        self.ledger_reads += 1
        self.ledger_accounts += len(args[0])
        return [{"account": account, "balance": str(PLENTY)} for account in args[0]]

    def register_script(self, script: str) -> Callable[..., Awaitable[None]]:  # redis.asyncio.Redis
        async def run(keys: list[str], args: list[str]) -> None:
            self.withdrawn.append((*keys, *args))

        return run


class LegacyDealBook(DealBook):
    """The end of a deal as the market did it before the route index (commit d901904), verbatim,
    for the baseline: a scan of every deal for the route's successor, and the funds of every
    resting request's requester read again."""

    async def end(self, deal: Deal, event: Event) -> MatchResult:
        await routing.withdraw(self._redis, deal.requester, deal.exit_id, deal.deal_id, self._successor(deal))
        async with self._pool.acquire() as conn, conn.transaction():
            await self.apply(deal.deal_id, event, conn)  # never cancelled here: no hold to void
        await self._funds.refresh(status.request.requester for status in self._engine.resting_requests())
        self._funds.expect_release(deal.requester, deal.reserve)
        return self._engine.end_deal(deal.deal_id, float(event.at))

    def _successor(self, deal: Deal) -> str | None:
        for other in self.deals.values():
            if (
                other.deal_id != deal.deal_id
                and other.state is State.ACTIVE
                and (other.requester, other.exit_id) == (deal.requester, deal.exit_id)
            ):
                return other.deal_id
        return None


@dataclass(frozen=True)
class DealWorld:
    """Live deals as ``store.live_deals`` rows (two shared deals fill each exit), the exits'
    offers and the requests resting beside them, all built before timing."""

    rows: list[dict[str, Any]]
    offers: list[Offer]
    requests: list[Request]
    ends: list[str]  # the deals to end, in order


def build_deal_world(live: int, resting: int, ends: int, seed: int) -> DealWorld:
    rng = random.Random(seed)
    offers = [
        dataclasses.replace(_offer(rng, n), sharing="shared", shared_capacity=2, min_duration_s=5)
        for n in range((live + 1) // 2)
    ]
    rows: list[dict[str, Any]] = []
    requester = ""
    for k in range(live):
        offer = offers[k // 2]
        if k % 2 == 0 or rng.random() >= SAME_ROUTE:
            requester = f"u{rng.randrange(DEAL_REQUESTERS)}"
        fill = Fill(
            deal_id=f"q{k}_{k + 1}",
            request_id=f"q{k}",
            offer_id=offer.offer_id,
            requester=requester,
            provider=offer.provider,
            exit_id=offer.exit_id,
            price_per_gb=offer.price_per_gb,
            price_per_hour=offer.price_per_hour,
            duration_s=DAY,
            traffic_bytes=GB,
            dedicated=False,
            reserve=Amount(offer.price_per_gb + offer.price_per_hour * 24),
            opened_at=0.0,
        )
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
            created_at=0,
            accepted=True,
        )
        deal, _ = apply(deal, Event(EventKind.READY, Actor.PROVIDER, 0))
        row = {name: getattr(fill, name) for name in ("deal_id", "request_id", "offer_id", "requester")}
        row |= {name: getattr(fill, name) for name in ("provider", "exit_id", "duration_s", "traffic_bytes")}
        row |= {"price_per_gb": str(fill.price_per_gb), "price_per_hour": str(fill.price_per_hour)}
        row |= {"reserve": str(fill.reserve), "dedicated": False, "spot": False, "created": 0.0}
        rows.append(row | {"record": orjson.dumps(store.deal_record(deal)).decode()})
    requests = []
    for n in range(resting):
        request = dataclasses.replace(
            _request(rng, live + n), requester=f"u{rng.randrange(RESTING_REQUESTERS)}", rest=True
        )
        if rng.random() >= WAITING_FOR_ROOM:  # below every ask: it rests for good
            low_gb, low_hour = rng.randint(10, 49) * CENTI, rng.randint(1, 4) * CENTI
            request = dataclasses.replace(
                request, max_price_per_gb=Amount(low_gb), max_price_per_hour=Amount(low_hour)
            )
        requests.append(request)
    return DealWorld(rows, offers, requests, rng.sample([row["deal_id"] for row in rows], min(ends, live)))


def deal_book(world: DealWorld, legacy: bool) -> tuple[DealBook, NoIO]:
    """A market's deal book over ``world`` as a restart builds it: live deals, then offers, then
    requests (every exit is full, so none trades)."""
    io = NoIO()
    db: Any = io  # for PostgreSQL and Redis alike
    funds = LedgerFunds(db)
    engine = Engine(funds)
    kind = LegacyDealBook if legacy else DealBook
    book = kind(db, db, db, engine, funds, MarketSettings(), clock=lambda: 1.0)
    for row in world.rows:
        book.restore(row)  # a dict reads as the asyncpg.Record does
    for offer in world.offers:
        engine.place_offer(offer, 0.0)
    for request in world.requests:
        if engine.place_request(request, 0.0).fills:
            raise AssertionError("the deal world's exits should all be full")
    return book, io


@dataclass
class DealEnds:
    live: int
    resting: int
    ends: int
    cpu_s: float
    wall_s: float
    io: NoIO
    results: list[tuple[tuple[Fill, ...], tuple[str, ...]]]
    tick_cpu_s: float

    def figures(self) -> dict[str, Any]:
        return {
            "live_deals": self.live,
            "resting_requests": self.resting,
            "ends": self.ends,
            "cpu_us_per_end": round(self.cpu_s / self.ends * 1e6, 1),
            "wall_us_per_end": round(self.wall_s / self.ends * 1e6, 1),
            "ledger_reads_per_end": round(self.io.ledger_reads / self.ends, 3),
            "ledger_accounts_per_end": round(self.io.ledger_accounts / self.ends, 1),
            "deals_opened_in_freed_room": sum(len(fills) for fills, _ in self.results),
            "tick_pass_cpu_ms": round(self.tick_cpu_s * 1e3, 2),
        }


async def end_deals(world: DealWorld, legacy: bool) -> DealEnds:
    """End ``world.ends`` one by one as the market does (a gateway's ``stopped``), then time one
    tick's pass over the deals left (none due: no I/O)."""
    book, io = deal_book(world, legacy)
    gc.collect()
    results = []
    wall, cpu = time.perf_counter(), time.process_time()
    for deal_id in world.ends:
        freed = await book.end(book.deals[deal_id], Event(EventKind.STOPPED, Actor.GATEWAY, 1))
        results.append((freed.fills, freed.unfunded))
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
    live = {offer.exit_id for offer in world.offers}
    tick = time.process_time()
    for deal in list(book.deals.values()):
        if await book.advance(deal, 2, live, 0, float("inf")) is not None:
            raise AssertionError("no deal is due in the timed tick")
    tick_cpu_s = time.process_time() - tick
    return DealEnds(
        len(world.rows), len(world.requests), len(world.ends), cpu_s, wall_s, io, results, tick_cpu_s
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offers", type=int, default=100_000, help="resting offers (default: %(default)s)")
    parser.add_argument("--orders", type=int, default=50_000, help="orders to place (default: %(default)s)")
    parser.add_argument(
        "--baseline-orders",
        type=int,
        default=1_000,
        help="orders of the same stream replayed by the naive matcher, 0 to skip (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the book is built, as a long-running service may after loading its"
        " state: full collections then skip the 100,000 offers (default: plain CPython)",
    )
    parser.add_argument(
        "--live-deals",
        default="1000,10000",
        help="live deals while deals end, comma-separated sizes (default: %(default)s)",
    )
    parser.add_argument(
        "--resting-requests",
        type=int,
        default=2_000,
        help="requests resting while deals end (default: %(default)s)",
    )
    parser.add_argument(
        "--deal-ends", type=int, default=1_000, help="deals ended per size, 0 to skip (default: %(default)s)"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    args = parser.parse_args(argv)
    agree = True
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seed": args.seed,
        "gc_freeze": args.gc_freeze,
    }
    if args.orders:
        agree = orders_phase(args, report)
    if args.deal_ends:
        agree = deal_ends_phase(args, report) and agree
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
        print(f"figures written to {args.json}")
    return 0 if agree else 1


def deal_ends_phase(args: argparse.Namespace, report: dict[str, Any]) -> bool:
    """Deals ended with many live, before and after the route index; True if both did the same."""
    report["deal_ends"] = phase = []
    agree = True
    for live in (int(size) for size in args.live_deals.split(",")):
        print(f"building {live:,} live deals, {args.resting_requests:,} resting requests", file=sys.stderr)
        world = build_deal_world(live, args.resting_requests, args.deal_ends, args.seed)
        before = asyncio.run(end_deals(world, legacy=True))
        after = asyncio.run(end_deals(world, legacy=False))
        same = before.results == after.results and before.io.withdrawn == after.io.withdrawn
        agree = agree and same
        b, a = before.figures(), after.figures()
        phase.append({"before": b, "after": a, "same_routes_and_deals": same})
        print(
            f"\ndeal ends, {live:,} live deals, {args.resting_requests:,} resting requests"
            f" (PostgreSQL and Redis stood in for): {b['ends']:,} ends"
        )
        for label, f in (("before", b), ("after", a)):
            print(
                f"  {label:<6}  {f['cpu_us_per_end']:>9,.1f} us CPU per end"
                f" ({f['wall_us_per_end']:,.1f} wall);"
                f" ledger read {f['ledger_reads_per_end']:.2f}x per end, {f['ledger_accounts_per_end']:,.1f}"
                f" accounts; {f['deals_opened_in_freed_room']} deals opened in freed room;"
                f" one tick's pass over the live deals {f['tick_pass_cpu_ms']:.2f} ms CPU"
            )
        speedup = b["cpu_us_per_end"] / a["cpu_us_per_end"] if a["cpu_us_per_end"] else 0.0
        print(f"  {speedup:.1f}x less CPU per end; same routes withdrawn and deals opened: {same}")
    return agree


def orders_phase(args: argparse.Namespace, report: dict[str, Any]) -> bool:
    """The order stream on the engine and, for a slice, on the naive matcher; True if they agree."""

    print(f"building {args.offers:,} offers, {args.orders:,} orders (seed {args.seed})", file=sys.stderr)
    stream = build_stream(args.offers, args.orders, args.seed)

    engine = Engine(InMemoryFunds(stream.balances))
    book = build_book(engine.place_offer, stream.book)
    print(f"  engine book: {book.cpu_s / book.orders * 1e6:.1f} us CPU per offer", file=sys.stderr)
    if args.gc_freeze:
        gc.freeze()
    runner = engine_runner(engine)
    runner.cancellable = [offer.offer_id for offer in stream.book]
    run = timed("engine", stream.ops, runner.run)
    report["offers"] = args.offers
    report["engine_book"] = book.figures()
    report["engine"] = run.figures() | {
        "mix": runner.counts,
        "fills": len(runner.fills),
        "open_deals_at_end": len(engine.active_deals()),
        "resting_requests_at_end": len(engine.resting_requests()),
    }

    slice_ = stream.ops[: args.baseline_orders]
    if slice_:
        naive = NaiveMatcher(InMemoryFunds(stream.balances))
        build_book(naive.place_offer, stream.book)
        if args.gc_freeze:
            gc.freeze()
        naive_run = naive_runner(naive)
        naive_run.cancellable = [offer.offer_id for offer in stream.book]
        base = timed("naive", slice_, naive_run.run)
        # The engine's fills for the same slice: replay it on a fresh engine (same book, same ops).
        check = Engine(InMemoryFunds(stream.balances))
        build_book(check.place_offer, stream.book)
        if args.gc_freeze:
            gc.freeze()
        check_run = engine_runner(check)
        check_run.cancellable = [offer.offer_id for offer in stream.book]
        engine_slice = timed("engine (slice)", slice_, check_run.run)
        report["baseline"] = base.figures() | {"fills": len(naive_run.fills)}
        report["engine_on_baseline_slice"] = engine_slice.figures()
        report["speedup_cpu"] = round(base.cpu_s / engine_slice.cpu_s, 1) if engine_slice.cpu_s else None
        report["fills_agree"] = naive_run.fills == check_run.fills

    e = report["engine"]
    print(f"\nbook: {args.offers:,} resting offers, {len(COUNTRIES)} countries x {len(TYPES)} types")
    print(
        f"engine: {e['orders']:,} orders in {e['wall_s']:.2f} s wall -> {e['orders_per_s']:,.0f} orders/s,"
        f" {e['cpu_us_per_order']:.1f} us CPU/order; {e['fills']:,} deals opened, mix {e['mix']}"
    )
    if "baseline" in report:
        b, s = report["baseline"], report["engine_on_baseline_slice"]
        print(
            f"naive:  {b['orders']:,} orders -> {b['orders_per_s']:,.1f} orders/s,"
            f" {b['cpu_us_per_order']:,.0f} us CPU/order"
        )
        print(
            f"engine on the same {s['orders']:,} orders: {s['cpu_us_per_order']:.1f} us CPU/order;"
            f" speed-up {report['speedup_cpu']}x; same deals as the naive matcher: {report['fills_agree']}"
        )
    return bool(report.get("fills_agree", True))


if __name__ == "__main__":
    sys.exit(main())
