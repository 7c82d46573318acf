"""One login of a provider agent to one gateway node: lends it data connections, dials for it.

The agent never listens. It logs in by signing the gateway's challenge with its wallet key,
keeps ``pool_size`` idle data connections open so a new stream costs the gateway no connection
setup — and, where the gateway agrees, carries stream after stream on each of them, so that a
new stream costs neither side one (``gateway.reuse``) — applies its exit policy to every
destination after DNS resolution, and counts the bytes of each stream itself so the two meters
can be compared. Its governor (``gateway.agent.governor``) holds the provider's caps, rates and
serving hours: the sessions refuse dials while it is not serving, tell their gateway node when
that changes, and relay capped or paced streams through it. Each stream's usage report leaves
through the outbox (``gateway.agent.outbox``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from eth_account.messages import encode_defunct

from gateway import wire, wstunnel
from gateway.agent.caps import ServingState
from gateway.agent.connect import open_conn, start_tls, through_proxy
from gateway.agent.governor import Governor, StreamGate
from gateway.agent.outbox import UsageReports
from gateway.agent.policy import PolicyRefused, family_of, pick_address
from gateway.agent.resolver import Resolver
from gateway.agent.settings import AgentSettings
from gateway.agent.throttle import GatedTransport
from gateway.conn import Conn, ConnectionClosed
from gateway.relay import Splice, SpliceResult
from gateway.reuse import ReusedStream
from gateway.wire import CAP_REACHED, DESTINATION_LOST, OUTSIDE_HOURS, DialErrorCode, WireError

log = logging.getLogger("ipsx.agent")


class LoginRefused(Exception):
    """The gateway refused this agent's login (bad key, bad exits); retrying will not help soon."""


class _Dial(Exception):
    def __init__(self, code: DialErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_ERRNO_CODES = {
    errno.ECONNREFUSED: DialErrorCode.REFUSED,
    errno.EHOSTUNREACH: DialErrorCode.UNREACHABLE,
    errno.ENETUNREACH: DialErrorCode.UNREACHABLE,
    errno.EADDRNOTAVAIL: DialErrorCode.EXIT,
}


# How a spliced stream ended, in the provider's terms (A is the gateway, B the destination).
_OUTCOMES = {
    "a_closed": "gateway_closed",
    "b_closed": "destination_closed",
    "a_lost": "gateway_lost",
    "b_lost": "destination_lost",
}


NodesCallback = Callable[["AgentSession", list[tuple[str, str, int]]], None]

MAX_NODES = 64  # gateway nodes an agent keeps tunnels to
_USER_AGENT = f"ipsx-agent (tunnel v{wire.PROTOCOL_VERSION})"  # a WebSocket tunnel's upgrade request


def parse_nodes(raw: Any, default_host: str, region: str | None = None) -> list[tuple[str, str, int]]:
    """The gateway's node list → (node, host, port) triples; malformed entries are skipped, and
    with ``region`` so are the nodes of other regions (at most ``MAX_NODES`` are kept).

    A tunnel address of ``:PORT`` means the host this agent already reached the gateway at.
    """
    nodes: list[tuple[str, str, int]] = []
    if not isinstance(raw, list):
        return nodes
    for entry in raw[: MAX_NODES * 16]:
        if len(nodes) == MAX_NODES:
            break
        if not isinstance(entry, dict):
            continue
        node, tunnel = entry.get("node"), entry.get("tunnel")
        if not isinstance(node, str) or not isinstance(tunnel, str) or not 0 < len(node) <= 128:
            continue
        if region is not None and entry.get("region", "") != region:
            continue
        host, sep, port_text = tunnel.rpartition(":")
        host = host.removeprefix("[").removesuffix("]") or default_host
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536 or len(host) > 255:
            continue
        nodes.append((node, host, int(port_text)))
    return nodes


class AgentSession:
    """One login to one gateway node; ends when the control connection does.

    ``expect_node``, when set, is the node this session must reach (a direct tunnel to a node
    another node announced); ``on_nodes`` hears the live node list at login and on every change.
    """

    def __init__(
        self,
        settings: AgentSettings,
        resolver: Resolver | None = None,
        *,
        expect_node: str | None = None,
        on_nodes: NodesCallback | None = None,
        reports: UsageReports | None = None,
        governor: Governor | None = None,
    ) -> None:
        self._settings = settings
        self._resolver = resolver or Resolver()
        self._governor = governor or Governor(settings.limits)
        self._advertised = self._governor.state  # the serving state this session's node knows
        self._expect_node = expect_node
        self._on_nodes = on_nodes
        self._reports = reports or UsageReports()
        self.unacked: dict[str, dict[str, Any]] = {}  # reports sent here, by stream, until acked
        self.node: str | None = None
        self._welcome_nodes: Any = None
        self._gateway: tuple[int, str] | None = None
        self._tls: ssl.SSLContext | None = None
        self._token = ""
        self._binds: dict[str, str] = {}  # exit id → bind address
        self._control: Conn | None = None
        self._pooled = 0  # data connections opening or idle, not yet carrying a stream
        self._reuse = False  # the gateway agreed to carry stream after stream on them
        self._cut = False  # … and that each side says where a stream it cuts stopped (wire "cut")
        self._reused: dict[str, ReusedStream] = {}  # streams on such connections, by id
        self._told: list[bytes] = []  # control messages of this loop iteration
        self._tasks: set[asyncio.Task[None]] = set()
        self.splices: dict[Splice, Callable[[str], None]] = {}  # running streams → how to cut each
        self.served = 0

    async def _connect(self) -> Conn:
        """A new connection to the gateway, through the agent's HTTP proxy if it has one (the
        address dialled is resolved once per session; the proxy resolves the gateway's name)."""
        s = self._settings
        host, port = s.proxy or (s.gateway_host, s.gateway_port)
        if self._gateway is None:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            self._gateway = (int(infos[0][0]), str(infos[0][4][0]))
        family, address = self._gateway
        if s.tls and self._tls is None:
            self._tls = ssl.create_default_context(cafile=s.ca_file)
        if s.proxy is None:
            conn = await open_conn(
                family,
                address,
                port,
                within=s.handshake_timeout,
                tls=self._tls,
                server_hostname=s.gateway_host if s.tls else None,
            )
        else:
            conn = await open_conn(family, address, port, within=s.handshake_timeout)
            try:
                await through_proxy(
                    conn, s.gateway_host, s.gateway_port, s.proxy_credentials, within=s.handshake_timeout
                )
                if self._tls is not None:
                    await start_tls(conn, self._tls, s.gateway_host, within=s.handshake_timeout)
            except BaseException:
                conn.abort()
                raise
        if s.websocket_path is None:
            return conn
        host = f"[{s.gateway_host}]" if ":" in s.gateway_host else s.gateway_host
        url = f"{'wss' if s.tls else 'ws'}://{host}:{s.gateway_port}{s.websocket_path}"
        return await wstunnel.connect(conn, url, within=s.handshake_timeout, user_agent=_USER_AGENT)

    async def login(self) -> None:
        s = self._settings
        control = await self._connect()
        self._control = control
        async with asyncio.timeout(s.handshake_timeout):
            control.write(
                wire.encode({"t": "hello", "v": wire.PROTOCOL_VERSION, "address": s.account.address})
            )
            challenge = wire.decode(await control.read_line(wire.MAX_LINE))
            if challenge["t"] == "error":
                raise LoginRefused(str(challenge.get("reason")))
            nonce = wire.field(challenge, "nonce", str)
            node = wire.field(challenge, "node", str)
            if self._expect_node is not None and node != self._expect_node:
                raise LoginRefused(f"reached gateway node {node[:64]!r}, not {self._expect_node[:64]!r}")
            signed = s.account.sign_message(encode_defunct(text=wire.login_message(node, nonce)))
            self._advertised = self._governor.state
            control.write(
                wire.encode(
                    {
                        "t": "login",
                        "signature": "0x" + signed.signature.hex().removeprefix("0x"),
                        "exits": [spec.to_wire() for spec in s.exits],
                        "policy": {**s.policy.to_wire(), **s.limits.to_wire()},
                        "state": self._advertised.to_wire(),
                        "pool": s.pool_size,
                        "reuse": s.reuse_data,
                        "cut": s.reuse_data,
                    }
                )
            )
            welcome = wire.decode(await control.read_line(wire.MAX_LINE))
        if welcome["t"] != "welcome":
            raise LoginRefused(str(welcome.get("reason", "refused"))[:200])
        self._token = wire.field(welcome, "token", str)
        exits = wire.field(welcome, "exits", dict)
        self._binds = {str(exit_id): str(bind) for bind, exit_id in exits.items()}
        self._heartbeat = float(wire.field(welcome, "heartbeat", (int, float)))
        self._reuse = s.reuse_data and welcome.get("reuse") is True
        self._cut = self._reuse and welcome.get("cut") is True  # a gateway of this version
        self.node = node
        log.info(
            "logged in to %s:%d (node %s) as %s with %d exit(s)",
            s.gateway_host,
            s.gateway_port,
            node,
            s.account.address,
            len(self._binds),
        )
        self._welcome_nodes = welcome.get("nodes")

    def _nodes_heard(self, raw: Any) -> None:
        if self._on_nodes is not None:
            s = self._settings
            self._on_nodes(self, parse_nodes(raw, s.gateway_host, s.gateway_region))

    async def serve(self) -> None:
        """Keep the data pool full and the heartbeat going until the control connection ends."""
        control = self._control
        if control is None:
            raise RuntimeError("login() first")
        for _ in range(self._settings.pool_size):
            self._spawn_data()
        self._nodes_heard(self._welcome_nodes)
        beat = asyncio.create_task(self._beat(control))
        self._reports.attach(self)
        self._governor.listen(self._state_changed)
        self._state_changed(self._governor.state)  # in case it changed since the login
        try:
            while True:
                line = await control.read_line(wire.MAX_LINE)
                message = wire.decode(line)
                if message["t"] == "more":
                    wanted = min(int(wire.field(message, "n", int)), self._settings.pool_size * 4)
                    # A burst may take the pool above its size for a while; replacements
                    # below bring it back down to pool_size as streams use them up.
                    for _ in range(max(0, min(wanted, self._settings.pool_size * 4 - self._pooled))):
                        self._spawn_data()
                elif message["t"] == "acked":
                    self._reports.acked(self, message.get("streams"))
                elif message["t"] == "held":
                    self._reports.held(self, message.get("streams"))
                elif message["t"] == "refused":
                    self._reports.refused(self, message.get("streams"))
                elif message["t"] == "nodes":
                    self._nodes_heard(message.get("nodes"))
                elif message["t"] == "end" and self._reuse:
                    reused = self._reused.get(wire.field(message, "stream", str))
                    if reused is not None:
                        reused.peer_end(wire.field(message, "n", int))
                elif message["t"] == "cut" and self._cut:
                    stream, relayed, reason = wire.parse_cut(message, "down", wire.GATEWAY_CUTS)
                    reused = self._reused.get(stream)
                    if reused is not None:  # else a stream already over
                        reused.peer_cut(relayed, reason)
                elif message["t"] == "error":
                    raise LoginRefused(str(message.get("reason"))[:200])
        finally:
            self._governor.unlisten(self._state_changed)
            beat.cancel()
            control.close()
            for reused in list(self._reused.values()):
                reused.orphan()  # their ends go by TCP now, as on connections not reused
            self._reused.clear()
            self._reports.detach(self)

    def _state_changed(self, state: ServingState) -> None:
        """Tell this session's gateway node that the agent now serves, or no longer does; when
        it no longer does, the streams running are cut, as a cap cuts them."""
        if not state.serving and self.splices:
            # Not from within the change: it may come while a stream's chunk is being admitted.
            asyncio.get_running_loop().call_soon(self._cut_streams)
        if state == self._advertised or self._control is None or self._control.closed:
            return
        self._advertised = state
        self._control.write(wire.encode({"t": "state", **state.to_wire()}))

    def _cut_streams(self) -> None:
        """End the streams running while the agent does not serve (serving hours over, cap)."""
        if self._governor.state.serving:
            return
        outcome = CAP_REACHED if self._governor.capped else OUTSIDE_HOURS
        for cut in list(self.splices.values()):
            cut(outcome)

    async def _beat(self, control: Conn) -> None:
        while not control.closed:
            control.write(wire.encode({"t": "hb"}))
            await asyncio.sleep(self._heartbeat)

    def send_report(self, message: dict[str, Any]) -> None:
        """Send a usage report on this session; it stays in ``unacked`` until the node confirms
        (at most ``UsageReports.max_orphans`` of them: a node that never confirms, e.g. of an
        older version, must not make this grow without bound)."""
        if len(self.unacked) >= self._reports.max_orphans and message["stream"] not in self.unacked:
            oldest = next(iter(self.unacked))
            del self.unacked[oldest]
            log.error(
                "gateway node %s confirms no usage report; forgot the one of stream %s", self.node, oldest
            )
        self.unacked[message["stream"]] = message
        self._tell(message)

    def _tell(self, message: dict[str, Any]) -> None:
        """Send ``message`` on the control connection with the others of this loop iteration."""
        if self._control is None or self._control.closed:
            return
        if not self._told:
            asyncio.get_running_loop().call_soon(self._flush_told)
        self._told.append(wire.encode(message))

    def _flush_told(self) -> None:
        told, self._told = self._told, []
        if self._control is not None and not self._control.closed:
            self._control.write(b"".join(told))

    def _spawn_data(self, conn: Conn | None = None) -> None:
        self._pooled += 1
        task = asyncio.get_running_loop().create_task(self._data_connection(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settled(self, stream: str, transport: asyncio.Transport | None) -> bool:
        """A reused stream ended: its data connection, clean, waits for the gateway's next dial
        unless the pool has twice its size idle already."""
        self._reused.pop(stream, None)
        if transport is None:
            return False
        control = self._control
        if control is None or control.closed or self._pooled >= 2 * self._settings.pool_size:
            transport.close()
            return False
        self._spawn_data(Conn.taking_over(transport))
        return True

    async def _data_connection(self, conn: Conn | None = None) -> None:
        """Lend the gateway a new data connection (or ``conn``, one a stream left clean), then
        dial and relay the stream it asks for."""
        try:
            if conn is None:
                try:
                    conn = await self._connect()
                except (OSError, TimeoutError):
                    return
                conn.write(wire.encode({"t": "data", "token": self._token}))
            try:
                line = await conn.read_line(wire.MAX_LINE)
            except (ConnectionClosed, ValueError):
                conn.close()
                return
            except BaseException:  # cancelled with the session: the idle connection goes with it
                conn.close()
                raise
        finally:
            self._pooled -= 1
        # Replace this one before dialing, so the pool stays full; connections carrying stream
        # after stream come back, so then only a pool run down to half is topped up.
        low = max(1, self._settings.pool_size // 2) if self._reuse else self._settings.pool_size
        if self._pooled < low and self._control is not None and not self._control.closed:
            self._spawn_data()
        try:
            request = wire.decode(line, "dial")
            stream = wire.field(request, "stream", str)
            exit_id = wire.field(request, "exit", str)
            host = wire.field(request, "host", str)
            port = wire.field(request, "port", int)
            ticket = (request.get("ticket"), request.get("mac"))
        except WireError:
            conn.close()
            return
        opened_at = time.time()
        protocol, deal = _stream_kind(ticket[0])
        try:
            bind = self._binds.get(exit_id)
            if bind is None:
                raise _Dial(DialErrorCode.EXIT, "unknown exit")
            destination = await self._dial(host, port, bind, protocol)
        except _Dial as failure:
            conn.write(wire.encode({"t": "err", "code": failure.code.value, "reason": failure.reason}))
            conn.close()
            return
        conn.write(wire.encode({"t": "ok"}))
        self._relay(conn, destination, stream, exit_id, opened_at, ticket, deal)

    async def _dial(self, host: str, port: int, bind: str, protocol: str | None) -> Conn:
        s = self._settings
        not_serving = self._governor.refusal()
        if not_serving is not None:
            # The exit's state, not the destination's fault: retryable, another exit may serve.
            raise _Dial(DialErrorCode.EXIT, f"not serving: {not_serving}")
        try:
            s.policy.check_protocol(protocol)
            s.policy.check_port(port)
            s.policy.check_host(host)
        except PolicyRefused as refusal:
            raise _Dial(DialErrorCode.POLICY, refusal.reason) from None
        infos = self._resolver.cached(host)
        if infos is None:
            try:
                async with asyncio.timeout(s.dial_timeout):
                    infos = await self._resolver.lookup(host)
            except (OSError, UnicodeError):
                raise _Dial(DialErrorCode.DNS, "the name does not resolve") from None
            except TimeoutError:
                raise _Dial(DialErrorCode.DNS, "name resolution timed out") from None
        try:
            family, address = pick_address(infos, s.policy, family_of(bind or None))
        except PolicyRefused as refusal:
            raise _Dial(DialErrorCode.POLICY, refusal.reason) from None
        try:
            destination = await open_conn(family, address, port, bind=bind, within=s.dial_timeout)
        except TimeoutError:
            raise _Dial(DialErrorCode.TIMEOUT, "connection timed out") from None
        except OSError as exc:
            if exc.errno == errno.EINVAL and _loopback(bind):
                # What the exit is, not a fault of it or of the destination: like a policy's no.
                reason = "this exit's address is a loopback one: it reaches 127.0.0.0/8 only"
                raise _Dial(DialErrorCode.POLICY, reason) from None
            code = _ERRNO_CODES.get(exc.errno or 0, DialErrorCode.UNREACHABLE)
            raise _Dial(code, exc.strerror or "connection failed") from None
        self.served += 1
        return destination

    def _relay(
        self,
        gateway_conn: Conn,
        destination: Conn,
        stream: str,
        exit_id: str,
        opened_at: float,
        ticket: tuple[Any, Any],
        deal: str = "",
    ) -> None:
        try:
            a, a_data, a_eof = gateway_conn.detach()
            b, b_data, b_eof = destination.detach()
        except ConnectionClosed:
            gateway_conn.close()
            destination.close()
            return
        reused: ReusedStream | None = None
        if self._reuse and not a_eof:
            reused = ReusedStream(
                a,
                stream,
                announce=self._tell,
                settle=lambda transport: self._settled(stream, transport),
                confirm=False,
                received=len(a_data),
                cuts=self._cut,
            )
            reused.start()
            self._reused[stream] = reused
            a = reused
        gate = self._governor.gate()
        if gate is not None:
            a, a_data = _gated(a, a_data, gate, up=True)
            b, b_data = _gated(b, b_data, gate, up=False)

        def done(result: SpliceResult) -> None:
            self.splices.pop(splice, None)
            down, outcome = result.b_to_a, _OUTCOMES.get(result.outcome, result.outcome)
            if reused is not None and reused.cut is not None:
                # The gateway cut the stream (its deal's allowance, its client gone) and dropped
                # what it got past that: the download is what it relayed, so both meters agree.
                down = min(down, reused.cut)
                if reused.cut_reason and outcome not in wire.CUT_REASONS:  # not cut here first
                    outcome = reused.cut_reason
            self._governor.finished(gate, deal, result.a_to_b, result.b_to_a)
            self._reports.submit(
                self,
                {
                    "t": "usage",
                    "stream": stream,
                    "exit": exit_id,
                    "up": result.a_to_b,
                    "down": down,
                    "opened": opened_at,
                    "closed": result.closed_at,
                    "outcome": outcome,
                    "ticket": ticket[0],
                    "mac": ticket[1],
                },
            )

        def destination_gone() -> None:
            # The gateway hears how much of the upload got through before the destination went,
            # and stops sending: what it sent meanwhile is read and dropped here.
            if reused is not None:
                reused.cut_here(splice.a_to_b, DESTINATION_LOST, direction="up")

        splice = Splice(
            a,
            b,
            on_done=done,
            a_data=a_data,
            b_data=b_data,
            a_eof=a_eof,
            b_eof=b_eof,
            idle_timeout=self._settings.idle_timeout,
            opened_at=opened_at,
            cut_short=lambda gateway_side: None if gateway_side else destination_gone(),
        )

        def cut(outcome: str) -> None:
            if gate is not None:
                gate.exhausted = True  # its gateway side stops reading, ends and closes
            # The gateway hears where the upload stopped before this side's end, stops writing
            # and announces its own end; what it sent meanwhile is read and dropped. Without
            # that (an older gateway), what it sent past the cut is never read, so where the
            # stream ends on the connection is unknown: it ends by TCP and is not reused.
            if reused is not None and not reused.cut_here(splice.a_to_b, outcome, direction="up"):
                reused.orphan()
            splice.end(outcome)

        self.splices[splice] = cut
        if gate is not None:
            gate.cut = lambda: cut(CAP_REACHED)
            if gate.exhausted:  # the bytes read during the dial already reached the cap
                gate.cut()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control is not None:
            self._control.close()


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _stream_kind(raw_ticket: Any) -> tuple[str | None, str]:
    """The stream protocol (``http``, ``connect``, ``socks5``) and deal id a dial's ticket names;
    (None, "") without a readable ticket. The ticket's MAC is the gateway nodes' business: the
    node that sent it is trusted with what it says about its own stream."""
    if isinstance(raw_ticket, list) and len(raw_ticket) == 9:
        protocol, deal = raw_ticket[5], raw_ticket[4]
        if isinstance(protocol, str) and isinstance(deal, str):
            return protocol[:16], deal[:128]
    return None, ""


def _gated(
    transport: asyncio.Transport, data: bytes, gate: StreamGate, *, up: bool
) -> tuple[asyncio.Transport, bytes]:
    """``transport`` through ``gate``, and the part of ``data`` (read during the dial) it admits."""
    if data:
        allowed, _ = gate.admit(len(data), up)
        data = data[:allowed]
    return GatedTransport(transport, gate, up=up, linger=up), data
