"""Opening a requester's stream through an exit: selection, dial, failover, and its usage event."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from billing.usage import UsageEvent, UsagePublisher
from gateway.allowance import AllowanceGuard, Watched
from gateway.conn import Conn
from gateway.metrics import GatewayStats
from gateway.reuse import ReusedStream
from gateway.targeting import BAN_SESSION_EXIT, Targeting
from gateway.tickets import Ticket
from gateway.tunnel import TunnelHub
from gateway.tunnel_streams import DialError
from gateway.wire import LIMIT_CUTS, DialErrorCode
from matching.orders import RequestFilters, order_of
from matching.routing import DealRoutes
from pool.bans import DEFAULT_BAN_TTL, BanBook
from pool.health import ExitHealth
from pool.select import Choice, Selector


class NoExit(Exception):
    """No live exit satisfies the requester's filters (never a silent fallback to others)."""


class BadBan(NoExit):
    """A ban that names no exit: ``1`` (or a domain) without a session bound to one."""


class NoDeal(Exception):
    """The market opened no deal for the requester: ``reason`` is a key of :data:`NO_DEAL`
    (``payment_required`` is the gateway's own)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Stream:
    """One open stream through an exit, from dial to its usage event."""

    conn: Conn
    stream_id: str
    exit_id: str
    provider: str
    requester: str
    protocol: str
    target: str
    deal_id: str | None
    attempts: int
    opened_at: float = field(default_factory=time.time)
    finished: bool = False
    watched: Watched | None = None  # held to its deal's traffic allowance while it runs

    @property
    def cut(self) -> tuple[int, str] | None:
        """(bytes relayed up, outcome) when the agent cut the stream and said where (gateway.reuse)."""
        side = self.conn.transport
        if isinstance(side, ReusedStream) and side.cut is not None:
            return side.cut, side.cut_reason
        return None

    def cut_short(self, down: int, reason: str) -> None:
        """Before this node ends the stream early (``reason``: its deal's allowance, its client
        gone): nothing more is relayed, not even what the stream's connection buffered here; the
        agent hears that ``down`` bytes of the download were relayed, so it stops sending and
        meters that, and what it sent meanwhile is dropped here (on a data connection where both
        ends agreed to, gateway.reuse)."""
        self.conn.drop_buffered()  # empty already once a splice took the connection over
        side = self.conn.transport
        if isinstance(side, ReusedStream):
            side.cut_here(down, reason, direction="down")


class ExitDialer:
    """Selects an exit for a targeting, dials through it, retries another exit when the dial fails.

    A failed dial is retried only before any byte reached the client and only for failures that
    another exit may not share (timeouts, the exit's own failure); a policy refusal, a name that
    does not resolve or a destination that refuses is answered at once.
    """

    def __init__(
        self,
        hub: TunnelHub,
        selector: Selector,
        publisher: UsagePublisher,
        *,
        node: str,
        max_attempts: int,
        routes: DealRoutes | None = None,
        guard: AllowanceGuard | None = None,
        bans: BanBook | None = None,
        ban_ttl: int = DEFAULT_BAN_TTL,
        health: ExitHealth | None = None,
        stats: GatewayStats | None = None,
    ) -> None:
        self._hub = hub
        self._stats = GatewayStats() if stats is None else stats
        self._health = health
        self._bans = bans
        self._ban_ttl = ban_ttl
        self._guard = guard
        self._selector = selector
        self._publisher = publisher
        self._node = node
        self._max_attempts = max_attempts
        self._routes = routes

    async def _ask_spot(self, targeting: Targeting, protocol: str) -> dict[str, str]:
        """Ask the market for spot deals matching the targeting; their routes, or NoDeal."""
        if self._routes is None:
            raise RuntimeError("spot deals asked of a gateway without the market")
        filters = RequestFilters(
            country=targeting.filters.country,
            region=targeting.filters.region,
            city=targeting.filters.city,
            asn=targeting.filters.asn,
            type=targeting.filters.type,
            protocol=_MARKET_PROTOCOL.get(protocol, "https"),
        )
        answer = await self._routes.ask_spot(targeting.account, filters, targeting.key, targeting.maxprice)
        if answer != "ok":
            self._stats.refused(answer)
            raise NoDeal(answer)
        return await self._routes.routes(targeting.account)

    def _of_deal(self, routes: dict[str, str], targeting: Targeting) -> dict[str, str]:
        """The routes the targeting may use: all, or those of one deal or of one order's deals."""
        if targeting.deal is not None:
            routes = {exit_id: deal for exit_id, deal in routes.items() if deal == targeting.deal}
        if targeting.order is not None:
            routes = {exit_id: deal for exit_id, deal in routes.items() if order_of(deal) == targeting.order}
        guard = self._guard
        if guard is not None:  # a deal that carried its allowance takes no new stream
            routes = {exit_id: deal for exit_id, deal in routes.items() if not guard.exhausted(deal)}
        return routes

    async def _select(
        self,
        targeting: Targeting,
        excluded: set[str],
        deal_exits: dict[str, str] | None,
        accept: Callable[[str], bool],
    ) -> Choice | None:
        started = time.perf_counter()
        choice = await self._selector.select(
            targeting.account,
            targeting.filters,
            session=targeting.session,
            session_ttl=targeting.sessttl,
            exclude=frozenset(excluded),
            only=None if deal_exits is None else frozenset(deal_exits),
            accept=accept,
        )
        self._stats.selection.observe(time.perf_counter() - started)
        return choice

    async def is_banned(self, account: str, host: str, exit_id: str) -> bool:
        """Whether ``account`` banned ``exit_id`` for ``host`` (a kept-alive stream asks before
        each request: a ban from another connection applies to it too)."""
        return self._bans is not None and exit_id in await self._bans.banned(account, host)

    async def _banned(self, targeting: Targeting, host: str) -> frozenset[str]:
        """The exits this connection may not use: the requester's bans for the host, after
        recording the one the connection asks for (``targeting.ban``). Raises BadBan."""
        bans = self._bans
        if bans is None:
            return frozenset()
        wanted = targeting.ban
        if wanted is not None:
            domain = host
            if len(wanted) == 16 and "." not in wanted:  # an exit id from X-IPSX-Exit
                exit_id: str | None = wanted
            else:
                if wanted != BAN_SESSION_EXIT:
                    domain = wanted
                if targeting.session is None:
                    self._stats.refused("bad_ban")
                    raise BadBan("ban 1 needs a session; without one, name the exit id from X-IPSX-Exit")
                exit_id = await bans.session_exit(targeting.account, targeting.session)
            if exit_id is not None:  # a session not bound yet has no exit to ban
                await bans.ban(targeting.account, domain, exit_id, self._ban_ttl)
        return await bans.banned(targeting.account, host)

    async def open(
        self,
        targeting: Targeting,
        host: str,
        port: int,
        protocol: str,
        *,
        avoid: frozenset[str] = frozenset(),
    ) -> Stream:
        """A stream to ``host:port`` through an exit the targeting allows, none of ``avoid``.

        Raises NoExit (BadBan for a ban naming no exit), NoDeal or the last DialError.
        """
        banned = await self._banned(targeting, host)
        excluded: set[str] = set(avoid) | banned
        refusals: list[str] = []  # the first refusal an exit's advertised policy would give
        hub = self._hub

        def accept(exit_id: str) -> bool:
            reason = hub.refusal(exit_id, host, port, protocol)
            if reason is not None and not refusals:
                refusals.append(reason)
            return reason is None

        last_error: DialError | None = None
        # With the market in force, only the exits of the requester's active deals serve it;
        # when none of them fits, the market is asked once for spot deals that do.
        deal_exits: dict[str, str] | None = None
        asked_spot = False
        if self._routes is not None:
            deal_exits = self._of_deal(await self._routes.routes(targeting.account), targeting)
            if self._routes.cut_off(targeting.account):
                self._stats.refused("payment_required")
                raise NoDeal("payment_required")
            if not deal_exits and (targeting.deal is not None or targeting.order is not None):
                # A deal opened since the routes were cached (an order placed a moment ago):
                # read them afresh rather than refuse a connection that names it.
                self._routes.forget(targeting.account)
                deal_exits = self._of_deal(await self._routes.routes(targeting.account), targeting)
        for attempt in range(1, self._max_attempts + 1):
            choice = await self._select(targeting, excluded, deal_exits, accept)
            pinned = targeting.deal is not None or targeting.order is not None  # no spot deal then
            if choice is None and deal_exits is not None and not asked_spot and not pinned:
                asked_spot = True
                deal_exits = await self._ask_spot(targeting, protocol)
                choice = await self._select(targeting, excluded, deal_exits, accept)
            if choice is None:
                break
            deal_id = targeting.deal if deal_exits is None else deal_exits[choice.exit_id]
            ticket = Ticket(
                stream=os.urandom(16).hex(),
                node=self._node,
                boot=self._hub.boot,
                exit=choice.exit_id,
                requester=targeting.account,
                deal=deal_id or "",
                protocol=protocol,
                target=f"{host}:{port}",
                attempts=attempt,
            )
            info = self._hub.exit_info(choice.exit_id)  # read before the await: the link may drop
            health = self._health
            started = time.monotonic()
            try:
                if info is None:
                    raise DialError(DialErrorCode.EXIT, "exit is offline", exit_id=choice.exit_id)
                conn = await self._hub.open_stream(ticket, host, port)
            except DialError as error:
                self._stats.dial_error(error.code)
                if health is not None:
                    fault = error.code in _EXIT_FAULTS
                    health.dial_failed(choice.exit_id, error.code.value, exit_fault=fault)
                last_error = error
                if not error.code.retryable:
                    raise
                excluded.add(choice.exit_id)
                continue
            except BaseException:
                if health is not None:
                    health.dial_abandoned(choice.exit_id)  # the client left mid-dial
                raise
            if health is not None:
                health.dial_ok(choice.exit_id, time.monotonic() - started)
            self._stats.stream_opened(protocol)
            return Stream(
                conn=conn,
                stream_id=ticket.stream,
                exit_id=choice.exit_id,
                provider=info.provider,
                requester=targeting.account,
                protocol=protocol,
                target=ticket.target,
                deal_id=deal_id,
                attempts=attempt,
                watched=self._watch(targeting.account, deal_id),
            )
        if last_error is not None:
            raise last_error
        if refusals:  # every matching exit's agent would refuse: its reason, as a policy refusal
            self._stats.refused("policy")
            raise DialError(DialErrorCode.POLICY, refusals[0])
        self._stats.refused("no_exit")
        if banned:
            raise NoExit("no live exit matches the requested filters but those banned for this domain")
        raise NoExit("no live exit matches the requested filters")

    def _watch(self, requester: str, deal_id: str | None) -> Watched | None:
        if self._guard is None or self._routes is None or not deal_id:
            return None
        allowance = self._routes.allowance(requester, deal_id)
        return self._guard.watch(requester, deal_id, allowance) if allowance > 0 else None

    def finish(
        self, stream: Stream, *, up: int, down: int, outcome: str, closed_at: float | None = None
    ) -> None:
        """Record the stream's usage exactly once and release the exit's load slot."""
        if stream.finished:
            return
        stream.finished = True
        cut = stream.cut
        if cut is not None:
            # What this node wrote past the agent's cut was dropped there, never relayed: the
            # upload is what the agent relayed, so both meters count the same bytes.
            up = min(up, cut[0])
            if cut[1] in LIMIT_CUTS:  # the provider's cap or hours, which this node cannot see
                outcome = cut[1]
        self._stats.stream_closed(stream.protocol, up, down)
        self._hub.stream_closed(stream.exit_id)
        closed = max(stream.opened_at, time.time() if closed_at is None else closed_at)
        if self._health is not None:
            seconds = closed - stream.opened_at
            self._health.stream_done(
                stream.exit_id, up + down, seconds, ok=outcome != "exit_lost", reason=outcome
            )
        if stream.watched is not None and self._guard is not None:
            self._guard.done(stream.watched, up + down)
        self._publisher.publish(
            UsageEvent(
                event_id=stream.stream_id,
                deal_id=stream.deal_id,
                requester=stream.requester,
                provider=stream.provider,
                exit_id=stream.exit_id,
                node=self._node,
                protocol=stream.protocol,
                target=stream.target,
                bytes_up=up,
                bytes_down=down,
                opened_at=stream.opened_at,
                closed_at=closed,
                outcome=outcome,
                attempts=stream.attempts,
            )
        )


# How dial failures are told to clients: HTTP status, X-IPSX-Error reason, SOCKS5 reply code.
DIAL_ERRORS: dict[DialErrorCode, tuple[int, str, int]] = {
    DialErrorCode.POLICY: (403, "destination_not_allowed", 2),
    DialErrorCode.DNS: (502, "dns_failed", 4),
    DialErrorCode.REFUSED: (502, "connection_refused", 5),
    DialErrorCode.UNREACHABLE: (502, "host_unreachable", 4),
    DialErrorCode.TIMEOUT: (504, "dial_timeout", 6),
    DialErrorCode.EXIT: (502, "exit_failed", 1),
}
NO_EXIT = (502, "no_exit_matches", 3)
# Dial failures that count against the exit's health: the destination's own (refused, does not
# resolve, unreachable, not allowed) say nothing about the exit.
_EXIT_FAULTS = frozenset({DialErrorCode.EXIT, DialErrorCode.TIMEOUT})
_MARKET_PROTOCOL = {"http": "http", "connect": "https", "socks5": "socks5"}  # stream kind → offer protocol
# The market opened no deal: status, X-IPSX-Error reason, SOCKS5 reply code, message.
NO_DEAL: dict[str, tuple[int, str, int, str]] = {
    "insufficient_funds": (402, "insufficient_funds", 2, "your balance does not cover a deal; top it up"),
    # why the market found no offer (matching.engine.Unmatched): none at all for the targeting,
    # none at the requester's prices, or none with room now
    "no_offer": (502, "no_offer_matches", 3, "no offer matches the requested targeting now, at any price"),
    "above_price": (
        502,
        "offers_above_price",
        3,
        "offers match the requested targeting, but none at your prices (maxprice, else your spot price cap)",
    ),
    "offers_busy": (
        502,
        "offers_busy",
        3,
        "the offers that match the requested targeting have no room for another deal now; try again",
    ),
    "unavailable": (503, "market_unavailable", 1, "the market did not answer; try again"),
    "payment_required": (
        402,
        "payment_required",
        2,
        "your unpaid usage is above the limit: sign your open invoices (ipsx pay) to go on",
    ),
}
