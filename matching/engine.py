"""The matching engine: pairs requests with offers in price-time priority and opens deals.

Pure and deterministic: no I/O, no clock, no randomness. Every call that can trade takes ``now``;
deal ids are ``f"{request_id}_{n}"`` with ``n`` the engine's deal counter, so the same calls on a
fresh engine give the same results. Money goes through a :class:`Funds` hook: the engine reserves
a deal's cost estimate before opening it and releases it when the deal ends.

The invariant every public call keeps: **no crossed book**. No resting request is compatible
with a resting offer whose exit has room for it. Each call re-establishes it where it could break:

* ``place_request`` (and a re-priced ``amend_request``) fills until nothing compatible is left
  before the remainder rests;
* ``place_offer`` (and a re-priced ``amend_offer``) serves every compatible resting request the
  exit has room for before returning;
* ``end_deal`` frees room on an exit and serves resting requests with it at once (there is no
  separate ``rematch``: the book is never left crossed between two calls);
* cancelling, expiring and time passing only remove trading possibilities.

A request whose reserve is refused stops filling and leaves the book (it is never rested), and
its id is reported in :attr:`MatchResult.unfunded`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from billing.ledger import MAX_AMOUNT, Amount
from matching.book import (
    BEFORE_ALL,
    DEDICATED,
    SHARED,
    Book,
    Level,
    RequestKey,
    RestingOffer,
    RestingRequest,
)
from matching.errors import (
    DuplicateDeal,
    DuplicateOrder,
    InsufficientFunds,
    InvalidOrder,
    UnknownDeal,
    UnknownOrder,
)
from matching.orders import Offer, Request, RequestFilters, deal_id_for, is_expired


class Funds(Protocol):
    """Where reserves are held. The PostgreSQL ledger implements it at the edge."""

    def try_reserve(self, requester: str, amount: Amount) -> bool:
        """Lock ``amount`` of ``requester``'s available balance; False (and no change) if short."""
        ...

    def release(self, requester: str, amount: Amount) -> None:
        """Unlock ``amount`` previously reserved for ``requester``."""
        ...


class InMemoryFunds:
    """A :class:`Funds` over a dict of balances, for tests and benchmarks."""

    def __init__(self, balances: dict[str, int]) -> None:
        self._balances = dict(balances)
        self._reserved: dict[str, int] = {}

    def try_reserve(self, requester: str, amount: Amount) -> bool:
        held = self._reserved.get(requester, 0)
        if self._balances.get(requester, 0) - held < amount:
            return False
        self._reserved[requester] = held + amount
        return True

    def release(self, requester: str, amount: Amount) -> None:
        held = self._reserved.get(requester, 0)
        if amount > held:
            # Releasing more than was reserved is a bug in the caller, not a requester's mistake.
            raise ValueError(f"release of {amount} exceeds the {held} reserved for {requester}")
        self._reserved[requester] = held - amount

    def reserved(self, requester: str) -> int:
        """Base units currently reserved for ``requester``."""
        return self._reserved.get(requester, 0)

    def total_reserved(self) -> int:
        """Base units currently reserved, all requesters together."""
        return sum(self._reserved.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill:
    """A deal opened by the engine: one request's use of one exit, at the offer's prices.

    ``reserve`` is the cost estimate at those prices for the request's duration and traffic; it
    is held by :class:`Funds` until :meth:`Engine.end_deal`. Spot deals carry their own
    ``deal_id`` as ``request_id``.
    """

    deal_id: str
    request_id: str
    offer_id: str
    requester: str
    provider: str
    exit_id: str
    price_per_gb: Amount
    price_per_hour: Amount
    duration_s: int
    traffic_bytes: int
    dedicated: bool
    reserve: Amount
    opened_at: float


@dataclass(frozen=True, slots=True)
class MatchResult:
    """What one call did: deals opened (in order), and whether the order it names rests.

    ``rested`` is True when the placed or amended order is on the book after the call (always for
    an offer; for a request, when part of it is still wanted and it may rest). ``unfunded`` lists
    requests dropped because their reserve was refused: the placed request itself, or resting
    requests an offer or a freed exit tried to fill.
    """

    fills: tuple[Fill, ...] = ()
    rested: bool = False
    unfunded: tuple[str, ...] = ()

    @property
    def stopped_for_funds(self) -> bool:
        """True if some request stopped filling because its reserve was refused."""
        return bool(self.unfunded)


# The most offers Engine.unmatched reads to say why a spot request found none: a bound on the
# work each failed request does under the market's lock, whatever the book's size.
UNMATCHED_SCAN = 2_000


class Unmatched(StrEnum):
    """Why a request found no offer to open a deal on, funds aside (see :meth:`Engine.unmatched`)."""

    NO_OFFER = "no_offer"  # no resting offer takes such deals for its filters, at any price
    ABOVE_PRICE = "above_price"  # some do, but each asks more than the request's max prices
    BUSY = "offers_busy"  # some do at its prices, but their exits have no room for it now


@dataclass(frozen=True, slots=True)
class RequestStatus:
    """A resting request as the book holds it: the order (as amended) and its progress."""

    request: Request
    filled: int
    seq: int  # time priority: lower trades first among equal willingness

    @property
    def remaining(self) -> int:
        """IPs still wanted."""
        return self.request.ips - self.filled


class Engine:
    """The order book and the matching rules.

    Not thread-safe: one owner calls it in sequence. ``now`` is whatever clock the owner uses
    (seconds), and must not go backwards from one call to the next: an order expired at one
    call must stay expired at the next.
    """

    def __init__(self, funds: Funds) -> None:
        self._funds = funds
        self._book = Book()
        self._deals: dict[str, Fill] = {}
        self._deal_no = 0
        # Exits held by restored deals, by request id, until that request is placed again.
        self._restored_exits: dict[str, set[str]] = {}

    # -- orders ------------------------------------------------------------------------------

    def place_offer(self, offer: Offer, now: float) -> MatchResult:
        """Rest ``offer`` and fill compatible resting requests against it, best willingness first.

        Raises ``DuplicateOrder`` if its id rests already, ``InvalidOrder`` if it is expired at
        ``now`` or its exit is lent by another provider.
        """
        self._check_new(offer.offer_id, offer.expires_at, now)
        ro = self._book.add_offer(offer)
        fills: list[Fill] = []
        unfunded: list[str] = []
        self._serve(ro, now, fills, unfunded)
        return MatchResult(tuple(fills), True, tuple(unfunded))

    def place_request(self, request: Request, now: float) -> MatchResult:
        """Fill ``request`` against resting offers, cheapest for it first, ties by arrival.

        Up to ``request.ips`` deals, each on a distinct exit. The rest rests if ``request.rest``
        and funds did not run out, else it is dropped. Raises ``DuplicateOrder`` and
        ``InvalidOrder`` as :meth:`place_offer` does.
        """
        return self._place(request, 0, (), now)

    def restore_request(
        self, request: Request, *, filled: int, exits: Iterable[str], now: float
    ) -> MatchResult:
        """Place again a request order recorded before a restart: ``request`` as stored (its
        ``ips`` the total wanted), ``filled`` of them filled already by deals on ``exits`` (ended
        or live), which it is not given again.

        Then as :meth:`place_request`, and amended as if no restart happened. Raises as
        :meth:`place_request` does, and ``InvalidOrder`` unless ``0 <= filled < request.ips``.
        """
        if not 0 <= filled < request.ips:
            raise InvalidOrder("filled", "must be at least 0 and below the IPs wanted")
        return self._place(request, filled, exits, now)

    def cancel(self, order_id: str) -> None:
        """Remove a resting offer or request; its open deals go on. Raises ``UnknownOrder``."""
        book = self._book
        if order_id in book.offers:
            book.remove_offer(book.offers[order_id])
        elif order_id in book.requests:
            book.remove_request(book.requests[order_id])
        else:
            raise UnknownOrder(order_id)

    def amend_offer(
        self,
        offer_id: str,
        *,
        price_per_gb: Amount | None = None,
        price_per_hour: Amount | None = None,
        now: float,
    ) -> MatchResult:
        """Change a resting offer's prices; ``None`` keeps one.

        A changed price re-queues the offer (it loses time priority) and may trade at once; open
        deals keep their prices. Raises ``UnknownOrder`` and ``InvalidOrder``.
        """
        ro = self._book.offers.get(offer_id)
        if ro is None:
            raise UnknownOrder(offer_id)
        offer = dataclasses.replace(
            ro.offer,
            price_per_gb=ro.offer.price_per_gb if price_per_gb is None else price_per_gb,
            price_per_hour=ro.offer.price_per_hour if price_per_hour is None else price_per_hour,
        )
        if offer == ro.offer:
            return MatchResult(rested=True)
        self._book.remove_offer(ro)
        fresh = self._book.add_offer(offer)
        fills: list[Fill] = []
        unfunded: list[str] = []
        self._serve(fresh, now, fills, unfunded)
        return MatchResult(tuple(fills), True, tuple(unfunded))

    def amend_request(
        self,
        request_id: str,
        *,
        ips: int | None = None,
        max_price_per_gb: Amount | None = None,
        max_price_per_hour: Amount | None = None,
        now: float,
    ) -> MatchResult:
        """Change a resting request's total IPs or max prices; ``None`` keeps one.

        ``ips`` is the new total and must exceed the IPs already filled. Lowering it keeps time
        priority; raising it or changing a price re-queues the request, and a changed price may
        trade at once. Raises ``UnknownOrder`` and ``InvalidOrder``.
        """
        book = self._book
        rr = book.requests.get(request_id)
        if rr is None:
            raise UnknownOrder(request_id)
        old = rr.request
        if ips is not None and isinstance(ips, int) and ips <= rr.filled:
            raise InvalidOrder("ips", "must exceed the IPs already filled")
        request = dataclasses.replace(
            old,
            ips=old.ips if ips is None else ips,
            max_price_per_gb=old.max_price_per_gb if max_price_per_gb is None else max_price_per_gb,
            max_price_per_hour=old.max_price_per_hour if max_price_per_hour is None else max_price_per_hour,
        )
        repriced = (request.max_price_per_gb, request.max_price_per_hour) != (
            old.max_price_per_gb,
            old.max_price_per_hour,
        )
        if not repriced and request.ips <= old.ips:
            book.replace_request(rr, request)
            return MatchResult(rested=True)
        book.remove_request(rr)
        fresh = RestingRequest(request, book.next_seq(), rr.filled, rr.exits)
        if not repriced:
            # More IPs at the same prices: nothing newly compatible, so no need to look.
            book.add_request(fresh)
            return MatchResult(rested=True)
        return self._fill_and_rest(fresh, now, may_rest=True)

    def expire(self, now: float) -> list[str]:
        """Remove resting orders whose ``expires_at`` is at or before ``now``; their ids, soonest first."""
        return self._book.pop_expired(now)

    # -- deals -------------------------------------------------------------------------------

    def end_deal(self, deal_id: str, now: float) -> MatchResult:
        """Close a deal: release its reserve, free its room on the exit and serve resting requests with it.

        Raises ``UnknownDeal``. Settling what the deal actually used is not the engine's business.
        """
        deal = self._deals.pop(deal_id, None)
        if deal is None:
            raise UnknownDeal(deal_id)
        self._funds.release(deal.requester, deal.reserve)
        fills: list[Fill] = []
        unfunded: list[str] = []
        for ro in self._book.vacate(deal.exit_id, DEDICATED if deal.dedicated else SHARED):
            self._serve(ro, now, fills, unfunded)
        return MatchResult(tuple(fills), False, tuple(unfunded))

    def end_deal_requesters(self, deal_id: str, now: float) -> set[str]:
        """The requesters whose funds ``end_deal(deal_id, now)``, called next, may ask to reserve:
        those of the resting requests that accept one of the deal's exit's offers at ``now`` and
        do not hold the exit yet, whatever room the end frees (the deal's own reserve is released,
        not reserved). An owner that reads funds before each call reads these; the cost is that
        of the compatible requests, not of the book or of the open deals.

        Raises ``UnknownDeal``.
        """
        deal = self._deals.get(deal_id)
        if deal is None:
            raise UnknownDeal(deal_id)
        requesters: set[str] = set()
        for ro in self._book.exits[deal.exit_id].offers.values():
            requesters.update(rr.request.requester for rr in self._takers(ro, now))
        return requesters

    def restore_deal(self, deal: Fill) -> None:
        """Re-open a deal recorded before a restart: it takes its room on the exit again.

        For the persistence edge rebuilding an engine: restore every live deal first, then place
        the resting orders again (with :meth:`restore_request`, or a request with ``ips`` reduced
        by what its restored deals hold; it will not be given their exits again). No
        :class:`Funds` call is made: the reserve is taken to be held still, and :meth:`end_deal`
        releases it as usual. New deal numbers continue after the highest restored one (see
        :meth:`restore_deal_number` for deals that ended). Raises ``DuplicateDeal`` if the deal is
        open already and ``InvalidOrder`` if another provider lends its exit.
        """
        if deal.deal_id in self._deals:
            raise DuplicateDeal(deal.deal_id)
        self._book.claim_exit(deal.exit_id, deal.provider)
        self._deals[deal.deal_id] = deal
        self._book.occupy(deal.exit_id, DEDICATED if deal.dedicated else SHARED)
        self._restored_exits.setdefault(deal.request_id, set()).add(deal.exit_id)
        number = deal.deal_id.rpartition("_")[2]
        if number.isascii() and number.isdigit():
            self.restore_deal_number(int(number))

    def restore_deal_number(self, number: int) -> None:
        """New deal numbers continue after ``number``: the highest any deal recorded before a
        restart took, ended deals' too (:func:`~matching.orders.deal_id_for` ids must not repeat)."""
        self._deal_no = max(self._deal_no, number)

    def spot(
        self,
        requester: str,
        filters: RequestFilters,
        max_price_per_gb: Amount,
        max_price_per_hour: Amount,
        duration_s: int,
        traffic_bytes: int,
        now: float,
    ) -> Fill | None:
        """Open one shared deal on the cheapest compatible exit right now, never resting anything.

        ``None`` if no offer qualifies. Raises ``InsufficientFunds`` if the reserve for the
        cheapest one is refused, and ``InvalidOrder`` for bad terms (as :class:`Request` would).
        """
        request = Request(
            request_id="spot",
            requester=requester,
            filters=filters,
            ips=1,
            duration_s=duration_s,
            traffic_bytes=traffic_bytes,
            max_price_per_gb=max_price_per_gb,
            max_price_per_hour=max_price_per_hour,
            dedicated=False,
            rest=False,
        )
        rr = RestingRequest(request, 0, 0, set())
        for cost, ro in self._candidates(rr, now):
            if not self._funds.try_reserve(requester, cost):
                raise InsufficientFunds(requester, cost)
            return self._open(rr, ro, cost, now, spot=True)
        return None

    # -- queries -----------------------------------------------------------------------------

    def unmatched(self, request: Request, now: float) -> Unmatched:
        """Why ``request`` finds no offer to open a deal on at ``now``, funds aside: asked after
        placing it (immediate-or-cancel, as spot requests are) opened none. ``BUSY`` when some
        resting offer accepts it but its exit has no room, else ``ABOVE_PRICE`` when some offer
        would accept it at any price, else ``NO_OFFER``. Reads the offers of the request's
        (country, type) bucket, room or not, oldest first and ``UNMATCHED_SCAN`` at most (it runs
        under the market's lock, once per failed spot request): in a bigger bucket an offer
        past them is not seen. Offers the market keeps off the book (outside their schedule) do
        not count.
        """
        at_any_price = dataclasses.replace(
            request, max_price_per_gb=Amount(MAX_AMOUNT), max_price_per_hour=Amount(MAX_AMOUNT)
        )
        found = Unmatched.NO_OFFER
        bucket = self._book.offers_in((request.filters.country, request.filters.type))
        for ro in itertools.islice(bucket, UNMATCHED_SCAN):
            if request.accepts(ro.offer, now):
                return Unmatched.BUSY
            if at_any_price.accepts(ro.offer, now):
                found = Unmatched.ABOVE_PRICE
        return found

    def depth(self, country: str | None = None, type: str | None = None) -> list[tuple[Amount, Amount, int]]:
        """``(price_per_gb, price_per_hour, offers)`` levels of offers with room, cheapest per GB first.

        Counts offers whose exit has room for a dedicated or a shared deal, in the given country
        and type (``None``: any). Raises ``InvalidOrder`` for a malformed country or type.
        """
        RequestFilters(country=country, type=type)
        merged: dict[Level, set[int]] = {}
        for index in self._book.free:
            for level, seqs in index.levels((country, type)).items():
                merged.setdefault(level, set()).update(seqs)
        return [(Amount(gb), Amount(hour), len(seqs)) for (gb, hour), seqs in sorted(merged.items())]

    def resting_offers(self) -> list[Offer]:
        """Resting offers, in time priority (arrival or last re-queue)."""
        return [ro.offer for ro in self._book.offers.values()]

    def resting_offer(self, offer_id: str) -> Offer | None:
        """The offer resting under ``offer_id``, as the book holds it."""
        ro = self._book.offers.get(offer_id)
        return None if ro is None else ro.offer

    def is_resting(self, order_id: str) -> bool:
        return order_id in self._book.offers or order_id in self._book.requests

    def queue_position(self, order_id: str) -> int | None:
        """The resting order's place in time priority: its sequence, lower trading first among
        equal prices; a new one each time the engine (re-)queues it. ``None`` if it does not rest.

        Only the order of positions means anything, and only within this engine: a caller tells
        whether a call re-queued an order by comparing its position before and after.
        """
        rested = self._book.offers.get(order_id) or self._book.requests.get(order_id)
        return None if rested is None else rested.seq

    def resting_requests(self) -> list[RequestStatus]:
        """Resting requests, in arrival order (see ``seq``; priority also weighs max prices)."""
        return [RequestStatus(rr.request, rr.filled, rr.seq) for rr in self._book.requests.values()]

    def active_deals(self) -> list[Fill]:
        """Open deals, oldest first."""
        return list(self._deals.values())

    def deal(self, deal_id: str) -> Fill:
        """The open deal ``deal_id``; raises ``UnknownDeal``."""
        found = self._deals.get(deal_id)
        if found is None:
            raise UnknownDeal(deal_id)
        return found

    # -- internals ---------------------------------------------------------------------------

    def _check_new(self, order_id: str, expires_at: float | None, now: float) -> None:
        if order_id in self._book.offers or order_id in self._book.requests:
            raise DuplicateOrder(order_id)
        if is_expired(expires_at, now):
            raise InvalidOrder("expires_at", "the order is already expired")

    def _candidates(self, rr: RestingRequest, now: float) -> Iterator[tuple[Amount, RestingOffer]]:
        """Offers ``rr`` may open a deal on now, cheapest first; lazy, so each step sees earlier fills."""
        request, book = rr.request, self._book
        index = book.free[DEDICATED if request.dedicated else SHARED]
        for cost, seq in index.cheapest((request.filters.country, request.filters.type), request):
            ro = book.offers_by_seq[seq]
            if ro.offer.exit_id not in rr.exits and request.accepts(ro.offer, now):
                yield Amount(cost), ro

    def _place(self, request: Request, filled: int, exits: Iterable[str], now: float) -> MatchResult:
        """Fill ``request`` (``filled`` IPs filled already, on ``exits``) and rest what is left if it may."""
        self._check_new(request.request_id, request.expires_at, now)
        held = self._restored_exits.pop(request.request_id, set())
        rr = RestingRequest(request, self._book.next_seq(), filled, held.union(exits))
        return self._fill_and_rest(rr, now, may_rest=request.rest)

    def _fill_and_rest(self, rr: RestingRequest, now: float, *, may_rest: bool) -> MatchResult:
        """Fill ``rr`` (not on the book) as far as offers and funds allow, then rest it if it may."""
        fills: list[Fill] = []
        for cost, ro in self._candidates(rr, now):
            if not self._funds.try_reserve(rr.request.requester, cost):
                return MatchResult(tuple(fills), False, (rr.request.request_id,))
            fills.append(self._open(rr, ro, cost, now))
            if rr.remaining == 0:
                return MatchResult(tuple(fills), False)
        if may_rest:
            self._book.add_request(rr)
        return MatchResult(tuple(fills), may_rest)

    def _takers(self, ro: RestingOffer, now: float) -> Iterator[RestingRequest]:
        """Resting requests that accept ``ro`` at ``now`` and do not hold its exit, room aside:
        each once, walking only the queues (class, bucket) and blocks that may hold one."""
        book, offer = self._book, ro.offer
        gb, hour = offer.price_per_gb, offer.price_per_hour

        def takes(seq: int) -> bool:
            rr = book.requests_by_seq[seq]
            return offer.exit_id not in rr.exits and rr.request.accepts(offer, now)

        for cls, serves in ((DEDICATED, offer.serves_dedicated), (SHARED, offer.serves_shared)):
            if not serves:
                continue
            for queue in book.waiting[cls].queues_for(offer.attributes):
                key, _ = queue.first(BEFORE_ALL, gb, hour, takes)
                while key is not None:
                    yield book.requests_by_seq[key[1]]
                    key, _ = queue.first(key, gb, hour, takes)

    def _serve(self, ro: RestingOffer, now: float, fills: list[Fill], unfunded: list[str]) -> None:
        """Fill resting requests against ``ro`` in request priority while its exit has room.

        A k-way merge over the priority-ordered request queues that admit the exit (four buckets
        per deal class). Each queue keeps a cursor past the requests already found incompatible:
        room only shrinks during the walk, so they stay incompatible.
        """
        book, offer = self._book, ro.offer
        requests, exit_id = book.requests_by_seq, offer.exit_id

        def takes(seq: int) -> bool:
            rr = requests[seq]
            return exit_id not in rr.exits and rr.request.accepts(offer, now)

        queues = [
            (cls, queue)
            for cls in (DEDICATED, SHARED)
            for queue in book.waiting[cls].queues_for(offer.attributes)
        ]
        after = [BEFORE_ALL] * len(queues)
        while ro.free[DEDICATED] or ro.free[SHARED]:
            best: RequestKey | None = None
            best_slot = -1
            for slot, (cls, queue) in enumerate(queues):
                if ro.free[cls]:
                    key, after[slot] = queue.first(
                        after[slot], offer.price_per_gb, offer.price_per_hour, takes
                    )
                    if key is not None and (best is None or key < best):
                        best, best_slot = key, slot
            if best is None:
                return
            after[best_slot] = best
            rr = requests[best[1]]
            cost = rr.request.cost_of(offer)
            if not self._funds.try_reserve(rr.request.requester, cost):
                book.remove_request(rr)
                unfunded.append(rr.request.request_id)
                continue
            fills.append(self._open(rr, ro, cost, now))
            if rr.remaining == 0:
                book.remove_request(rr)

    def _open(
        self, rr: RestingRequest, ro: RestingOffer, cost: Amount, now: float, *, spot: bool = False
    ) -> Fill:
        """Record a deal of ``rr`` on ``ro``'s exit (its reserve already held) and take the room."""
        self._deal_no += 1
        request, offer = rr.request, ro.offer
        deal_id = deal_id_for(request.request_id, self._deal_no, spot=spot)
        deal = Fill(
            deal_id=deal_id,
            request_id=deal_id if spot else request.request_id,
            offer_id=offer.offer_id,
            requester=request.requester,
            provider=offer.provider,
            exit_id=offer.exit_id,
            price_per_gb=offer.price_per_gb,
            price_per_hour=offer.price_per_hour,
            duration_s=request.duration_s,
            traffic_bytes=request.traffic_bytes,
            dedicated=request.dedicated,
            reserve=cost,
            opened_at=now,
        )
        self._deals[deal_id] = deal
        rr.filled += 1
        rr.exits.add(offer.exit_id)
        self._book.occupy(offer.exit_id, DEDICATED if request.dedicated else SHARED)
        return deal
