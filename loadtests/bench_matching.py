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

    .venv/bin/python loadtests/bench_matching.py                  # about 30 s on one core
    .venv/bin/python loadtests/bench_matching.py --orders 10000 --baseline-orders 300
    .venv/bin/python loadtests/bench_matching.py --json /tmp/matching.json

Figures: orders/s (wall clock, ``time.perf_counter``) and CPU us per order (``time.process_time``,
which a busy neighbour on a shared machine does not inflate).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from billing.ledger import Amount
from matching.engine import Engine, InMemoryFunds, MatchResult
from matching.errors import UnknownOrder
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
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    args = parser.parse_args(argv)

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
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seed": args.seed,
        "gc_freeze": args.gc_freeze,
        "offers": args.offers,
        "engine_book": book.figures(),
        "engine": run.figures()
        | {
            "mix": runner.counts,
            "fills": len(runner.fills),
            "open_deals_at_end": len(engine.active_deals()),
            "resting_requests_at_end": len(engine.resting_requests()),
        },
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
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
        print(f"figures written to {args.json}")
    return 0 if report.get("fills_agree", True) else 1


if __name__ == "__main__":
    sys.exit(main())
