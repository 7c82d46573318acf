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
(its traffic and duration weigh the two prices), so :meth:`OfferIndex.cheapest` walks sorted
lists of levels with the threshold algorithm (Fagin et al.): a lower bound on the cost of every
level not seen yet lets it yield an offer once nothing unseen can beat it, in exact
(cost, arrival) order, after reading only the head of each list.

Resting requests sit in :class:`RequestQueue` s, one per bucket and deal class, in priority
order (willingness to pay, then arrival), in blocks that know their highest bids: an arriving
offer skips whole blocks of requests that bid below it.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator

from matching.errors import InvalidOrder
from matching.orders import BYTES_PER_GB, HOUR, ExitAttributes, Offer, Request, is_expired

DEDICATED, SHARED = 0, 1  # deal classes; an index into Book.free and Book.waiting

Bucket = tuple[str | None, str | None]  # (country, type), None standing for "any"
Level = tuple[int, int]  # (price_per_gb, price_per_hour)
# (-willingness, seq, max_price_per_gb, max_price_per_hour): ascending order is request priority
# (seq is unique, so the prices never take part in a comparison; they are there to be read).
RequestKey = tuple[float, int, int, int]
BEFORE_ALL: RequestKey = (float("-inf"), -1, 0, 0)
_START: Level = (-1, -1)  # sorts before every level
_PAST = 1 << 512  # above any price (prices are at most 10**78): (p, _PAST) sorts after (p, *)
_BLOCK = 32  # requests per block of a RequestQueue (blocks split at twice that)
_GB_ONLY, _HOUR_ONLY, _BOTH = 1, 2, 4  # the sources of OfferIndex.cheapest, as bits
_ALL_SOURCES = _GB_ONLY | _HOUR_ONLY | _BOTH


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
        self.key: RequestKey = (
            -request.willingness,
            seq,
            request.max_price_per_gb,
            request.max_price_per_hour,
        )
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
    """One bucket of an offer index: its price levels, in sorted lists by pricing kind.

    Most offers price one dimension only, and a level priced per GB only costs a request in the
    order of its price per GB, whatever the request: such levels sit in one sorted list of
    prices, as do the per-hour-only ones. Only levels with both prices need the two-list walk.
    ``version`` changes whenever a list does, so a walk knows when its positions went stale.
    """

    __slots__ = ("both_gb", "both_hour", "gb_only", "hour_only", "levels", "version")

    def __init__(self) -> None:
        self.levels: dict[Level, list[int]] = {}  # level -> ascending seqs, never empty
        self.gb_only: list[int] = []  # price_per_gb of levels with price_per_hour 0, ascending
        self.hour_only: list[int] = []  # price_per_hour of levels with price_per_gb 0, ascending
        self.both_gb: list[Level] = []  # (price_per_gb, price_per_hour) of the other levels, ascending
        self.both_hour: list[Level] = []  # the same levels as (price_per_hour, price_per_gb), ascending
        self.version = 0

    def add(self, level: Level, seq: int) -> None:
        seqs = self.levels.get(level)
        if seqs is not None:
            insort(seqs, seq)
            return
        self.levels[level] = [seq]
        gb, hour = level
        if not hour:
            insort(self.gb_only, gb)
        elif not gb:
            insort(self.hour_only, hour)
        else:
            insort(self.both_gb, level)
            insort(self.both_hour, (hour, gb))
        self.version += 1

    def remove(self, level: Level, seq: int) -> None:
        seqs = self.levels[level]
        del seqs[bisect_left(seqs, seq)]
        if seqs:
            return
        del self.levels[level]
        gb, hour = level
        if not hour:
            del self.gb_only[bisect_left(self.gb_only, gb)]
        elif not gb:
            del self.hour_only[bisect_left(self.hour_only, hour)]
        else:
            del self.both_gb[bisect_left(self.both_gb, level)]
            del self.both_hour[bisect_left(self.both_hour, (hour, gb))]
        self.version += 1


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

        Cost is the cost estimate for ``request``; equal costs come in arrival order. Levels come
        from three sources, each with a lower bound on what it has not produced yet: the
        per-GB-only and per-hour-only lists (the next price's cost) and the two lists of
        two-price levels (the cost at the next price of each, as in the threshold algorithm).
        The walk advances the source with the lowest bound and yields an offer once its cost is
        below every bound, which makes the order exact. It tolerates offers leaving the index
        between two steps (a fill parks its exit): they are simply not yielded. Offers entering
        meanwhile may be missed; the engine adds none while it walks.
        """
        found = self._buckets.get(bucket)
        if found is None:
            return
        levels, gb_only, hour_only = found.levels, found.gb_only, found.hour_only
        both_gb, both_hour = found.both_gb, found.both_hour
        traffic, duration = request.traffic_bytes, request.duration_s
        max_gb, max_hour = request.max_price_per_gb, request.max_price_per_hour

        def cost(gb: int, hour: int) -> int:
            return -(-gb * traffic // BYTES_PER_GB) - (-hour * duration // HOUR)

        heap: list[tuple[int, int, Level]] = []  # (cost, seq, level): each seen level's next offer
        seen: set[Level] = set()  # two-price levels already pushed (they are in both lists)
        # Last entry taken from each list (the walk resumes after it) and the position after it,
        # trusted while the bucket's version is unchanged.
        g_at, h_at, bg_at, bh_at = -1, -1, _START, _START
        gi = hi = bgi = bhi = 0
        if not traffic:
            # Without traffic every per-GB-only level costs 0, the least possible: they all go
            # first, merged by arrival, and that list has nothing more to bound.
            gi = bisect_right(gb_only, max_gb)
            g_at = gb_only[gi - 1] if gi else -1
            heap = [(0, levels[(gb, 0)][0], (gb, 0)) for gb in gb_only[:gi]]
            heapq.heapify(heap)
        version = found.version
        # The two-price lists are read in turn; without traffic the per-GB one bounds nothing.
        turn = traffic > 0
        g_bound = h_bound = b_bound = None
        stale = _ALL_SOURCES  # bounds to recompute: a source moved or the lists changed
        while True:
            if version != found.version:
                version, stale = found.version, _ALL_SOURCES
                gi, hi = bisect_right(gb_only, g_at), bisect_right(hour_only, h_at)
                bgi, bhi = bisect_right(both_gb, bg_at), bisect_right(both_hour, bh_at)
            if stale:
                if stale & _GB_ONLY:
                    in_range = gi < len(gb_only) and gb_only[gi] <= max_gb
                    g_bound = cost(gb_only[gi], 0) if in_range else None
                if stale & _HOUR_ONLY:
                    in_range = hi < len(hour_only) and hour_only[hi] <= max_hour
                    h_bound = cost(0, hour_only[hi]) if in_range else None
                if stale & _BOTH:
                    # Past its max price in either list, no unseen two-price level is affordable.
                    in_range = (
                        bgi < len(both_gb)
                        and bhi < len(both_hour)
                        and both_gb[bgi][0] <= max_gb
                        and both_hour[bhi][0] <= max_hour
                    )
                    b_bound = cost(both_gb[bgi][0], both_hour[bhi][0]) if in_range else None
                stale = 0
            bound = g_bound
            if h_bound is not None and (bound is None or h_bound < bound):
                bound = h_bound
            if b_bound is not None and (bound is None or b_bound < bound):
                bound = b_bound
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
            if bound == g_bound:
                g_at = gb_only[gi]
                gi += 1
                stale = _GB_ONLY
                level = (g_at, 0)
            elif bound == h_bound:
                h_at = hour_only[hi]
                hi += 1
                stale = _HOUR_ONLY
                level = (0, h_at)
            else:
                stale = _BOTH
                if turn:
                    level = bg_at = both_gb[bgi]
                    bgi += 1
                    if level[1] > max_hour:  # so is the rest of this price per GB: skip it
                        bg_at = (level[0], _PAST)
                        bgi = bisect_right(both_gb, bg_at)
                else:
                    bh_at = both_hour[bhi]
                    bhi += 1
                    level = (bh_at[1], bh_at[0])
                    if level[0] > max_gb:  # so is the rest of this price per hour: skip it
                        bh_at = (bh_at[0], _PAST)
                        bhi = bisect_right(both_hour, bh_at)
                turn = traffic > 0 and not turn
                if level in seen or level[0] > max_gb or level[1] > max_hour:
                    continue
                seen.add(level)
            heapq.heappush(heap, (cost(*level), levels[level][0], level))


class RequestQueue:
    """One bucket's resting requests of one deal class, in priority order, in small blocks.

    Each block knows the highest max prices among its requests, so a scan for an offer skips
    whole blocks of requests that bid below it (the usual reason a request rests) without
    looking at them one by one.
    """

    __slots__ = ("_blocks", "_firsts")

    def __init__(self) -> None:
        self._blocks: list[_Block] = []
        self._firsts: list[RequestKey] = []  # first key of each block, for bisect

    def add(self, key: RequestKey) -> None:
        blocks, firsts = self._blocks, self._firsts
        if not blocks:
            blocks.append(_Block([key]))
            firsts.append(key)
            return
        bi = max(bisect_right(firsts, key) - 1, 0)
        block = blocks[bi]
        insort(block.keys, key)
        firsts[bi] = block.keys[0]
        block.max_gb = max(block.max_gb, key[2])
        block.max_hour = max(block.max_hour, key[3])
        if len(block.keys) > 2 * _BLOCK:
            tail = _Block(block.keys[_BLOCK:])
            del block.keys[_BLOCK:]
            block.update()
            blocks.insert(bi + 1, tail)
            firsts.insert(bi + 1, tail.keys[0])

    def remove(self, key: RequestKey) -> None:
        bi = bisect_right(self._firsts, key) - 1
        block = self._blocks[bi]
        del block.keys[bisect_left(block.keys, key)]
        if not block.keys:
            del self._blocks[bi], self._firsts[bi]
            return
        self._firsts[bi] = block.keys[0]
        block.update()

    def first(
        self, after: RequestKey, gb: int, hour: int, test: Callable[[int], bool]
    ) -> tuple[RequestKey | None, RequestKey]:
        """The first key after ``after`` that bids at least ``gb``/``hour`` and whose seq passes ``test``.

        Also returns the last key passed over, the cursor for the next call: a key skipped for a
        given offer stays skipped while the offer's prices and the request do not change.
        """
        blocks = self._blocks
        last = after
        bi = max(bisect_right(self._firsts, after) - 1, 0)
        for block in itertools.islice(blocks, bi, None):
            keys = block.keys
            if block.max_gb < gb or block.max_hour < hour:
                last = max(last, keys[-1])
                continue
            for i in range(bisect_right(keys, last), len(keys)):
                key = keys[i]
                if key[2] >= gb and key[3] >= hour and test(key[1]):
                    return key, last
                last = key
        return None, last


class _Block:
    __slots__ = ("keys", "max_gb", "max_hour")

    def __init__(self, keys: list[RequestKey]) -> None:
        self.keys = keys
        self.max_gb = self.max_hour = 0
        self.update()

    def update(self) -> None:
        self.max_gb = max(key[2] for key in self.keys)
        self.max_hour = max(key[3] for key in self.keys)


class RequestIndex:
    """Resting requests of one deal class, by the bucket their filters name."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[Bucket, RequestQueue] = {}

    def add(self, rr: RestingRequest) -> None:
        self.queue(self._bucket(rr)).add(rr.key)

    def remove(self, rr: RestingRequest) -> None:
        self._buckets[self._bucket(rr)].remove(rr.key)

    def queue(self, bucket: Bucket) -> RequestQueue:
        """The bucket's queue; queues are never replaced, so a caller may hold one across fills."""
        found = self._buckets.get(bucket)
        if found is None:
            found = self._buckets[bucket] = RequestQueue()
        return found

    def queues_for(self, attributes: ExitAttributes) -> list[RequestQueue]:
        """The queues of requests whose bucket admits an exit with ``attributes``."""
        return [self.queue(bucket) for bucket in buckets_of(attributes)]

    @staticmethod
    def _bucket(rr: RestingRequest) -> Bucket:
        filters = rr.request.filters
        return filters.country, filters.type


class Book:
    """Resting offers and requests, exit capacity and the indexes over them. No matching logic."""

    def __init__(self) -> None:
        self.offers: dict[str, RestingOffer] = {}
        self.offers_by_seq: dict[int, RestingOffer] = {}
        self._by_bucket: dict[Bucket, dict[int, RestingOffer]] = {}  # every offer, room or not
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
        state = self.claim_exit(offer.exit_id, offer.provider)
        ro = RestingOffer(offer, self.next_seq())
        self.offers[offer.offer_id] = ro
        self.offers_by_seq[ro.seq] = ro
        for bucket in buckets_of(offer.attributes):
            self._by_bucket.setdefault(bucket, {})[ro.seq] = ro
        state.offers[ro.seq] = ro
        self._watch_expiry(offer.expires_at, ro.seq, offer.offer_id)
        self.refresh(state)
        return ro

    def remove_offer(self, ro: RestingOffer) -> None:
        """Take ``ro`` off the book and out of every index."""
        del self.offers[ro.offer.offer_id]
        del self.offers_by_seq[ro.seq]
        for bucket in buckets_of(ro.offer.attributes):
            in_bucket = self._by_bucket[bucket]
            del in_bucket[ro.seq]
            if not in_bucket:
                del self._by_bucket[bucket]
        state = self.exits[ro.offer.exit_id]
        del state.offers[ro.seq]
        for cls in (DEDICATED, SHARED):
            if ro.free[cls]:
                self.free[cls].remove(ro)
                ro.free[cls] = False
        self._forget_exit_if_idle(ro.offer.exit_id)

    def offers_in(self, bucket: Bucket) -> Iterable[RestingOffer]:
        """Every resting offer of ``bucket``, whether its exit has room or not (a live view: the
        book must not change while it is read)."""
        return self._by_bucket.get(bucket, {}).values()

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

    def claim_exit(self, exit_id: str, provider: str) -> ExitState:
        """The exit's state, created for ``provider`` if new; ``InvalidOrder`` if another lends it."""
        state = self.exits.get(exit_id)
        if state is None:
            state = self.exits[exit_id] = ExitState(provider)
        elif state.provider != provider:
            raise InvalidOrder("exit_id", "this exit is lent by another provider")
        return state

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
