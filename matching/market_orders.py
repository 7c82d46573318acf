"""The market's order side: what the engine sees of requesters' funds, and open orders it holds
only part of the time.

:class:`LedgerFunds` is the engine's :class:`~matching.engine.Funds` hook: requesters' available
balances, refreshed from the ledger before each operation, less what a reseller's markup will take
and capped by an API key's budget. :class:`OrderDesk` puts orders on the engine's book for the
market: offers with a daily schedule only while their window is open (clipped to it) and requests
only once their time frame starts; it amends, cancels and expires open orders and writes their
state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import asyncpg
import orjson

from billing import ledger, reseller_terms
from billing.ledger import Amount
from matching import store
from matching.engine import Engine, MatchResult
from matching.orders import Offer, Request, is_expired, schedule_window
from matching.settlement import covered_charge
from matching.terms import amendment

_RECLIP_S = 60  # a scheduled offer is re-placed once its window's end cuts its deals this much shorter


class Commit(Protocol):
    """Makes one operation durable (the market's commit): what ``result`` matched and, when
    ``queued`` names an order, that order's new place in time priority."""

    def __call__(self, result: MatchResult, *, queued: str | None = None) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class Amended:
    """What an amendment did, for the market to make durable in one transaction with its fills."""

    result: MatchResult
    terms: dict[str, Any]  # the order's terms as amended
    requeued: bool  # the engine gave the order a fresh place in time priority


class LedgerFunds:
    """The engine's view of requesters' available balances, refreshed from the ledger before
    each operation; the ledger refuses for real when the operation is committed."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.available: dict[str, int] = {}

    def try_reserve(self, requester: str, amount: Amount) -> bool:
        if self.available.get(requester, 0) < amount:
            return False
        self.available[requester] -= amount
        return True

    def release(self, requester: str, amount: Amount) -> None:
        self.available[requester] = self.available.get(requester, 0) + amount

    async def refresh(self, requesters: Iterable[str]) -> None:
        """Read the requesters' balances again, less what a reseller's markup will take."""
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
            self.available[name] = funds if bps is None else covered_charge(funds, bps)

    def expect_release(self, requester: str, amount: Amount) -> None:
        """The engine is about to release ``amount`` it reserved before the last reading, for a
        deal whose hold the ledger still has or just voided into the balance: count it out, so
        the release leaves that reading as the ledger has it."""
        self.available[requester] = self.available.get(requester, 0) - amount

    async def limit_to_key(self, account: str, key_id: str | None) -> bool:
        """Cap the account's available funds for this operation at the key's budget, if any."""
        if key_id is None:
            return False
        budget = await store.key_budget(self._pool, key_id)
        if budget is None:
            return False
        self.available[account] = min(self.available.get(account, 0), budget)
        return True


class OrderDesk:
    """Places, amends, cancels and expires open orders on ``engine`` for the market, which
    serialises every call (its lock), validates the caller and commits what the engine matched."""

    def __init__(
        self, pool: asyncpg.Pool, engine: Engine, funds: LedgerFunds, *, clock: Callable[[], float]
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._funds = funds
        self._clock = clock
        # Open orders the engine holds only part of the time: offers with a daily schedule (as
        # placed; the engine holds them, clipped to the window, while it is open) and requests
        # waiting for their time frame to start (with the IPs already filled and the key used).
        self.scheduled: dict[str, Offer] = {}
        self.waiting: dict[str, tuple[Request, int, str | None]] = {}

    async def restore(self, rows: list[asyncpg.Record]) -> list[MatchResult]:
        """Put the open orders of ``store.open_orders`` back on the book (or hold them); returns
        what placing them matched."""
        await self._funds.refresh(row["account"] for row in rows if row["side"] == "request")
        used = await store.used_exits(self._pool)
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
                if row["filled"] >= request.ips:
                    # Left open by an amendment down to its fills, which the engine now refuses.
                    await self._close(request.request_id, "done")
                    continue
                exits = used.get(request.request_id, ())
                replayed.append(
                    self._engine.restore_request(request, filled=row["filled"], exits=exits, now=now)
                )
        return replayed

    # -- placing ---------------------------------------------------------------------------

    async def place_offer(self, offer: Offer) -> MatchResult:
        """Place a new offer, or hold it while its schedule's window is closed."""
        await self._funds.refresh(status.request.requester for status in self._engine.resting_requests())
        now = self._clock()
        held = self._hold_offer(offer, now)
        return MatchResult(rested=True) if held is None else self._engine.place_offer(held, now)

    async def place_request(self, request: Request, key_id: str | None) -> tuple[Request, MatchResult]:
        """Place a new request, or hold it until its time frame starts; returns it as placed
        (immediate-or-cancel when ``key_id`` has a spend limit) and what it matched."""
        account = request.requester
        await self._funds.refresh([account])
        if await self._funds.limit_to_key(account, key_id):
            request = replace(request, rest=False)
        if self._hold_request(request, 0, key_id, self._clock()):
            return request, MatchResult(rested=True)
        return request, self._engine.place_request(request, self._clock())

    async def place_spot(self, request: Request, key_id: str | None) -> MatchResult:
        """Place a spot request (never held, never resting) within ``key_id``'s budget."""
        await self._funds.refresh([request.requester])
        await self._funds.limit_to_key(request.requester, key_id)
        return self._engine.place_request(request, self._clock())

    def _hold_offer(self, offer: Offer, now: float) -> Offer | None:
        """The offer as the engine may hold it at ``now``: as it is without a schedule; inside its
        window, for deals that end before the window closes; ``None`` outside it (the desk keeps
        it, and puts it on the book when its window opens)."""
        if offer.schedule is None:
            return offer
        self.scheduled[offer.offer_id] = offer
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
        self.waiting[request.request_id] = (request, filled, key_id)
        return True

    # -- changing open orders ------------------------------------------------------------------

    async def amend(
        self, account: str, order_id: str, side: str, stored_terms: str, changes: dict[str, Any]
    ) -> Amended:
        """Amend ``account``'s open order (``side`` and ``stored_terms`` as its row has them) on the
        book or in hold; returns what a changed price matched, the new terms and whether the
        engine re-queued the order, for the market to store with the fills in one transaction.
        Raises ``InvalidOrder`` for bad values or a field that side does not have."""
        now = self._clock()
        kwargs = amendment(side, changes)
        changed = {name: value for name, value in kwargs.items() if value is not None}
        result = MatchResult(rested=True)
        position = self._engine.queue_position(order_id)
        if side == "offer":
            scheduled = self.scheduled.get(order_id)
            if scheduled is not None:
                self.scheduled[order_id] = replace(scheduled, **changed)
            if scheduled is None or self._engine.is_resting(order_id):
                await self._funds.refresh(
                    status.request.requester for status in self._engine.resting_requests()
                )
                result = self._engine.amend_offer(order_id, now=now, **kwargs)
        elif order_id in self.waiting:
            request, filled, key_id = self.waiting[order_id]
            self.waiting[order_id] = (replace(request, **changed), filled, key_id)
        else:
            await self._funds.refresh([account])
            result = self._engine.amend_request(order_id, now=now, **kwargs)
        terms = orjson.loads(stored_terms)
        terms.update({k: (v if k == "ips" else str(v)) for k, v in kwargs.items() if v is not None})
        # Whether the order lost its time priority is the engine's call: its place changed.
        after = self._engine.queue_position(order_id)
        return Amended(result, terms, requeued=after is not None and after != position)

    async def cancel(self, order_id: str) -> None:
        """Take an open order off the book (or out of hold) and mark it cancelled."""
        self.scheduled.pop(order_id, None)
        self.waiting.pop(order_id, None)
        if self._engine.is_resting(order_id):
            self._engine.cancel(order_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.update_order(conn, order_id, state="cancelled")

    # -- on the clock -----------------------------------------------------------------------

    async def pass_time(self, now: float, commit: Commit) -> None:
        """Expire orders whose time ran out and move held orders on and off the book; ``commit``
        makes each placement durable before the next."""
        for order_id in self._engine.expire(now):
            scheduled = self.scheduled.get(order_id)
            if scheduled is not None and not is_expired(scheduled.expires_at, now):
                continue  # its window closed: it waits for the next one
            await self._expired(order_id)
        await self._reschedule(now, commit)

    async def _reschedule(self, now: float, commit: Commit) -> None:
        """Put offers on the book as their windows open and take them off as they close (a held
        offer is re-placed, clipped again, as its window's end nears), and requests as their time
        frames start; each placement is stored with the order's new place in time priority.
        Orders that expired meanwhile are marked so."""
        for offer_id, offer in list(self.scheduled.items()):
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
            await self._funds.refresh(status.request.requester for status in self._engine.resting_requests())
            await commit(self._engine.place_offer(admitted, now), queued=offer_id)
        for request_id, (request, filled, key_id) in list(self.waiting.items()):
            if is_expired(request.expires_at, now):
                await self._expired(request_id)
            elif request.starts_at is not None and request.starts_at <= now:
                del self.waiting[request_id]
                await self._funds.refresh([request.requester])
                if await self._funds.limit_to_key(request.requester, key_id):
                    request = replace(request, rest=False)
                result = self._engine.restore_request(request, filled=filled, exits=(), now=now)
                resting = self._engine.is_resting(request_id)
                await commit(result, queued=request_id if resting else None)
                if not resting:
                    await self._close(request_id, "done")

    async def _expired(self, order_id: str) -> None:
        self.scheduled.pop(order_id, None)
        self.waiting.pop(order_id, None)
        await self._close(order_id, "expired")

    async def _close(self, order_id: str, state: str) -> None:
        """Mark the open order ``state`` (done, expired) in a transaction of its own."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.update_order(conn, order_id, state=state)
