"""Decrypted requests on their way out: a CONNECT through the gateway, TLS to the origin, HTTP/1.1.

Each :class:`Tunnel` is one CONNECT made with the client's own Proxy-Authorization and targeting
headers, so it is one stream of the gateway's — authenticated, routed through an exit, metered and
billed there, once. Over it this port speaks TLS to the origin (checking the origin's certificate)
and HTTP/1.1 with h11 (sans-IO). A client connection keeps its idle tunnels in its own
:class:`ClientTunnels` and reuses one for a request with the same credentials, targeting and
origin, as the gateway keeps one exit stream per client connection; they close with it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import h11

from gateway import http1
from gateway.forward import IDEMPOTENT_METHODS
from gateway.inspect import rules
from gateway.inspect.errors import GatewayRefused, GatewayUnavailable, InspectError, OriginError

_READ = 65536
_MAX_REFUSAL_BODY = 4096
_MAX_SHOWN = 200


@dataclass(frozen=True, slots=True)
class Limits:
    """Deadlines (seconds) and caps (bytes) of the way out."""

    connect_timeout: float = 15.0  # gateway connection, CONNECT (the exit's dial) and TLS
    idle_timeout: float = 60.0  # waiting for any byte of a response
    max_response_body: int = 64 * 1024 * 1024  # responses are buffered to apply the rules
    max_head: int = 64 * 1024  # a response head (or chunk line) larger than this is refused


@dataclass(frozen=True, slots=True)
class TunnelKey:
    """What a tunnel was opened for: only a request with the same key may reuse it."""

    authorization: str = field(repr=False)  # the client's Proxy-Authorization, as it sent it
    headers: tuple[tuple[str, str], ...]  # the X-IPSX-* headers sent with the CONNECT
    scheme: str  # "https" or "http"
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class OriginRequest:
    method: str
    target: bytes  # origin form: path and query, as the client sent them
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class OriginResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _shown(text: str) -> str:
    clean = "".join(c if " " <= c <= "~" else " " for c in text).strip()
    return clean[:_MAX_SHOWN]


class Tunnel:
    """One stream through the gateway to an origin, carrying one request after another."""

    def __init__(
        self,
        key: TunnelKey,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        exit_id: str | None,
        limits: Limits,
    ) -> None:
        self.key = key
        self.exit_id = exit_id  # the gateway's X-IPSX-Exit, when it names the exit
        self.exchanges = 0
        self._reader = reader
        self._writer = writer
        self._limits = limits
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=limits.max_head)
        self._reusable = True

    @property
    def reusable(self) -> bool:
        return self._reusable and not self._reader.at_eof() and not self._writer.is_closing()

    def close(self) -> None:
        self._reusable = False
        self._writer.close()

    async def exchange(self, request: OriginRequest) -> OriginResponse:
        """Send ``request``, return the whole response (interim 1xx ones skipped).

        Raises InspectError 400 for a request h11 refuses to send, OriginError for a response
        that is missing, malformed, too slow or too large (``stale`` when a reused tunnel closed
        before any byte of it).
        """
        self._reusable = False  # until the exchange completes cleanly
        conn = self._h11
        try:
            out = conn.send(
                h11.Request(method=request.method, target=request.target, headers=request.headers)
            )
            if request.body:
                out = (out or b"") + (conn.send(h11.Data(data=request.body)) or b"")
            out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as error:
            raise InspectError(
                f"the request cannot be sent: {error}", status=400, code="bad_request"
            ) from None
        try:
            self._writer.write(out)
            await self._writer.drain()
            response = await self._receive(self._limits)
        except OSError as error:  # ssl.SSLError, ConnectionError: the exit or the origin went away
            raise OriginError(
                f"the connection to the origin failed: {type(error).__name__}", code="exit_closed"
            ) from None
        self.exchanges += 1
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._reusable = True
        return response

    async def _receive(self, limits: Limits) -> OriginResponse:
        conn = self._h11
        head: h11.Response | None = None
        body = bytearray()
        seen = 0
        ended = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                if ended:  # h11's complaint about an end of stream mid-message
                    raise OriginError(
                        "the origin closed the connection mid-response", code="exit_closed"
                    ) from None
                raise OriginError(f"the origin sent a malformed response: {error}") from None
            if event is h11.NEED_DATA:
                try:
                    data = await asyncio.wait_for(self._reader.read(_READ), limits.idle_timeout)
                except TimeoutError:
                    raise OriginError(
                        "the origin did not answer in time", status=504, code="origin_timeout"
                    ) from None
                if not data and seen == 0:
                    raise OriginError(
                        "the origin closed the connection without a response",
                        code="exit_closed",
                        stale=self.exchanges > 0,
                    )
                seen += len(data)
                ended = not data
                conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limits.max_response_body:
                    raise OriginError(
                        f"the response is larger than {limits.max_response_body} bytes",
                        code="response_too_large",
                    )
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return OriginResponse(
                    head.status_code, head.reason, list(head.headers.raw_items()), bytes(body)
                )
            else:  # ConnectionClosed before the end of the response
                raise OriginError("the origin closed the connection mid-response", code="exit_closed")


async def _read_refusal(reader: asyncio.StreamReader, head: http1.ResponseHead, rest: bytes) -> str:
    """The text of the gateway's refusal (a short text/plain body), at most a few KiB of it."""
    length_text = head.get("content-length") or ""
    length = int(length_text) if length_text.isascii() and length_text.isdigit() else _MAX_REFUSAL_BODY
    body = bytearray(rest)
    while len(body) < min(length, _MAX_REFUSAL_BODY):
        data = await reader.read(_READ)
        if not data:
            break
        body += data
    return _shown(bytes(body[:_MAX_REFUSAL_BODY]).decode("utf-8", "replace").split("\n", 1)[0])


async def _connect_through(
    gateway: tuple[str, int], key: TunnelKey, extra: tuple[tuple[str, str], ...]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None]:
    try:
        reader, writer = await asyncio.open_connection(*gateway)
    except OSError:
        raise GatewayUnavailable(f"the gateway at {rules.authority(*gateway)} cannot be reached") from None
    try:
        writer.write(rules.connect_head(key.host, key.port, key.authorization, key.headers + extra))
        head_reader = http1.ResponseHeadReader()
        head = None
        while head is None:
            data = await reader.read(_READ)
            if not data:
                raise GatewayUnavailable("the gateway closed the connection during CONNECT")
            head = head_reader.feed(data)
        if head.status != 200:
            message = await _read_refusal(reader, head, head_reader.rest)
            raise GatewayRefused(
                head.status,
                head.get("x-ipsx-error") or "gateway_refused",
                message or f"the gateway refused the tunnel ({head.status})",
                authenticate=head.get("proxy-authenticate"),
            )
        if head_reader.rest:  # nobody speaks before the client does, through a fresh tunnel
            raise GatewayUnavailable("the gateway sent bytes after its CONNECT answer")
    except http1.UpstreamProtocolError as error:
        writer.close()
        raise GatewayUnavailable(f"the gateway's CONNECT answer is malformed: {error.reason}") from None
    except BaseException:
        writer.close()
        raise
    return reader, writer, head.get("x-ipsx-exit")


async def open_tunnel(
    gateway: tuple[str, int],
    key: TunnelKey,
    tls: ssl.SSLContext | None,
    limits: Limits,
    extra: tuple[tuple[str, str], ...] = (),
) -> Tunnel:
    """CONNECT to ``key``'s origin through the gateway (with ``extra`` headers for this CONNECT
    only, e.g. ``X-IPSX-Ban``), then TLS when the scheme is https.

    Raises GatewayUnavailable, GatewayRefused (the gateway's own answer: bad credentials or
    targeting, no exit, unreachable destination…) or OriginError (TLS with the origin failed, or
    all of it took longer than ``limits.connect_timeout``).
    """
    try:
        async with asyncio.timeout(limits.connect_timeout):
            reader, writer, exit_id = await _connect_through(gateway, key, extra)
            try:
                if key.scheme == "https" and tls is not None:
                    await _start_tls(writer, tls, key.host)
            except BaseException:
                writer.close()
                raise
    except TimeoutError:
        raise OriginError(
            "the tunnel to the origin took too long", status=504, code="connect_timeout"
        ) from None
    return Tunnel(key, reader, writer, exit_id, limits)


async def _start_tls(writer: asyncio.StreamWriter, tls: ssl.SSLContext, host: str) -> None:
    """TLS with the origin over the tunnel, checking its certificate for ``host``."""
    try:
        await writer.start_tls(tls, server_hostname=host)
    except ssl.SSLCertVerificationError as error:
        reason = _shown(str(error.verify_message or "verification failed"))
        raise OriginError(
            f"the origin's certificate was refused: {reason}", code="origin_certificate"
        ) from None
    except (ssl.SSLError, OSError) as error:
        raise OriginError(f"TLS with the origin failed: {type(error).__name__}", code="origin_tls") from None


class ClientTunnels:
    """The tunnels of one client connection; idle ones are reused by requests with the same key."""

    def __init__(
        self, gateway: tuple[str, int], tls: ssl.SSLContext, limits: Limits, *, max_idle: int = 4
    ) -> None:
        self._gateway = gateway
        self._tls = tls
        self._limits = limits
        self._max_idle = max_idle
        self._idle: dict[TunnelKey, list[Tunnel]] = {}
        self._closed = False

    def _take(self, key: TunnelKey) -> Tunnel | None:
        tunnels = self._idle.get(key)
        while tunnels:
            tunnel = tunnels.pop()
            if tunnel.reusable:
                return tunnel
            tunnel.close()
        self._idle.pop(key, None)
        return None

    def _give_back(self, tunnel: Tunnel) -> None:
        idle = sum(len(tunnels) for tunnels in self._idle.values())
        if self._closed or not tunnel.reusable or idle >= self._max_idle:
            tunnel.close()
            return
        self._idle.setdefault(tunnel.key, []).append(tunnel)

    def forget(self, key: TunnelKey) -> None:
        """Close the idle tunnels of ``key`` (their exit is about to be banned)."""
        for tunnel in self._idle.pop(key, []):
            tunnel.close()

    async def _open(self, key: TunnelKey, extra: tuple[tuple[str, str], ...] = ()) -> Tunnel:
        tls = self._tls if key.scheme == "https" else None
        return await open_tunnel(self._gateway, key, tls, self._limits, extra)

    async def exchange(
        self,
        key: TunnelKey,
        request: OriginRequest,
        *,
        fresh: bool = False,
        extra: tuple[tuple[str, str], ...] = (),
        keep: bool = True,
    ) -> tuple[OriginResponse, Tunnel]:
        """``request`` over an idle tunnel of ``key`` (unless ``fresh``) or a new one (its CONNECT
        with the ``extra`` headers too); the tunnel is kept for the next request when ``keep``.

        A reused tunnel that turns out closed is replaced once, for an idempotent request only.
        Raises what :func:`open_tunnel` and :meth:`Tunnel.exchange` raise.
        """
        tunnel = None if fresh else self._take(key)
        reused = tunnel is not None
        if tunnel is None:
            tunnel = await self._open(key, extra)
        try:
            response = await tunnel.exchange(request)
        except OriginError as error:
            tunnel.close()
            if not (error.stale and reused and request.method.upper() in IDEMPOTENT_METHODS):
                raise
            tunnel = await self._open(key)
            try:
                response = await tunnel.exchange(request)
            except BaseException:
                tunnel.close()
                raise
        except BaseException:
            tunnel.close()
            raise
        if keep:
            self._give_back(tunnel)
        else:
            tunnel.close()
        return response, tunnel

    def close(self) -> None:
        """Close every idle tunnel; tunnels in use close when their exchange ends."""
        self._closed = True
        for tunnels in self._idle.values():
            for tunnel in tunnels:
                tunnel.close()
        self._idle.clear()


def origin_context(cafile: str | None) -> ssl.SSLContext:
    """The TLS context origins are checked with: ``cafile`` when given, else the system's CAs."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context
