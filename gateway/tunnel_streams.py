"""The provider links of a gateway node, and the streams opened through them.

A ``ProviderLink`` is one logged-in agent: its control connection, its exits, its idle data
connections, and what it advertised — its exit policy, its limits and whether it is serving
now. ``LinkTable`` holds the links of this node, takes in the data connections agents lend,
opens streams through them for the front, and tells the exit selection which exits would
refuse. ``gateway.tunnel.TunnelHub`` is the ``LinkTable`` that agents log in to.

With an agent that reuses data connections (``gateway.reuse``), a stream's data connection goes
back to the link's idle pool once the stream ended cleanly on both sides.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections import deque
from typing import Any

from gateway import wire
from gateway.agent.caps import Limits, ServingState
from gateway.agent.policy import ExitPolicy
from gateway.conn import Conn, ConnectionClosed
from gateway.reuse import ReusedStream
from gateway.settings import GatewaySettings
from gateway.tickets import Ticket, TicketKey
from gateway.wire import DialErrorCode, WireError
from pool.models import ExitInfo

_TOKEN_RE = re.compile(r"[0-9a-f]{64}")
MAX_POOL = 256


class DialError(Exception):
    """A stream could not be opened through an exit."""

    def __init__(self, code: DialErrorCode, reason: str, *, exit_id: str | None = None) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason
        self.exit_id = exit_id


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
        reuse: bool = False,
        cut: bool = False,
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
        self.reuse = reuse  # the agent carries stream after stream on a data connection
        self.reused: dict[str, ReusedStream] = {}  # streams running on such connections, by id
        self.cut = cut  # each end says where it stopped a stream it cuts (gateway.reuse)
        self._told: list[bytes] = []
        self._flushing = False  # a flush of the control messages is scheduled
        self.beating: asyncio.Task[None] | None = None  # the registry refresh of the last heartbeat
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
        self._schedule()
        batch.append(stream)

    def tell(self, message: dict[str, Any]) -> None:
        """Send ``message`` on the control connection with the others of this loop iteration."""
        self._schedule()
        self._told.append(wire.encode(message))

    def _schedule(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """What this loop iteration has for the agent, in one write: the messages told, then the
        replies to its usage reports (which it sends again through another node if this one is
        closed)."""
        self._flushing = False
        out, self._told = self._told, []
        replies = (("acked", self._acks), ("held", self._held), ("refused", self._refused))
        out += [wire.encode({"t": kind, "streams": streams}) for kind, streams in replies if streams]
        self._acks, self._held, self._refused = [], [], []
        if out and not self.closed:
            self.control.write(b"".join(out))

    def add_idle(self, conn: Conn) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self.idle) >= MAX_POOL * 4:  # an agent may not park unlimited sockets here
            self.idle.popleft().close()
        self.idle.append(conn)

    async def take(self, wait: float) -> Conn:
        """An idle data connection, waiting for the agent to open one if none is left."""
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed and not conn.at_eof:
                return conn
            conn.close()  # the agent closed it while it waited here
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
        for stream in list(self.reused.values()):
            stream.orphan()  # no control connection to announce ends on: TCP's, as before
        self.reused.clear()
        self.control.close()


class LinkTable:
    """The provider links of one gateway node, and streams through them."""

    def __init__(self, settings: GatewaySettings, tickets: TicketKey) -> None:
        self._settings = settings
        self._tickets = tickets
        self._links: dict[str, ProviderLink] = {}  # by data token
        self._by_exit: dict[str, ProviderLink] = {}
        self._by_provider: dict[str, ProviderLink] = {}
        self.reuses = 0  # data connections that went back to a pool after a stream

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
        reused = self._reused(link, stream_id, conn) if link.reuse else None
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
            link.reused.pop(stream_id, None)
            conn.abort()
            self.stream_closed(exit_id)
            raise DialError(
                DialErrorCode.TIMEOUT, "the exit did not answer in time", exit_id=exit_id
            ) from None
        except (ConnectionClosed, WireError, ValueError):
            link.reused.pop(stream_id, None)
            conn.abort()
            self.stream_closed(exit_id)
            raise DialError(DialErrorCode.EXIT, "the exit dropped the connection", exit_id=exit_id) from None
        except BaseException:  # cancelled: the client left during the dial
            link.reused.pop(stream_id, None)
            conn.abort()
            self.stream_closed(exit_id)
            raise
        if answer["t"] == "ok":
            link.streams.add(stream_id)
            if reused is None:
                return conn
            _, pending, eof = conn.detach()
            stream_conn = Conn.taking_over(reused)
            reused.start(pending, eof)
            return stream_conn
        link.reused.pop(stream_id, None)
        conn.close()
        self.stream_closed(exit_id)
        try:
            code = DialErrorCode(str(answer.get("code")))
        except ValueError:
            code = DialErrorCode.EXIT
        reason = str(answer.get("reason", ""))[:200]
        raise DialError(code, reason or code.value, exit_id=exit_id)

    def _reused(self, link: ProviderLink, stream_id: str, conn: Conn) -> ReusedStream:
        """The stream about to be dialed on ``conn``, registered before the dial so that an end
        the agent announces early (its destination closed at once) finds it."""
        if conn.transport is None:
            raise DialError(DialErrorCode.EXIT, "the data connection is not open")
        reused = ReusedStream(
            conn.transport,
            stream_id,
            announce=link.tell,
            settle=lambda transport: self._settled(link, stream_id, transport),
            confirm=True,
            cuts=link.cut,
        )
        if link.closed:  # it closed while this connection was handed over: no ends to announce
            reused.orphan()
        else:
            link.reused[stream_id] = reused
        return reused

    def _settled(self, link: ProviderLink, stream: str, transport: asyncio.Transport | None) -> bool:
        """A reused stream ended: its data connection, if clean, goes back to the idle pool."""
        link.reused.pop(stream, None)
        if transport is None:
            return False
        if link.closed:
            transport.close()
            return False
        link.add_idle(Conn.taking_over(transport))
        self.reuses += 1
        return True

    def stream_closed(self, exit_id: str) -> None:
        link = self._by_exit.get(exit_id)
        if link is not None and link.active.get(exit_id, 0) > 0:
            link.active[exit_id] -= 1

    def _accept_data(self, conn: Conn, message: dict[str, Any]) -> None:
        """Park a data connection an agent lends (its first line is ``message``) with its link;
        raises WireError for a token of no live link."""
        token = wire.field(message, "token", str)
        link = self._links.get(token) if _TOKEN_RE.fullmatch(token) else None
        if link is None or link.closed or not hmac.compare_digest(token, link.token):
            raise WireError("unknown data token")
        link.add_idle(conn)
