"""The provider tunnel endpoint: agents log in, declare exits, and lend data connections.

See ``gateway.wire`` for the protocol. ``TunnelHub`` listens for agents and sorts each new
connection by its first line (a connection that starts with a WebSocket upgrade is sorted by the
first line of the stream it carries, see ``gateway.wstunnel``): a data connection goes to its
link's idle pool (``gateway.tunnel_streams``), a hello starts a login — the agent signs a
challenge with its wallet key — and then the control loop: heartbeats, serving-state changes,
usage reports (``gateway.tunnel_reports``), and the live node list sent to every agent. When the
control connection ends the link is dropped and its exits deregistered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import ssl
from collections.abc import Callable
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct

from billing.accounts import normalize_address
from billing.errors import InvalidAccount
from billing.usage import UsagePublisher
from gateway import wire, wstunnel
from gateway.agent.caps import Limits, ServingState
from gateway.agent.policy import ExitPolicy
from gateway.conn import Conn, ConnectionClosed
from gateway.settings import GatewaySettings
from gateway.tickets import TicketKey
from gateway.tunnel_reports import AgentReports
from gateway.tunnel_streams import MAX_POOL, LinkTable, ProviderLink
from gateway.wire import WireError
from ipsx.listen import listening
from pool.models import EXIT_TYPES, ExitInfo
from pool.nodes import NodeInfo
from pool.registry import ExitRegistry

log = logging.getLogger("ipsx.gateway.tunnel")

_WORD_RE = re.compile(r"[a-z0-9_]{0,64}")
_COUNTRY_RE = re.compile(r"[a-z]{2}")
_SHOWN = 80  # characters of an agent's own text (a not-serving reason) that go into a log line


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


class _AgentConn(Conn):
    """A connection an agent opened, until its first line says what it is for."""

    __slots__ = ("_hub", "_timer", "upgraded")

    def __init__(self, hub: TunnelHub, *, upgraded: bool = False) -> None:
        super().__init__()
        self._hub = hub
        self._timer: asyncio.TimerHandle | None = None
        self.upgraded = upgraded  # carried over a WebSocket (no second upgrade inside it)

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


class TunnelHub(LinkTable):
    """The endpoint the provider agents of one gateway node dial, and the links they hold."""

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
        super().__init__(settings, tickets)
        self._on_login = on_login  # told the exit ids of an agent that just logged in
        self._registry = registry
        self._reports = AgentReports(publisher, tickets, node=settings.node_id, boot=boot)
        self.boot = boot  # this process's boot token, in the tickets it signs
        self._on_change = on_change
        self._server: asyncio.Server | None = None
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._nodes: list[dict[str, str]] = []  # the live gateway nodes, as agents are told

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        """Tell every connected agent when the set of live gateway nodes changes."""
        listed = [info.to_wire() for info in nodes]
        if listed == self._nodes:
            return
        self._nodes = listed
        self._reports.set_nodes(nodes)
        message = wire.encode({"t": "nodes", "nodes": listed})
        for link in self._by_provider.values():
            if not link.closed:
                link.control.write(message)

    # the endpoint agents dial
    async def start(self, host: str, port: int) -> int:
        """Listen for agents on ``host:port``; returns the bound port. Raises
        :class:`ipsx.listen.ListenError` (for ``--tunnel-port``) when it cannot be bound."""
        loop = asyncio.get_running_loop()
        context = None
        if self._settings.tunnel_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._settings.tunnel_cert, self._settings.tunnel_key)
        with listening("--tunnel-port", host, port):
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
            if not conn.upgraded and wstunnel.looks_like_upgrade(conn.peek(1)):
                self._upgrade(conn)
                return
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

    def _upgrade(self, conn: _AgentConn) -> None:
        """A WebSocket agent: the handshake runs on the connection's transport, then the stream
        it carries is sorted by its first line like any other (see ``gateway.wstunnel``)."""
        conn.sorted()
        transport, received, _ = conn.detach()
        wstunnel.accept(
            transport,
            received,
            lambda: _AgentConn(self, upgraded=True),
            timeout=self._settings.handshake_timeout,
        )

    def refuse(self, conn: Conn, reason: str) -> None:
        log.info("tunnel connection refused: %s", reason)
        conn.write(wire.encode({"t": "error", "reason": reason[:200]}))
        if conn.writing_paused:
            # A peer that stopped reading (after a flood of WebSocket pings, say) would keep a
            # closing transport and its write buffer for as long as it holds the connection.
            conn.abort()
        else:
            conn.close()

    async def _control(self, conn: Conn, hello: dict[str, Any]) -> None:
        try:
            await self._serve_control(conn, hello)
        except (TimeoutError, ConnectionClosed, WireError, ValueError) as exc:
            self.refuse(conn, str(exc) if isinstance(exc, WireError) else type(exc).__name__)

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
        pool_size = min(MAX_POOL, max(1, wire.field(login, "pool", int, optional=True) or 16))
        policy = ExitPolicy.from_wire(login.get("policy"))
        limits = Limits.from_wire(login.get("policy"))
        state = ServingState.from_wire(login.get("state"))

        previous = self._by_provider.get(address)
        if previous is not None:
            await self._drop(previous, "replaced by a new login")
        link = ProviderLink(
            address,
            secrets.token_hex(32),
            conn,
            exits,
            pool_size,
            policy=policy,
            limits=limits,
            state=state,
            reuse=login.get("reuse") is True,
            cut=login.get("reuse") is True and login.get("cut") is True,
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
                    "reuse": link.reuse,
                    "cut": link.cut,
                }
            )
        )
        log.info(
            "provider %s online with %d exit(s)%s",
            address,
            len(exits),
            "" if state.serving else f", not serving ({state.reason[:_SHOWN]!r})",
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
                    self._heartbeat(link)
                elif kind == "usage":
                    self._reports.receive(link, message)
                elif kind == "state":
                    self._state_report(link, message)
                elif kind == "cut" and link.cut:
                    stream_id, relayed, reason = wire.parse_cut(message, "up", wire.CUT_REASONS)
                    stream = link.reused.get(stream_id)
                    if stream is not None:  # else a stream already closed for another reason
                        stream.peer_cut(relayed, reason)
                elif kind in ("end", "free") and link.reuse:
                    stream = link.reused.get(wire.field(message, "stream", str))
                    if stream is None:
                        pass  # a stream already closed for another reason
                    elif kind == "end":
                        stream.peer_end(wire.field(message, "n", int))
                    else:
                        stream.peer_free()
                else:
                    raise WireError(f"unexpected message {kind[:20]!r}")
            except WireError as exc:
                log.warning("provider %s sent a bad message: %s", link.address, exc)
                return

    def _heartbeat(self, link: ProviderLink) -> None:
        """Refresh the link's exits in the registry, beside the control loop: the stream ends
        and usage reports it reads must not wait on Redis. One refresh at a time per link."""
        if link.beating is not None and not link.beating.done():
            return
        link.beating = asyncio.get_running_loop().create_task(
            self._registry.heartbeat(self._settings.node_id, list(link.exits.values()))
        )
        link.beating.add_done_callback(self._heartbeat_done)

    @staticmethod
    def _heartbeat_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not refresh exits in the registry: %s", task.exception())

    def _state_report(self, link: ProviderLink, message: dict[str, Any]) -> None:
        """The agent starts or stops taking streams (serving hours, caps): the selector sees it
        through ``is_available`` at the next pick."""
        state = ServingState.from_wire(message)
        if state != link.state:
            link.state = state
            if state.serving:
                log.info("provider %s serving again", link.address)
            else:
                log.info("provider %s not serving: %r", link.address, state.reason[:_SHOWN])

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
        if link.beating is not None:  # a refresh in flight lands before the exits are taken out
            await asyncio.gather(link.beating, return_exceptions=True)
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
