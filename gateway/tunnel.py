"""The provider tunnel endpoint: agents log in, declare exits, and lend data connections.

See ``gateway.wire`` for the protocol. A ``ProviderLink`` is one logged-in agent: its control
connection, its exits, its idle data connections, and what it advertised — its exit policy,
its limits and whether it is serving now. ``TunnelHub`` owns the links of this node, opens
streams through them for the front, and tells the exit selection which exits would refuse.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct

from billing.accounts import normalize_address
from billing.errors import InvalidAccount, MalformedEvent
from billing.usage import AgentReport, UsageEvent, UsagePublisher
from gateway import wire
from gateway.agent.caps import Limits, ServingState
from gateway.agent.policy import ExitPolicy
from gateway.conn import Conn, ConnectionClosed
from gateway.settings import GatewaySettings
from gateway.tickets import Ticket, TicketKey
from gateway.wire import DialErrorCode, WireError
from pool.models import EXIT_TYPES, ExitInfo
from pool.nodes import NodeInfo
from pool.registry import ExitRegistry

log = logging.getLogger("ipsx.gateway.tunnel")

_TOKEN_RE = re.compile(r"[0-9a-f]{64}")
_WORD_RE = re.compile(r"[a-z0-9_]{0,64}")
_COUNTRY_RE = re.compile(r"[a-z]{2}")
_STREAM_RE = re.compile(r"[0-9a-f]{32}")
_MAX_POOL = 256


class DialError(Exception):
    """A stream could not be opened through an exit."""

    def __init__(self, code: DialErrorCode, reason: str, *, exit_id: str | None = None) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason
        self.exit_id = exit_id


def exit_id_for(provider: str, bind: str) -> str:
    """A stable, opaque id for one exit of one provider."""
    return hashlib.sha256(f"{provider}|{bind}".encode()).hexdigest()[:16]


def parse_exits(raw: Any, provider: str, node: str, limit: int) -> list[ExitInfo]:
    """The exits an agent declares, validated; raises WireError."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= limit:
        raise WireError(f"between 1 and {limit} exits required")
    exits: dict[str, ExitInfo] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise WireError("an exit must be an object")
        bind = wire.field(item, "bind", str)
        country = wire.field(item, "country", str).lower()
        region = (wire.field(item, "region", str, optional=True) or "").lower()
        city = (wire.field(item, "city", str, optional=True) or "").lower()
        asn = wire.field(item, "asn", int, optional=True) or 0
        kind = wire.field(item, "type", str, optional=True) or "residential"
        if (
            not _COUNTRY_RE.fullmatch(country)
            or not _WORD_RE.fullmatch(region)
            or not _WORD_RE.fullmatch(city)
        ):
            raise WireError("bad exit location")
        if kind not in EXIT_TYPES or not 0 <= asn < 2**32 or len(bind) > 64:
            raise WireError("bad exit attributes")
        exit_id = exit_id_for(provider, bind)
        exits[exit_id] = ExitInfo(exit_id, provider, node, bind, country, region, city, asn, kind)
    return list(exits.values())


class ProviderLink:
    """One logged-in agent on this node, with the policy, limits and serving state it advertised."""

    def __init__(
        self,
        address: str,
        token: str,
        control: Conn,
        exits: list[ExitInfo],
        pool_size: int,
        *,
        policy: ExitPolicy | None = None,
        limits: Limits | None = None,
        state: ServingState | None = None,
    ) -> None:
        self.address = address
        self.token = token
        self.control = control
        self.exits = {info.exit_id: info for info in exits}
        self.pool_size = pool_size
        self.policy = policy or ExitPolicy()
        self.limits = limits or Limits()
        self.state = state or ServingState()
        self.idle: deque[Conn] = deque()
        self.waiters: deque[asyncio.Future[Conn]] = deque()
        self.active: dict[str, int] = dict.fromkeys(self.exits, 0)
        self.streams: set[str] = set()  # streams opened here whose agent report is still due
        self.closed = False
        self.last_seen = time.monotonic()
        self._acks: list[str] = []
        self._held: list[str] = []
        self._refused: list[str] = []

    def ack(self, stream: str) -> None:
        """Confirm to the agent, with the next batch, that its report of ``stream`` is in Redis."""
        self._reply(self._acks, stream)

    def hold(self, stream: str) -> None:
        """Tell the agent, with the next batch, to report ``stream`` again later (see ``_orphan``)."""
        self._reply(self._held, stream)

    def refuse(self, stream: str) -> None:
        """Tell the agent, with the next batch, that no node will take its report of ``stream``."""
        self._reply(self._refused, stream)

    def _reply(self, batch: list[str], stream: str) -> None:
        if not self._acks and not self._held and not self._refused:
            asyncio.get_running_loop().call_soon(self._send_replies)
        batch.append(stream)

    def _send_replies(self) -> None:
        replies = {"acked": self._acks, "held": self._held, "refused": self._refused}
        self._acks, self._held, self._refused = [], [], []
        if self.closed:
            return  # the agent reports them again through a node it still reaches
        for kind, streams in replies.items():
            if streams:
                self.control.write(wire.encode({"t": kind, "streams": streams}))

    def add_idle(self, conn: Conn) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self.idle) >= _MAX_POOL * 4:  # an agent may not park unlimited sockets here
            self.idle.popleft().close()
        self.idle.append(conn)

    async def take(self, wait: float) -> Conn:
        """An idle data connection, waiting for the agent to open one if none is left."""
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed and not conn.at_eof:
                return conn
        if self.closed:
            raise DialError(DialErrorCode.EXIT, "provider disconnected")
        waiter: asyncio.Future[Conn] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.control.write(wire.encode({"t": "more", "n": max(4, len(self.waiters))}))
        try:
            async with asyncio.timeout(wait):
                conn = await waiter
        except TimeoutError:
            raise DialError(DialErrorCode.TIMEOUT, "no data connection from the provider") from None
        return conn

    def close(self) -> None:
        self.closed = True
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(DialError(DialErrorCode.EXIT, "provider disconnected"))
        self.waiters.clear()
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        self.control.close()


class _AgentConn(Conn):
    """A connection an agent opened, until its first line says what it is for."""

    __slots__ = ("_hub", "_timer")

    def __init__(self, hub: TunnelHub) -> None:
        super().__init__()
        self._hub = hub
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        timeout = self._hub._settings.handshake_timeout
        self._timer = asyncio.get_running_loop().call_later(timeout, self._hub.refuse, self, "timeout")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._timer is not None:
            self._hub._first_line(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sorted()
        super().connection_lost(exc)

    def sorted(self) -> None:
        """The first line arrived (or the connection is gone): no more handshake deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class TunnelHub:
    """The provider links of one gateway node, and streams through them."""

    def __init__(
        self,
        settings: GatewaySettings,
        registry: ExitRegistry,
        publisher: UsagePublisher,
        *,
        tickets: TicketKey,
        boot: str,
        on_change: Callable[[], None] = lambda: None,
        on_login: Callable[[list[str]], None] = lambda exit_ids: None,
    ) -> None:
        self._settings = settings
        self._on_login = on_login  # told the exit ids of an agent that just logged in
        self._registry = registry
        self._publisher = publisher
        self._tickets = tickets
        self.boot = boot  # this process's boot token, in the tickets it signs
        self._on_change = on_change
        self._links: dict[str, ProviderLink] = {}  # by data token
        self._by_exit: dict[str, ProviderLink] = {}
        self._by_provider: dict[str, ProviderLink] = {}
        self._server: asyncio.Server | None = None
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._nodes: list[dict[str, str]] = []  # the live gateway nodes, as agents are told
        self._live: dict[str, str] = {}  # live node → its boot token

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        """Tell every connected agent when the set of live gateway nodes changes."""
        listed = [info.to_wire() for info in nodes]
        if listed == self._nodes:
            return
        self._nodes = listed
        self._live = {info.node: info.boot for info in nodes}
        message = wire.encode({"t": "nodes", "nodes": listed})
        for link in self._by_provider.values():
            if not link.closed:
                link.control.write(message)

    # what the front and the selector ask
    def is_available(self, exit_id: str) -> bool:
        """Whether ``exit_id`` has a live tunnel here and its agent takes new streams now (not
        outside its serving hours, no cap reached)."""
        link = self._by_exit.get(exit_id)
        return link is not None and not link.closed and link.state.serving

    def refusal(self, exit_id: str, host: str, port: int, protocol: str) -> str | None:
        """Why the agent of ``exit_id`` would refuse a ``protocol`` stream (``http``, ``connect``
        or ``https``, ``socks5``) to ``host:port``; None when, as far as the gateway can tell,
        it would accept. Checks what the agent advertised without any DNS lookup: its serving
        state, protocols, ports and blocked domain suffixes, and — only when ``host`` is an IP
        literal — its blocked networks and private ranges. The agent checks again after DNS."""
        link = self._by_exit.get(exit_id)
        if link is None or link.closed:
            return "exit is offline"
        if not link.state.serving:
            return link.state.reason
        return link.policy.refusal(host, port, protocol)

    def serving_state(self, exit_id: str) -> ServingState | None:
        """What the agent of ``exit_id`` last said about serving; None if it is not linked here."""
        link = self._by_exit.get(exit_id)
        return None if link is None else link.state

    def load(self, exit_id: str) -> int:
        link = self._by_exit.get(exit_id)
        return 0 if link is None else link.active.get(exit_id, 0)

    def exit_info(self, exit_id: str) -> ExitInfo | None:
        link = self._by_exit.get(exit_id)
        return None if link is None else link.exits.get(exit_id)

    @property
    def links(self) -> list[ProviderLink]:
        return list(self._by_provider.values())

    async def open_stream(self, ticket: Ticket, host: str, port: int) -> Conn:
        """A data connection on which the agent has dialed ``host:port`` from ``ticket.exit``.

        The agent gets the signed ticket with the dial. The caller owns the returned connection
        and must call ``stream_closed`` when done. Raises DialError.
        """
        exit_id, stream_id = ticket.exit, ticket.stream
        wire_ticket = ticket.to_wire()
        link = self._by_exit.get(exit_id)
        if link is None or link.closed:
            raise DialError(DialErrorCode.EXIT, "exit is offline", exit_id=exit_id)
        timeout = self._settings.dial_timeout
        conn = await link.take(timeout)
        link.active[exit_id] += 1
        try:
            conn.write(
                wire.encode(
                    {
                        "t": "dial",
                        "stream": stream_id,
                        "exit": exit_id,
                        "host": host,
                        "port": port,
                        "ticket": wire_ticket,
                        "mac": self._tickets.sign_wire(wire_ticket),
                    }
                )
            )
            conn.set_deadline(timeout)
            answer = wire.decode(await conn.read_line(wire.MAX_LINE))
            conn.clear_deadline()
        except TimeoutError:
            conn.abort()
            self.stream_closed(exit_id)
            raise DialError(
                DialErrorCode.TIMEOUT, "the exit did not answer in time", exit_id=exit_id
            ) from None
        except (ConnectionClosed, WireError, ValueError):
            conn.abort()
            self.stream_closed(exit_id)
            raise DialError(DialErrorCode.EXIT, "the exit dropped the connection", exit_id=exit_id) from None
        if answer["t"] == "ok":
            link.streams.add(stream_id)
            return conn
        conn.close()
        self.stream_closed(exit_id)
        try:
            code = DialErrorCode(str(answer.get("code")))
        except ValueError:
            code = DialErrorCode.EXIT
        reason = str(answer.get("reason", ""))[:200]
        raise DialError(code, reason or code.value, exit_id=exit_id)

    def stream_closed(self, exit_id: str) -> None:
        link = self._by_exit.get(exit_id)
        if link is not None and link.active.get(exit_id, 0) > 0:
            link.active[exit_id] -= 1

    # the endpoint agents dial
    async def start(self, host: str, port: int) -> int:
        """Listen for agents on ``host:port``; returns the bound port."""
        loop = asyncio.get_running_loop()
        context = None
        if self._settings.tunnel_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._settings.tunnel_cert, self._settings.tunnel_key)
        self._server = await loop.create_server(
            lambda: _AgentConn(self),
            host,
            port,
            backlog=2048,
            ssl=context,
            ssl_handshake_timeout=self._settings.handshake_timeout if context else None,
        )
        return int(self._server.sockets[0].getsockname()[1])

    def _first_line(self, conn: _AgentConn) -> None:
        """Sort a new connection by its first line: data connections are taken in right here,
        without a task (an agent opens one per stream); a hello starts the control task."""
        try:
            line = conn.take_line(wire.MAX_LINE)
            if line is None:
                return
            conn.sorted()
            first = wire.decode(line)
            if first["t"] == "data":
                self._accept_data(conn, first)
            elif first["t"] == "hello":
                task = asyncio.get_running_loop().create_task(self._control(conn, first))
                self._control_tasks.add(task)
                task.add_done_callback(self._control_tasks.discard)
            else:
                raise WireError("expected hello or data")
        except (WireError, ValueError) as exc:
            self.refuse(conn, str(exc))

    def refuse(self, conn: Conn, reason: str) -> None:
        log.info("tunnel connection refused: %s", reason)
        conn.write(wire.encode({"t": "error", "reason": reason[:200]}))
        conn.close()

    async def _control(self, conn: Conn, hello: dict[str, Any]) -> None:
        try:
            await self._serve_control(conn, hello)
        except (TimeoutError, ConnectionClosed, WireError, ValueError) as exc:
            self.refuse(conn, str(exc) if isinstance(exc, WireError) else type(exc).__name__)

    def _accept_data(self, conn: Conn, message: dict[str, Any]) -> None:
        token = wire.field(message, "token", str)
        link = self._links.get(token) if _TOKEN_RE.fullmatch(token) else None
        if link is None or link.closed or not hmac.compare_digest(token, link.token):
            raise WireError("unknown data token")
        link.add_idle(conn)

    async def _serve_control(self, conn: Conn, hello: dict[str, Any]) -> None:
        settings = self._settings
        address = wire.field(hello, "address", str)
        if wire.field(hello, "v", int) != wire.PROTOCOL_VERSION:
            raise WireError("unsupported protocol version")
        try:
            address = normalize_address(address)
        except InvalidAccount:
            raise WireError("bad address") from None
        nonce = secrets.token_hex(16)
        conn.write(wire.encode({"t": "challenge", "nonce": nonce, "node": settings.node_id}))
        async with asyncio.timeout(settings.handshake_timeout):
            login = wire.decode(await conn.read_line(wire.MAX_LINE), "login")
        signature = wire.field(login, "signature", str)
        try:
            signer = Account.recover_message(
                encode_defunct(text=wire.login_message(settings.node_id, nonce)), signature=signature
            )
        except Exception:  # eth-account raises several types for malformed signatures
            raise WireError("bad signature") from None
        if signer != address:
            raise WireError("signature does not match the address")
        exits = parse_exits(login.get("exits"), address, settings.node_id, settings.max_exits_per_agent)
        pool_size = min(_MAX_POOL, max(1, wire.field(login, "pool", int, optional=True) or 16))
        policy = ExitPolicy.from_wire(login.get("policy"))
        limits = Limits.from_wire(login.get("policy"))
        state = ServingState.from_wire(login.get("state"))

        previous = self._by_provider.get(address)
        if previous is not None:
            await self._drop(previous, "replaced by a new login")
        link = ProviderLink(
            address, secrets.token_hex(32), conn, exits, pool_size, policy=policy, limits=limits, state=state
        )
        self._links[link.token] = link
        self._by_provider[address] = link
        for exit_id in link.exits:
            self._by_exit[exit_id] = link
        await self._registry.register(exits)
        self._on_change()
        self._on_login(list(link.exits))
        conn.write(
            wire.encode(
                {
                    "t": "welcome",
                    "token": link.token,
                    "heartbeat": settings.heartbeat_interval,
                    "exits": {info.bind: info.exit_id for info in exits},
                    "nodes": self._nodes,
                }
            )
        )
        log.info(
            "provider %s online with %d exit(s)%s",
            address,
            len(exits),
            "" if state.serving else f", not serving ({state.reason})",
        )
        try:
            await self._control_loop(link)
        finally:
            await self._drop(link, "control connection closed")

    async def _control_loop(self, link: ProviderLink) -> None:
        silence = self._settings.heartbeat_interval * 3
        # The deadline is re-armed by heartbeats only: an agent that keeps reporting usage but
        # stopped heartbeating is as dead as a silent one.
        link.control.set_deadline(silence)
        while True:
            try:
                line = await link.control.read_line(wire.MAX_LINE)
            except TimeoutError:
                log.info("provider %s silent for %.0fs, dropping it", link.address, silence)
                return
            except (ConnectionClosed, ValueError):
                return
            try:
                message = wire.decode(line)
                kind = message["t"]
                if kind == "hb":
                    link.control.set_deadline(silence)
                    await self._registry.heartbeat(self._settings.node_id, list(link.exits))
                elif kind == "usage":
                    self._agent_report(link, message)
                elif kind == "state":
                    self._state_report(link, message)
                else:
                    raise WireError(f"unexpected message {kind[:20]!r}")
            except WireError as exc:
                log.warning("provider %s sent a bad message: %s", link.address, exc)
                return

    def _state_report(self, link: ProviderLink, message: dict[str, Any]) -> None:
        """The agent starts or stops taking streams (serving hours, caps): the selector sees it
        through ``is_available`` at the next pick."""
        state = ServingState.from_wire(message)
        if state != link.state:
            link.state = state
            if state.serving:
                log.info("provider %s serving again", link.address)
            else:
                log.info("provider %s not serving: %s", link.address, state.reason)

    def _agent_report(self, link: ProviderLink, message: dict[str, Any]) -> None:
        stream = wire.field(message, "stream", str)
        exit_id = wire.field(message, "exit", str)
        if exit_id not in link.exits:
            return  # not an exit of this agent: ignore, never trust
        up, down = wire.field(message, "up", int), wire.field(message, "down", int)
        opened, closed = (
            float(wire.field(message, "opened", (int, float))),
            float(wire.field(message, "closed", (int, float))),
        )
        if up < 0 or down < 0 or closed < opened:
            raise WireError("bad usage report")
        outcome = str(message.get("outcome", ""))[:32]
        try:
            report = AgentReport(stream, link.address, exit_id, up, down, opened, closed, outcome)
        except MalformedEvent as exc:
            raise WireError(f"bad usage report: {exc.reason}") from None
        if stream in link.streams:
            link.streams.discard(stream)
            self._publisher.publish(report, lambda: link.ack(stream))
        elif "ticket" in message:
            self._orphan(link, report, message)

    def _orphan(self, link: ProviderLink, report: AgentReport, message: dict[str, Any]) -> None:
        """A report of a stream this link did not open: its agent could not deliver it to the
        node process that did. Taken on the signed ticket alone, and metered here too once that
        process is known to be gone (out of the registry, or its node id restarted)."""
        stream = report.event_id
        try:
            ticket = self._tickets.check(message["ticket"], message.get("mac"))
            if ticket.stream != stream or ticket.exit != report.exit_id:
                raise WireError("the ticket is another stream's")
        except WireError as exc:
            log.warning("provider %s reported stream %s with a bad ticket: %s", link.address, stream, exc)
            link.refuse(stream)
            return
        if ticket.node == self._settings.node_id and ticket.boot == self.boot:
            # Opened by this very process through a link since replaced: the front meters it.
            self._publisher.publish(report, lambda: link.ack(stream))
            return
        if self._live.get(ticket.node) == ticket.boot:
            # The opening process still announces itself: it may yet publish its own usage
            # event, which must win. The agent asks again once it is gone or reached.
            link.hold(stream)
            return
        try:
            lost = UsageEvent(
                event_id=stream,
                deal_id=ticket.deal or None,
                requester=ticket.requester,
                provider=link.address,
                exit_id=ticket.exit,
                node=ticket.node,
                protocol=ticket.protocol,
                target=ticket.target,
                bytes_up=report.bytes_up,
                bytes_down=report.bytes_down,
                opened_at=report.opened_at,
                closed_at=report.closed_at,
                outcome="node_lost",
                attempts=ticket.attempts,
            )
        except MalformedEvent as exc:
            log.warning(
                "stream %s of lost node %s cannot be metered: %s", stream, ticket.node[:64], exc.reason
            )
            link.refuse(stream)
            return
        self._publisher.publish(lost)
        self._publisher.publish(report, lambda: link.ack(stream))
        log.info("metered stream %s of lost node %s from its agent's report", stream, ticket.node[:64])

    async def _drop(self, link: ProviderLink, why: str) -> None:
        if link.closed and self._by_provider.get(link.address) is not link:
            return
        link.close()
        self._links.pop(link.token, None)
        if self._by_provider.get(link.address) is link:
            del self._by_provider[link.address]
        gone = [info for exit_id, info in link.exits.items() if self._by_exit.get(exit_id) is link]
        for info in gone:
            del self._by_exit[info.exit_id]
        self._on_change()
        try:
            await self._registry.deregister(self._settings.node_id, gone)
        except Exception:  # Redis down: the heartbeat TTL takes the exits out anyway
            log.exception("could not deregister the exits of %s", link.address)
        log.info("provider %s offline (%s)", link.address, why)

    async def close(self) -> None:
        """Stop listening, drop every link (deregistering its exits), end the control tasks."""
        if self._server is not None:
            self._server.close()
        for link in list(self._by_provider.values()):
            await self._drop(link, "gateway shutting down")
        for task in list(self._control_tasks):
            task.cancel()
        if self._control_tasks:
            await asyncio.gather(*self._control_tasks, return_exceptions=True)
