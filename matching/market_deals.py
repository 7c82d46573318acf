"""The market's deal side: the deals not closed yet, and every write that moves one.

Each fill of the engine is opened as a deal (:mod:`matching.deals`) inside the transaction of the
operation that made it, with its reserve (``billing.holds``, one hold per deal, referenced by the
deal id). The market drives the deals on a tick: a deal becomes active when its exit is live in the
pool (the agent's heartbeat is the provider's "ready"), ends when its time frame does, its
allowance is used or its exit goes away, is reconciled from both meters once the usage of its last
streams had time to be published and the billing workers ingested the usage stream past that, and
is settled through its hold (payout, commission, release) with a reseller's markup charged on top.
The exits of active deals are published to Redis for the gateway
(:mod:`matching.routing`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import asyncpg
import orjson
from redis.asyncio import Redis

from billing import holds, ledger, reseller_terms
from billing.ledger import Amount
from matching import routing, store
from matching.deals import Actor, Deal, Event, EventKind, State, apply, propose
from matching.engine import Engine, Fill, MatchResult
from matching.market_orders import LedgerFunds
from matching.settlement import (
    SettlementAccounts,
    automatic_resolution,
    billable_seconds,
    hold_payouts,
    reconcile,
    settle,
)
from pool.registry import ExitRegistry

if TYPE_CHECKING:
    from matching.market import MarketSettings

log = logging.getLogger("ipsx.market")

_LIVE = (State.PROPOSED, State.ACTIVE)  # deals that hold room on their exit


def _accounts() -> SettlementAccounts:
    return SettlementAccounts(
        reserve=lambda name: holds.hold_account(ledger.requester_account(name)),
        available=ledger.requester_account,
        payout=ledger.provider_account,
        commission=ledger.COMMISSION,
    )


class DealBook:
    """The deals not closed yet, kept in memory and written through to PostgreSQL on every
    transition; the live ones hold room on their exit in ``engine``. The market serialises every
    call (its lock) and rebuilds a fresh book when a write fails."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        registry: ExitRegistry,
        engine: Engine,
        funds: LedgerFunds,
        settings: MarketSettings,
        *,
        clock: Callable[[], float],
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._registry = registry
        self._engine = engine
        self._funds = funds
        self._settings = settings
        self._clock = clock
        self.deals: dict[str, Deal] = {}  # changed only through _keep and _drop
        # The same deals' ids by (requester, exit id), each group in the order of ``deals``: a
        # route's successor is looked for among the deals on its exit, not among all of them.
        self._by_route: dict[tuple[str, str], dict[str, None]] = {}

    def restore(self, row: asyncpg.Record) -> None:
        """Take back a deal of ``store.live_deals``; a live one takes its room in the engine again."""
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
        self._keep(deal)
        if deal.state in _LIVE:
            self._engine.restore_deal(fill)

    def routes(self) -> dict[str, dict[str, str | tuple[str, int]]]:
        """The exits of active deals by requester: ``{exit_id: (deal_id, allowance)}``."""
        routes: dict[str, dict[str, str | tuple[str, int]]] = {}
        for deal in self.deals.values():
            if deal.state is State.ACTIVE:
                routes.setdefault(deal.requester, {})[deal.exit_id] = (deal.deal_id, deal.traffic_bytes)
        return routes

    # -- opening deals -----------------------------------------------------------------------

    async def open_in(
        self, conn: asyncpg.Connection, fills: Iterable[Fill], *, now: int, spot: bool, key_id: str | None
    ) -> list[tuple[Fill, Deal]]:
        """Open a deal for each fill in the caller's transaction on ``conn``: its row, its reserve
        and, unless it is a spot deal, one more IP filled on its request. Raises as the ledger and
        PostgreSQL do; the deals join the book with :meth:`opened` once the transaction committed."""
        new: list[tuple[Fill, Deal]] = []
        for fill in fills:
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
        return new

    async def opened(self, new: list[tuple[Fill, Deal]]) -> None:
        """The deals :meth:`open_in` wrote are committed: keep them and activate those whose exit is live."""
        for _, deal in new:
            self._keep(deal)
        if new:
            await self.activate([deal.deal_id for _, deal in new])

    async def apply(self, deal_id: str, event: Event, conn: asyncpg.Connection | None = None) -> Deal:
        """Apply ``event`` to the deal and save it (on ``conn``, else in a transaction of its own);
        returns the deal after it. Raises ``EventRefused`` when its state does not take the event."""
        deal, record = apply(self.deals[deal_id], event)
        if conn is None:
            async with self._pool.acquire() as own, own.transaction():
                await store.save_deal(own, deal, record)
        else:
            await store.save_deal(conn, deal, record)
        if deal.state in (State.SETTLED, State.CANCELLED, State.EXPIRED):
            self._drop(deal)
        else:
            self._keep(deal)
        return deal

    def _keep(self, deal: Deal) -> None:
        """Keep ``deal`` (new, or the same deal after a transition) in ``deals`` and the route index."""
        self.deals[deal.deal_id] = deal
        self._by_route.setdefault((deal.requester, deal.exit_id), {})[deal.deal_id] = None

    def _drop(self, deal: Deal) -> None:
        """Forget a closed deal."""
        self.deals.pop(deal.deal_id, None)
        route = (deal.requester, deal.exit_id)
        group = self._by_route.get(route)
        if group is not None:
            group.pop(deal.deal_id, None)
            if not group:
                del self._by_route[route]

    async def activate(self, deal_ids: list[str]) -> None:
        """Proposed deals whose exit is live become active and routable."""
        live = await self._registry.live_ids()
        now = int(self._clock())
        for deal_id in deal_ids:
            deal = self.deals.get(deal_id)
            if deal is None or deal.state is not State.PROPOSED or deal.exit_id not in live:
                continue
            deal = await self.apply(deal_id, Event(EventKind.READY, Actor.PROVIDER, max(now, deal.last_at)))
            if deal.state is State.ACTIVE:
                await routing.publish(
                    self._redis, deal.requester, deal.exit_id, deal.deal_id, deal.traffic_bytes
                )

    # -- the lifecycle on the clock -----------------------------------------------------------

    async def advance(
        self, deal: Deal, now: int, live: set[str], carried: int, ingested: float
    ) -> MatchResult | None:
        """Move one deal on by its timers; ``carried`` is what its finished streams metered and
        ``ingested`` the time up to which the usage stream is ingested (``billing.worker.ingested_until``).

        Returns what the engine matched in the room the deal's end freed (for the market to
        commit), or ``None`` when the deal did not end.
        """
        at = max(now, deal.last_at)
        if deal.state is State.PROPOSED and now - deal.created_at >= self._settings.ready_timeout:
            return await self.end(deal, Event(EventKind.READY_TIMEOUT, Actor.SYSTEM, at))
        elif deal.state is State.ACTIVE and deal.activated_at is not None:
            if now >= deal.activated_at + deal.duration_s:
                return await self.end(deal, Event(EventKind.TIME_FRAME_ENDED, Actor.SYSTEM, at))
            elif deal.traffic_bytes > 0 and carried >= deal.traffic_bytes:
                # Its reserve covers no more: new streams go to other deals (or a new spot deal).
                return await self.end(deal, Event(EventKind.ALLOWANCE_USED, Actor.SYSTEM, at))
            elif deal.exit_id not in live:
                return await self.end(deal, Event(EventKind.STOPPED, Actor.GATEWAY, at))
        elif deal.state in (State.COMPLETED, State.DISPUTED, State.RESOLVED):
            due = (deal.ended_at or deal.last_at) + self._settings.settle_grace
            # Usage published within the grace may still wait in the stream (a dead worker's
            # entries are claimed only after a minute): settle once it is ingested, not before.
            if self._clock() >= due and ingested >= due:
                await self.close(deal, at)
        return None

    async def end(self, deal: Deal, event: Event) -> MatchResult:
        """The deal stops serving: unroute its exit, cancel or complete it, and free its room.

        Returns what the engine matched in that room (resting requests it now fills), which the
        market commits.
        """
        await routing.withdraw(self._redis, deal.requester, deal.exit_id, deal.deal_id, self._successor(deal))
        async with self._pool.acquire() as conn, conn.transaction():
            ended = await self.apply(deal.deal_id, event, conn)
            if ended.state is State.CANCELLED and deal.reserve > 0:
                await holds.resolve_in(conn, deal.deal_id, ())
        # The room it frees is judged on balances as the ledger has them now (a requester may have
        # topped up), and its reserve is released from that reading. Only the requesters the
        # engine may reserve for in that room are read: the others' are read before the next
        # call that may reserve for them, as every call does.
        at = float(event.at)
        await self._funds.refresh(self._engine.end_deal_requesters(deal.deal_id, at))
        self._funds.expect_release(deal.requester, deal.reserve)
        return self._engine.end_deal(deal.deal_id, at)

    def _successor(self, deal: Deal) -> str | None:
        """Another active deal of ``deal``'s requester on its exit, to route through it instead:
        the first in the order of ``deals``."""
        for deal_id in self._by_route.get((deal.requester, deal.exit_id), ()):
            if deal_id != deal.deal_id and self.deals[deal_id].state is State.ACTIVE:
                return deal_id
        return None

    async def close(self, deal: Deal, at: int) -> None:
        """Reconcile both meters, resolve a mismatch by the automatic rule, settle the hold."""
        async with self._pool.acquire() as conn, conn.transaction():
            # A dispute the requester opened is an operator's to decide (see ``Market.resolve``);
            # one the meters opened is decided here by the automatic rule.
            complained = deal.state is State.DISPUTED
            if deal.gateway_bytes is None and deal.state in (State.COMPLETED, State.DISPUTED):
                gateway, agent = await store.metered(conn, deal.deal_id)
                reconciliation = reconcile(gateway, agent, self._settings.tolerance)
                deal = await self.apply(
                    deal.deal_id,
                    Event(EventKind.METERS_RECONCILED, Actor.SYSTEM, at, reconciliation=reconciliation),
                    conn,
                )
                if deal.state is State.DISPUTED and not complained:
                    deal = await self.apply(
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
                deal, deal.billable_bytes, billable_seconds(deal), self._settings.commission_bps
            )
            if deal.reserve > 0:
                await holds.resolve_in(conn, deal.deal_id, hold_payouts(settlement, _accounts()))
            await reseller_terms.charge_markup_in(conn, deal.deal_id, deal.requester, settlement.charge)
            await store.settled(
                conn, deal.deal_id, int(settlement.charge), int(settlement.commission), deal.billable_bytes
            )
            await self.apply(deal.deal_id, Event(EventKind.SETTLE, Actor.SYSTEM, at), conn)
        log.info(
            "deal %s settled: %d bytes, charge %s IPSX (commission %s)",
            deal.deal_id,
            deal.billable_bytes,
            ledger.format_amount(settlement.charge),
            ledger.format_amount(settlement.commission),
        )
