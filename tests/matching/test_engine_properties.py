"""Random operation sequences against the engine, checked against brute force after every step.

The state machine keeps its own record of every order and deal and checks, after each step: no
overfill and distinct exits per request, dedicated exclusivity and shared capacity at every
opening, deal prices equal to the offer's and within the request's max prices, no crossed book,
funds reserved equal to the reserves of open deals, and — for placed orders — the exact fills a
brute-force price-time matcher expects. At the end the same operations are replayed on a fresh
engine and must give identical results.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from billing.ledger import Amount
from matching.book import BEFORE_ALL, RequestKey, RequestQueue
from matching.engine import Engine, Fill, InMemoryFunds, MatchResult, RequestStatus
from matching.errors import MatchingError
from matching.orders import ExitAttributes, Offer, Request, RequestFilters, cost_estimate

UNIT = 10**12
GB = 10**9
BALANCES = {"alice": 10**9 * UNIT, "bob": 10**9 * UNIT, "poor": 6 * UNIT}
EXITS = [f"e{n}" for n in range(8)]
PROVIDER_OF = {exit_id: f"p{n % 2}" for n, exit_id in enumerate(EXITS)}
COUNTRIES = ["fr", "de"]
TYPES = ["residential", "mobile"]

Op = tuple[Any, ...]

prices = st.sampled_from([0, 1, 2, 3]).map(lambda n: Amount(n * UNIT))
max_prices = st.sampled_from([0, 1, 2, 3, 4, 4, 4]).map(lambda n: Amount(n * UNIT))
ALL = frozenset({"http", "https", "socks5"})
request_terms = st.fixed_dictionaries(
    {
        "requester": st.sampled_from(list(BALANCES)),
        "country": st.sampled_from([None, None, *COUNTRIES]),
        "type_": st.sampled_from([None, None, *TYPES]),
        "protocol": st.sampled_from(["http", "http", "https", "socks5"]),
        "ips": st.integers(1, 4),
        "duration": st.sampled_from([5, 60, 60, 3600]),
        "traffic": st.sampled_from([0, GB // 3, GB, 5 * GB]),
        "max_gb": max_prices,
        "max_hour": max_prices,
        "dedicated": st.booleans(),
        "rest": st.booleans(),
        "lifetime": st.none() | st.integers(1, 30),
    }
)
offer_terms = st.fixed_dictionaries(
    {
        "exit_index": st.integers(0, len(EXITS) - 1),
        "gb": prices,
        "hour": prices,
        "durations": st.tuples(st.sampled_from([5, 60]), st.sampled_from([60, 3600, 30 * 86400])),
        "protocols": st.sampled_from([ALL, ALL, frozenset({"http", "https"}), frozenset({"socks5"})]),
        "sharing": st.sampled_from(["dedicated", "shared", "both"]),
        "capacity": st.integers(1, 4),
        "lifetime": st.none() | st.integers(1, 30),
    }
)


def run(engine: Engine, op: Op) -> object:
    """Apply one recorded operation; a refused one yields ("error", class, field)."""
    name, *args = op
    try:
        if name == "offer":
            return engine.place_offer(args[0], args[1])
        if name == "request":
            return engine.place_request(args[0], args[1])
        if name == "cancel":
            engine.cancel(args[0])
            return None
        if name == "amend_offer":
            return engine.amend_offer(args[0], price_per_gb=args[1], price_per_hour=args[2], now=args[3])
        if name == "amend_request":
            return engine.amend_request(
                args[0], ips=args[1], max_price_per_gb=args[2], max_price_per_hour=args[3], now=args[4]
            )
        if name == "end":
            return engine.end_deal(args[0], args[1])
        if name == "spot":
            return engine.spot(*args)
        if name == "expire":
            return engine.expire(args[0])
    except MatchingError as error:
        return ("error", type(error).__name__, getattr(error, "field", None))
    raise AssertionError(f"unknown op {name}")


def request_accepts(request: Request, offer: Offer, now: float, fills: dict[str, list[Fill]]) -> bool:
    """``request`` would take a deal on ``offer`` at ``now`` if its exit had room: it accepts the
    offer and holds no deal (open or ended) on that exit yet."""
    held = {fill.exit_id for fill in fills.get(request.request_id, [])}
    return offer.exit_id not in held and request.accepts(offer, now)


def has_room(offer: Offer, dedicated: bool, deals: list[Fill]) -> bool:
    on_exit = [d for d in deals if d.exit_id == offer.exit_id]
    if any(d.dedicated for d in on_exit):
        return False
    if dedicated:
        return offer.sharing != "shared" and not on_exit
    return offer.sharing != "dedicated" and len(on_exit) < offer.shared_capacity


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.funds = InMemoryFunds(BALANCES)
        self.engine = Engine(self.funds)
        self.now = 0.0
        self.n = 0
        self.log: list[tuple[Op, object]] = []
        self.offers: dict[str, Offer] = {}  # latest version of every offer ever placed
        self.requests: dict[str, Request] = {}  # latest version of every request ever placed
        self.fills: dict[str, list[Fill]] = {}  # by request id
        self.active: dict[str, Fill] = {}

    # -- bookkeeping ---------------------------------------------------------------------------

    def apply(self, op: Op) -> object:
        result = run(self.engine, op)
        self.log.append((op, result))
        return result

    def record(self, fill: Fill, max_gb: int, max_hour: int, ips: int) -> None:
        """Check one new fill against the model at the moment it opened, then add it."""
        offer = self.offers[fill.offer_id]
        assert (fill.price_per_gb, fill.price_per_hour) == (offer.price_per_gb, offer.price_per_hour)
        assert fill.price_per_gb <= max_gb and fill.price_per_hour <= max_hour
        assert fill.reserve == cost_estimate(
            fill.price_per_gb, fill.price_per_hour, fill.traffic_bytes, fill.duration_s
        )
        assert has_room(offer, fill.dedicated, list(self.active.values()))
        previous = self.fills.setdefault(fill.request_id, [])
        assert fill.exit_id not in {f.exit_id for f in previous}
        assert len(previous) < ips
        previous.append(fill)
        self.active[fill.deal_id] = fill

    def record_result(self, result: object) -> None:
        if isinstance(result, MatchResult):
            for fill in result.fills:
                request = self.requests[fill.request_id]
                self.record(fill, request.max_price_per_gb, request.max_price_per_hour, request.ips)

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    # -- brute-force expectations --------------------------------------------------------------

    def expected_request_fills(self, request: Request) -> tuple[list[str], bool]:
        """Offer ids the request should fill, and whether it should stop for funds."""
        deals = list(self.active.values())
        available = BALANCES.get(request.requester, 0) - self.funds.reserved(request.requester)
        chosen: list[str] = []
        used: set[str] = set()
        while len(chosen) < request.ips:
            candidates = [
                (request.cost_of(offer), position, offer)
                for position, offer in enumerate(self.engine.resting_offers())
                if request.accepts(offer, self.now)
                and offer.exit_id not in used
                and has_room(offer, request.dedicated, deals)
            ]
            if not candidates:
                break
            cost, _, offer = min(candidates, key=lambda c: (c[0], c[1]))
            if cost > available:
                return chosen, True
            available -= cost
            chosen.append(offer.offer_id)
            used.add(offer.exit_id)
            deals.append(_stub(offer, request))
        return chosen, False

    def expected_offer_fills(self, offer: Offer) -> tuple[list[str], list[str]]:
        """Request ids the offer should fill, and those it should drop for funds."""
        deals = list(self.active.values())
        waiting = sorted(self.engine.resting_requests(), key=lambda s: (-s.request.willingness, s.seq))
        spent: Counter[str] = Counter()
        chosen: list[str] = []
        dropped: list[str] = []
        for status in waiting:
            request = status.request
            held = {f.exit_id for f in self.fills.get(request.request_id, [])}
            if (
                offer.exit_id in held
                or not request.accepts(offer, self.now)
                or not has_room(offer, request.dedicated, deals)
            ):
                continue
            cost = request.cost_of(offer)
            available = BALANCES.get(request.requester, 0) - self.funds.reserved(request.requester)
            if cost > available - spent[request.requester]:
                dropped.append(request.request_id)
                continue
            spent[request.requester] += cost
            chosen.append(request.request_id)
            deals.append(_stub(offer, request))
        return chosen, dropped

    # -- rules ---------------------------------------------------------------------------------

    @initialize(terms=st.lists(offer_terms, min_size=2, max_size=8))
    def seed_offers(self, terms: list[dict[str, Any]]) -> None:
        for kwargs in terms:
            self.place_offer(**kwargs)

    @rule(kwargs=offer_terms)
    def add_offer(self, kwargs: dict[str, Any]) -> None:
        self.place_offer(**kwargs)

    def place_offer(
        self,
        exit_index: int,
        gb: Amount,
        hour: Amount,
        durations: tuple[int, int],
        protocols: frozenset[str],
        sharing: str,
        capacity: int,
        lifetime: int | None,
    ) -> None:
        exit_id = EXITS[exit_index]
        offer = Offer(
            offer_id=self.next_id("o"),
            provider=PROVIDER_OF[exit_id],
            exit_id=exit_id,
            # An exit's attributes do not change from one offer to the next.
            attributes=ExitAttributes(country=COUNTRIES[exit_index % 2], type=TYPES[exit_index // 4]),
            price_per_gb=gb if gb or hour else Amount(UNIT),
            price_per_hour=hour,
            min_duration_s=durations[0],
            max_duration_s=durations[1],
            protocols=protocols,
            sharing=sharing,
            shared_capacity=capacity,
            expires_at=None if lifetime is None else self.now + lifetime,
        )
        expected, dropped = self.expected_offer_fills(offer)
        self.offers[offer.offer_id] = offer
        result = self.apply(("offer", offer, self.now))
        assert isinstance(result, MatchResult) and result.rested
        assert [f.request_id for f in result.fills] == expected
        assert list(result.unfunded) == dropped
        self.record_result(result)

    @rule(batch=st.lists(request_terms, min_size=1, max_size=3))
    def add_requests(self, batch: list[dict[str, Any]]) -> None:
        for kwargs in batch:
            self.place_request(**kwargs)

    def place_request(
        self,
        requester: str,
        country: str | None,
        type_: str | None,
        protocol: str,
        ips: int,
        duration: int,
        traffic: int,
        max_gb: Amount,
        max_hour: Amount,
        dedicated: bool,
        rest: bool,
        lifetime: int | None,
    ) -> None:
        request = Request(
            request_id=self.next_id("r"),
            requester=requester,
            filters=RequestFilters(country=country, type=type_, protocol=protocol),
            ips=ips,
            duration_s=duration,
            traffic_bytes=traffic,
            max_price_per_gb=max_gb,
            max_price_per_hour=max_hour if max_gb or max_hour else Amount(UNIT),
            dedicated=dedicated,
            rest=rest,
            expires_at=None if lifetime is None else self.now + lifetime,
        )
        expected, stopped = self.expected_request_fills(request)
        self.requests[request.request_id] = request
        result = self.apply(("request", request, self.now))
        assert isinstance(result, MatchResult)
        assert [f.offer_id for f in result.fills] == expected
        assert result.unfunded == ((request.request_id,) if stopped else ())
        assert result.rested == (rest and len(expected) < ips and not stopped)
        self.record_result(result)

    @precondition(lambda self: self.engine.resting_offers() or self.engine.resting_requests())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ids = [o.offer_id for o in self.engine.resting_offers()]
        ids += [s.request.request_id for s in self.engine.resting_requests()]
        assert self.apply(("cancel", data.draw(st.sampled_from(ids)))) is None

    @precondition(lambda self: self.engine.resting_offers())
    @rule(data=st.data(), gb=st.none() | prices, hour=st.none() | prices)
    def amend_offer(self, data: st.DataObject, gb: Amount | None, hour: Amount | None) -> None:
        offer = data.draw(st.sampled_from(self.engine.resting_offers()))
        result = self.apply(("amend_offer", offer.offer_id, gb, hour, self.now))
        if isinstance(result, MatchResult):
            self.offers[offer.offer_id] = next(
                o for o in self.engine.resting_offers() if o.offer_id == offer.offer_id
            )
            self.record_result(result)
        else:
            assert result == ("error", "InvalidOrder", "price_per_gb")

    @precondition(lambda self: self.engine.resting_requests())
    @rule(data=st.data(), ips=st.none() | st.integers(1, 5), gb=st.none() | prices, hour=st.none() | prices)
    def amend_request(
        self, data: st.DataObject, ips: int | None, gb: Amount | None, hour: Amount | None
    ) -> None:
        status: RequestStatus = data.draw(st.sampled_from(self.engine.resting_requests()))
        request_id = status.request.request_id
        result = self.apply(("amend_request", request_id, ips, gb, hour, self.now))
        if isinstance(result, MatchResult):
            current = {s.request.request_id: s.request for s in self.engine.resting_requests()}
            if request_id in current:
                self.requests[request_id] = current[request_id]
            else:  # filled or dropped by the amendment: rebuild what it became
                old = self.requests[request_id]
                self.requests[request_id] = Request(
                    request_id=request_id,
                    requester=old.requester,
                    filters=old.filters,
                    ips=old.ips if ips is None else ips,
                    duration_s=old.duration_s,
                    traffic_bytes=old.traffic_bytes,
                    max_price_per_gb=old.max_price_per_gb if gb is None else gb,
                    max_price_per_hour=old.max_price_per_hour if hour is None else hour,
                    dedicated=old.dedicated,
                    rest=old.rest,
                    expires_at=old.expires_at,
                )
            self.record_result(result)
        else:
            assert isinstance(result, tuple) and result[1] == "InvalidOrder"

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def end_deal(self, data: st.DataObject) -> None:
        deal_id = data.draw(st.sampled_from(sorted(self.active)))
        # Who the end may reserve for, by the engine and by brute force: every request that
        # accepts an offer on the exit and does not hold it yet, room aside.
        exit_id = self.active[deal_id].exit_id
        on_exit = [offer for offer in self.engine.resting_offers() if offer.exit_id == exit_id]
        expected = {
            status.request.requester
            for status in self.engine.resting_requests()
            for offer in on_exit
            if request_accepts(status.request, offer, self.now, self.fills)
        }
        requesters = self.engine.end_deal_requesters(deal_id, self.now)
        assert requesters == expected
        result = self.apply(("end", deal_id, self.now))
        del self.active[deal_id]
        assert isinstance(result, MatchResult)
        # Each reserve the end asked for opened a deal or dropped a request: all among them.
        asked = {fill.requester for fill in result.fills}
        asked |= {self.requests[request_id].requester for request_id in result.unfunded}
        assert asked <= requesters
        self.record_result(result)

    @rule(
        requester=st.sampled_from(list(BALANCES)),
        country=st.none() | st.sampled_from(COUNTRIES),
        max_gb=prices,
        max_hour=prices,
        traffic=st.sampled_from([0, GB]),
    )
    def spot(
        self, requester: str, country: str | None, max_gb: Amount, max_hour: Amount, traffic: int
    ) -> None:
        max_hour = max_hour if max_gb or max_hour else Amount(UNIT)
        filters = RequestFilters(country=country)
        result = self.apply(("spot", requester, filters, max_gb, max_hour, 60, traffic, self.now))
        if isinstance(result, Fill):
            assert not result.dedicated and result.request_id == result.deal_id
            self.record(result, max_gb, max_hour, 1)
        else:
            assert result is None or (isinstance(result, tuple) and result[1] == "InsufficientFunds")

    @rule(seconds=st.sampled_from([0.5, 3.0, 10.0]), expire=st.booleans())
    def advance(self, seconds: float, expire: bool) -> None:
        self.now += seconds
        if expire:
            gone = self.apply(("expire", self.now))
            assert isinstance(gone, list)
            for order_id in gone:
                order = self.offers.get(order_id) or self.requests[order_id]
                assert order.expires_at is not None and order.expires_at <= self.now

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def deals_match_the_model(self) -> None:
        assert {d.deal_id: d for d in self.engine.active_deals()} == self.active

    @invariant()
    def capacity_holds(self) -> None:
        per_exit: dict[str, list[Fill]] = {}
        for deal in self.active.values():
            per_exit.setdefault(deal.exit_id, []).append(deal)
        for deals in per_exit.values():
            if any(d.dedicated for d in deals):
                assert len(deals) == 1
            else:
                assert len(deals) <= max(self.offers[d.offer_id].shared_capacity for d in deals)

    @invariant()
    def no_overfill(self) -> None:
        for request_id, fills in self.fills.items():
            assert len({f.exit_id for f in fills}) == len(fills)
            if request_id in self.requests:
                assert len(fills) <= self.requests[request_id].ips
        for status in self.engine.resting_requests():
            assert status.filled == len(self.fills.get(status.request.request_id, []))
            assert status.remaining > 0

    @invariant()
    def book_is_not_crossed(self) -> None:
        deals = list(self.active.values())
        offers = self.engine.resting_offers()
        for status in self.engine.resting_requests():
            request = status.request
            held = {f.exit_id for f in self.fills.get(request.request_id, [])}
            for offer in offers:
                assert not (
                    request.accepts(offer, self.now)
                    and offer.exit_id not in held
                    and has_room(offer, request.dedicated, deals)
                ), f"{request.request_id} crosses {offer.offer_id}"

    @invariant()
    def reserves_are_held_for_open_deals_only(self) -> None:
        assert self.funds.total_reserved() == sum(d.reserve for d in self.active.values())
        for requester, balance in BALANCES.items():
            assert self.funds.reserved(requester) <= balance

    def teardown(self) -> None:
        replay = Engine(InMemoryFunds(BALANCES))
        for op, result in self.log:
            assert run(replay, op) == result, op


def _stub(offer: Offer, request: Request) -> Fill:
    """A stand-in deal for brute-force room counting."""
    return Fill(
        deal_id="stub",
        request_id=request.request_id,
        offer_id=offer.offer_id,
        requester=request.requester,
        provider=offer.provider,
        exit_id=offer.exit_id,
        price_per_gb=offer.price_per_gb,
        price_per_hour=offer.price_per_hour,
        duration_s=request.duration_s,
        traffic_bytes=request.traffic_bytes,
        dedicated=request.dedicated,
        reserve=request.cost_of(offer),
        opened_at=0.0,
    )


EngineMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMachine = EngineMachine.TestCase


@settings(max_examples=300, deadline=None)
@given(
    levels=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=60),
    traffic=st.integers(0, 20 * GB),
    duration=st.integers(5, 40 * 3600),
    scale=st.sampled_from([1, 997, 10**15]),
    max_prices=st.tuples(st.integers(0, 8), st.integers(0, 8)).filter(any),
)
def test_requests_fill_in_exact_cost_then_arrival_order(
    levels: list[tuple[int, int]], traffic: int, duration: int, scale: int, max_prices: tuple[int, int]
) -> None:
    """Many offers on few price levels (lots of exact and rounding ties), both bucket kinds."""
    engine = Engine(InMemoryFunds({"alice": 10**40}))
    offers = []
    for n, (gb, hour) in enumerate(levels):
        offer = Offer(
            offer_id=f"o{n}",
            provider="p",
            exit_id=f"e{n}",
            attributes=ExitAttributes(country=COUNTRIES[n % 2], type=TYPES[n % 3 % 2]),
            price_per_gb=Amount((gb or (0 if hour else 1)) * scale),
            price_per_hour=Amount(hour * scale),
        )
        engine.place_offer(offer, 0.0)
        offers.append(offer)
    for request_id, country in (("all", None), ("fr", "fr")):
        request = Request(
            request_id=request_id,
            requester="alice",
            filters=RequestFilters(country=country),
            ips=len(offers),
            duration_s=duration,
            traffic_bytes=traffic,
            max_price_per_gb=Amount(max_prices[0] * scale),
            max_price_per_hour=Amount(max_prices[1] * scale),
            rest=False,
            dedicated=True,
        )
        ranked = sorted(
            (request.cost_of(o), n, o.offer_id) for n, o in enumerate(offers) if request.accepts(o, 0.0)
        )
        fills = engine.place_request(request, 1.0).fills
        assert [f.offer_id for f in fills] == [offer_id for _, _, offer_id in ranked]
        for fill in fills:
            engine.end_deal(fill.deal_id, 2.0)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "add", "add", "remove", "first"]), st.integers(0, 10**6)),
        min_size=50,
        max_size=400,
    ),
    preload=st.integers(0, 200),
)
def test_request_queue_scans_like_a_sorted_list(ops: list[tuple[str, int]], preload: int) -> None:
    """Blocks split, empty and get skipped, yet ``first`` answers as a scan of a sorted list would."""
    queue = RequestQueue()
    model: list[RequestKey] = []
    for n, (op, x) in enumerate([("add", n * 7919) for n in range(preload)] + ops):
        if op == "add":
            key: RequestKey = (-(x % 50), n, x % 7, x % 5)
            queue.add(key)
            model.append(key)
            model.sort()
        elif op == "remove" and model:
            key = model.pop(x % len(model))
            queue.remove(key)
        elif op == "first":
            after = model[x % len(model)] if model and x % 3 else BEFORE_ALL
            gb, hour, odd = x % 7, x % 5, x % 2

            def test(seq: int, odd: int = odd) -> bool:
                return seq % 2 == odd

            passed = [k for k in model if k > after]
            expected = next((k for k in passed if k[2] >= gb and k[3] >= hour and test(k[1])), None)
            found, cursor = queue.first(after, gb, hour, test)
            assert found == expected
            # The cursor may jump over skipped keys, never over the one found.
            assert cursor >= after and (found is None or cursor < found)
            if found is None and passed:
                assert cursor == passed[-1]


@settings(max_examples=40, deadline=None)
@given(
    bids=st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 8), st.sampled_from([0, GB, 3 * GB]), st.booleans()),
        min_size=1,
        max_size=150,
    ),
    ask=st.tuples(st.integers(0, 8), st.integers(1, 8)),
    capacity=st.integers(1, 40),
)
def test_arriving_offer_serves_many_resting_requests_in_priority(
    bids: list[tuple[int, int, int, bool]], ask: tuple[int, int], capacity: int
) -> None:
    engine = Engine(InMemoryFunds({"alice": 10**40}))
    requests = []
    for n, (max_gb, max_hour, traffic, in_fr) in enumerate(bids):
        request = Request(
            request_id=f"r{n}",
            requester="alice",
            filters=RequestFilters(country="fr" if in_fr else None),
            ips=1,
            duration_s=3600,
            traffic_bytes=traffic,
            max_price_per_gb=Amount(max_gb * UNIT),
            max_price_per_hour=Amount((max_hour or (0 if max_gb else 1)) * UNIT),
        )
        engine.place_request(request, 0.0)
        requests.append(request)
    offer = Offer(
        offer_id="o",
        provider="p",
        exit_id="e",
        attributes=ExitAttributes(country="fr", type="mobile"),
        price_per_gb=Amount(ask[0] * UNIT),
        price_per_hour=Amount(ask[1] * UNIT),
        sharing="shared",
        shared_capacity=capacity,
    )
    ranked = sorted(
        (-r.willingness, n, r.request_id) for n, r in enumerate(requests) if r.accepts(offer, 1.0)
    )
    result = engine.place_offer(offer, 1.0)
    assert [f.request_id for f in result.fills] == [request_id for _, _, request_id in ranked[:capacity]]
