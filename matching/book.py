"""The resting book: orders waiting to trade, what each exit still has room for, and the indexes.

The engine decides; the book remembers and finds. It keeps two invariants that make the engine's
scans cheap:

* An offer sits in the *free* index of a deal class (dedicated, shared) exactly while its exit has
  room for one more deal of that class. An exit that is full is parked: its offers leave the
  index (exact removal, not lazy) and come back when :meth:`Book.refresh` sees room again, so a
  full exit is never rescanned by the requests that follow.
* Every index is bucketed by ``(country, type)`` and also by ``(country, *)``, ``(*, type)`` and
  ``(*, *)``, so a filter left as ``None`` reads one bucket instead of merging many.

Offers of one bucket are grouped in price levels ``(price_per_gb, price_per_hour)``, each level
holding its offers' arrival sequences in order. Which level is cheapest depends on the request
(its traffic and duration weigh the two prices), so :meth:`OfferIndex.cheapest` walks two sorted
lists of levels, one per price, with the threshold algorithm (Fagin et al.): the cost at the
next unseen price of each list bounds every level not seen yet, so a level is yielded once
nothing unseen can beat it, in exact (cost, sequence) order.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator

from matching.errors import InvalidOrder
from matching.orders import BYTES_PER_GB, HOUR, ExitAttributes, Offer, Request, is_expired

DEDICATED, SHARED = 0, 1  # deal classes; an index into Book.free and Book.waiting

Bucket = tuple[str | None, str | None]  # (country, type), None standing for "any"
Level = tuple[int, int]  # (price_per_gb, price_per_hour)
RequestKey = tuple[float, int]  # (-willingness, seq): ascending order is request priority
BEFORE_ALL: RequestKey = (float("-inf"), -1)


def buckets_of(attributes: ExitAttributes) -> tuple[Bucket, Bucket, Bucket, Bucket]:
    """The four buckets an exit with ``attributes`` belongs to."""
    country, type_ = attributes.country, attributes.type
    return (country, type_), (country, None), (None, type_), (None, None)


class RestingOffer:
    """An offer on the book, with its arrival sequence and the free indexes it is in."""

    __slots__ = ("free", "offer", "seq")

    def __init__(self, offer: Offer, seq: int) -> None:
        self.offer = offer
        self.seq = seq
        self.free = [False, False]  # by deal class: is it in Book.free[cls]


class RestingRequest:
    """A request on the book: how much of it is filled and which exits it already holds."""

    __slots__ = ("exits", "filled", "key", "request", "seq")

    def __init__(self, request: Request, seq: int, filled: int, exits: set[str]) -> None:
        self.request = request
        self.seq = seq
        self.key: RequestKey = (-request.willingness, seq)
        self.filled = filled
        self.exits = exits  # membership tests only: sets of str iterate in hash order

    @property
    def remaining(self) -> int:
        """IPs still wanted."""
        return self.request.ips - self.filled


class ExitState:
    """One exit: who lends it, its resting offers and its active deals."""

    __slots__ = ("dedicated", "offers", "provider", "shared")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.dedicated = 0  # active dedicated deals: 0 or 1
        self.shared = 0  # active shared deals
        self.offers: dict[int, RestingOffer] = {}  # by seq, in arrival order

    def has_room(self, offer: Offer, cls: int) -> bool:
        """True if one more deal of class ``cls`` may open on this exit through ``offer``."""
        if self.dedicated:
            return False
        if cls == DEDICATED:
            return self.shared == 0 and offer.serves_dedicated
        return offer.serves_shared and self.shared < offer.shared_capacity


class _Levels:
    """One bucket of an offer index: price levels and the two price-sorted lists of them."""

    __slots__ = ("by_gb", "by_hour", "levels")

    def __init__(self) -> None:
        self.levels: dict[Level, list[int]] = {}  # level -> ascending seqs, never empty
        self.by_gb: list[Level] = []  # (price_per_gb, price_per_hour), ascending
        self.by_hour: list[Level] = []  # (price_per_hour, price_per_gb), ascending

    def add(self, level: Level, seq: int) -> None:
        seqs = self.levels.get(level)
        if seqs is None:
            self.levels[level] = [seq]
            insort(self.by_gb, level)
            insort(self.by_hour, (level[1], level[0]))
        else:
            insort(seqs, seq)

    def remove(self, level: Level, seq: int) -> None:
        seqs = self.levels[level]
        del seqs[bisect_left(seqs, seq)]
        if not seqs:
            del self.levels[level]
            del self.by_gb[bisect_left(self.by_gb, level)]
            swapped = (level[1], level[0])
            del self.by_hour[bisect_left(self.by_hour, swapped)]


class OfferIndex:
    """Offers whose exit has room for one more deal of one class, by bucket and price level."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[Bucket, _Levels] = {}

    def add(self, ro: RestingOffer) -> None:
        level = (ro.offer.price_per_gb, ro.offer.price_per_hour)
        for bucket in buckets_of(ro.offer.attributes):
            levels = self._buckets.get(bucket)
            if levels is None:
                levels = self._buckets[bucket] = _Levels()
            levels.add(level, ro.seq)

    def remove(self, ro: RestingOffer) -> None:
        level = (ro.offer.price_per_gb, ro.offer.price_per_hour)
        for bucket in buckets_of(ro.offer.attributes):
            self._buckets[bucket].remove(level, ro.seq)

    def levels(self, bucket: Bucket) -> dict[Level, list[int]]:
        """The bucket's levels (live: do not mutate); empty if the bucket never had an offer."""
        found = self._buckets.get(bucket)
        return {} if found is None else found.levels

    def cheapest(self, bucket: Bucket, request: Request) -> Iterator[tuple[int, int]]:
        """``(cost, seq)`` of the bucket's offers within ``request``'s max prices, cheapest first.

        Cost is the cost estimate for ``request``; equal costs come in arrival order. The walk
        tolerates offers leaving the index between two steps (a fill parks its exit): they are
        simply not yielded. Offers entering meanwhile may be missed; the engine adds none while
        it walks.
        """
        found = self._buckets.get(bucket)
        if found is None:
            return
        levels, by_gb, by_hour = found.levels, found.by_gb, found.by_hour
        traffic, duration = request.traffic_bytes, request.duration_s
        max_gb, max_hour = request.max_price_per_gb, request.max_price_per_hour

        def cost(gb: int, hour: int) -> int:
            return -(-gb * traffic // BYTES_PER_GB) - (-hour * duration // HOUR)

        heap: list[tuple[int, int, Level]] = []  # (cost, seq, level): each seen level's next offer
        seen: set[Level] = set()
        gb_at: Level = (-1, -1)  # last entry taken from each list; the walk resumes after it
        hour_at: Level = (-1, -1)
        # With no traffic the per-GB price costs nothing, so only the per-hour list can raise
        # the bound; reading the other would be wasted work.
        use_gb = traffic > 0
        turn = False
        while True:
            gi = bisect_right(by_gb, gb_at)
            hi = bisect_right(by_hour, hour_at)
            gb_open = gi < len(by_gb) and by_gb[gi][0] <= max_gb
            hour_open = hi < len(by_hour) and by_hour[hi][0] <= max_hour
            # Every level not seen yet lies after both cursors: it costs at least `bound`, and
            # once one list is past its max price, no unseen level is affordable at all.
            bound = cost(by_gb[gi][0], by_hour[hi][0]) if gb_open and hour_open else None
            if heap and (bound is None or heap[0][0] < bound):
                price, seq, level = heapq.heappop(heap)
                seqs = levels.get(level)
                if seqs is None:
                    continue
                j = bisect_left(seqs, seq)
                present = j < len(seqs) and seqs[j] == seq
                after = j + 1 if present else j
                if after < len(seqs):
                    heapq.heappush(heap, (price, seqs[after], level))
                if present:
                    yield price, seq
                continue
            if bound is None:
                return
            if use_gb and turn:
                level = gb_at = by_gb[gi]
            else:
                hour_at = by_hour[hi]
                level = (hour_at[1], hour_at[0])
            turn = not turn
            if level in seen or level[0] > max_gb or level[1] > max_hour:
                continue
            seen.add(level)
            heapq.heappush(heap, (cost(*level), levels[level][0], level))


class RequestIndex:
    """Resting requests of one deal class, by the bucket their filters name, in priority order."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[Bucket, list[RequestKey]] = {}

    def add(self, rr: RestingRequest) -> None:
        insort(self._buckets.setdefault(self._bucket(rr), []), rr.key)

    def remove(self, rr: RestingRequest) -> None:
        keys = self._buckets[self._bucket(rr)]
        del keys[bisect_left(keys, rr.key)]

    def lists_for(self, attributes: ExitAttributes) -> list[list[RequestKey]]:
        """The live, priority-sorted key lists of requests whose bucket admits ``attributes``.

        Lists are never replaced, only mutated, so a caller may hold them across fills.
        """
        return [self._buckets.setdefault(bucket, []) for bucket in buckets_of(attributes)]

    @staticmethod
    def _bucket(rr: RestingRequest) -> Bucket:
        filters = rr.request.filters
        return filters.country, filters.type


class Book:
    """Resting offers and requests, exit capacity and the indexes over them. No matching logic."""

    def __init__(self) -> None:
        self.offers: dict[str, RestingOffer] = {}
        self.offers_by_seq: dict[int, RestingOffer] = {}
        self.requests: dict[str, RestingRequest] = {}
        self.requests_by_seq: dict[int, RestingRequest] = {}
        self.exits: dict[str, ExitState] = {}
        self.free = (OfferIndex(), OfferIndex())  # by deal class
        self.waiting = (RequestIndex(), RequestIndex())  # by deal class
        self._expiry: list[tuple[float, int, str]] = []  # (expires_at, seq, id), lazily deleted
        self._seq = 0

    def next_seq(self) -> int:
        """A fresh arrival sequence number: the time priority of an order (re)entering the book."""
        self._seq += 1
        return self._seq

    def add_offer(self, offer: Offer) -> RestingOffer:
        """Rest ``offer`` with a fresh sequence; ``InvalidOrder`` if another provider lends its exit."""
        state = self.exits.get(offer.exit_id)
        if state is None:
            state = self.exits[offer.exit_id] = ExitState(offer.provider)
        elif state.provider != offer.provider:
            raise InvalidOrder("exit_id", "this exit is lent by another provider")
        ro = RestingOffer(offer, self.next_seq())
        self.offers[offer.offer_id] = ro
        self.offers_by_seq[ro.seq] = ro
        state.offers[ro.seq] = ro
        self._watch_expiry(offer.expires_at, ro.seq, offer.offer_id)
        self.refresh(state)
        return ro

    def remove_offer(self, ro: RestingOffer) -> None:
        """Take ``ro`` off the book and out of every index."""
        del self.offers[ro.offer.offer_id]
        del self.offers_by_seq[ro.seq]
        state = self.exits[ro.offer.exit_id]
        del state.offers[ro.seq]
        for cls in (DEDICATED, SHARED):
            if ro.free[cls]:
                self.free[cls].remove(ro)
                ro.free[cls] = False
        self._forget_exit_if_idle(ro.offer.exit_id)

    def add_request(self, rr: RestingRequest) -> None:
        """Rest ``rr`` (built with a sequence from :meth:`next_seq`) and index it."""
        request = rr.request
        self.requests[request.request_id] = rr
        self.requests_by_seq[rr.seq] = rr
        self.waiting[DEDICATED if request.dedicated else SHARED].add(rr)
        self._watch_expiry(request.expires_at, rr.seq, request.request_id)

    def remove_request(self, rr: RestingRequest) -> None:
        """Take ``rr`` off the book."""
        del self.requests[rr.request.request_id]
        del self.requests_by_seq[rr.seq]
        self.waiting[DEDICATED if rr.request.dedicated else SHARED].remove(rr)

    def replace_request(self, rr: RestingRequest, request: Request) -> None:
        """Swap in an amended ``request`` keeping ``rr``'s place (its priority key must not change)."""
        rr.request = request

    def occupy(self, exit_id: str, cls: int) -> None:
        """Count one more active deal of class ``cls`` on the exit and park what is now full."""
        state = self.exits[exit_id]
        if cls == DEDICATED:
            state.dedicated += 1
        else:
            state.shared += 1
        self.refresh(state)

    def vacate(self, exit_id: str, cls: int) -> list[RestingOffer]:
        """Count one deal of class ``cls`` less on the exit; return its offers that gained room."""
        state = self.exits[exit_id]
        if cls == DEDICATED:
            state.dedicated -= 1
        else:
            state.shared -= 1
        gained = self.refresh(state)
        self._forget_exit_if_idle(exit_id)
        return gained

    def refresh(self, state: ExitState) -> list[RestingOffer]:
        """Put the exit's offers in exactly the free indexes it has room for; return those that gained one."""
        gained = []
        for ro in state.offers.values():
            grew = False
            for cls in (DEDICATED, SHARED):
                room = state.has_room(ro.offer, cls)
                if room != ro.free[cls]:
                    ro.free[cls] = room
                    if room:
                        self.free[cls].add(ro)
                        grew = True
                    else:
                        self.free[cls].remove(ro)
            if grew:
                gained.append(ro)
        return gained

    def pop_expired(self, now: float) -> list[str]:
        """Remove every resting order whose expiry is at or before ``now``; their ids, soonest first."""
        gone = []
        while self._expiry and self._expiry[0][0] <= now:
            _, seq, order_id = heapq.heappop(self._expiry)
            ro = self.offers_by_seq.get(seq)
            if ro is not None and is_expired(ro.offer.expires_at, now):
                self.remove_offer(ro)
                gone.append(order_id)
                continue
            rr = self.requests_by_seq.get(seq)
            if rr is not None and is_expired(rr.request.expires_at, now):
                self.remove_request(rr)
                gone.append(order_id)
        return gone

    def _watch_expiry(self, expires_at: float | None, seq: int, order_id: str) -> None:
        if expires_at is not None:
            heapq.heappush(self._expiry, (expires_at, seq, order_id))

    def _forget_exit_if_idle(self, exit_id: str) -> None:
        # Once nothing rests on an exit and no deal holds it, another provider may lend it.
        state = self.exits[exit_id]
        if not state.offers and not state.dedicated and not state.shared:
            del self.exits[exit_id]
