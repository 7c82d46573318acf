"""The requester-facing front: HTTP/1.1 forward proxy (absolute-URI and CONNECT) and SOCKS5.

The protocol cores (``http1``, ``socks5``, ``targeting``) are sans-IO; this module does the
socket work around them. Authentication happens before anything else: an unauthenticated
client gets 407 (SOCKS5: method 0xFF / auth failure), no exit is chosen and no byte is relayed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway import http1, socks5
from gateway.conn import Conn, ConnectionClosed
from gateway.exits import DIAL_ERRORS, NO_EXIT, ExitDialer, NoExit, Stream
from gateway.relay import Splice, SpliceResult
from gateway.settings import GatewaySettings
from gateway.targeting import (
    Targeting,
    TargetingError,
    apply_headers,
    parse_basic_credentials,
    parse_username,
)
from gateway.tunnel import DialError

log = logging.getLogger("ipsx.gateway.front")

Authenticate = Callable[[str, str], Awaitable[object | None]]
_CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_PARSE_CACHE_SIZE = 4096
_REALM = [("Proxy-Authenticate", 'Basic realm="IPSX"')]
# How a spliced stream ended, in the requester's terms (A is the client, B the exit).
_OUTCOMES = {
    "a_closed": "client_closed",
    "b_closed": "exit_closed",
    "a_lost": "client_lost",
    "b_lost": "exit_lost",
}


class _StaleUpstream(Exception):
    """A reused upstream connection closed before any byte of a response."""


class _ExitLost(ConnectionClosed):
    """The exit's side of a plain-HTTP exchange failed mid-response."""


class _Refused(Exception):
    """Answer the client with ``response`` and close; nothing was relayed."""

    def __init__(self, response: bytes) -> None:
        self.response = response


def _http_error(status: int, code: str, message: str, extra: list[tuple[str, str]] | None = None) -> _Refused:
    headers = [("X-IPSX-Error", code), *(extra or [])]
    return _Refused(http1.error_response(status, message, headers=headers))


def _dial_refusal(error: DialError | NoExit) -> _Refused:
    if isinstance(error, NoExit):
        status, code, _ = NO_EXIT
        return _http_error(status, code, "no exit matches the requested targeting")
    status, code, _ = DIAL_ERRORS[error.code]
    return _http_error(status, code, f"could not reach the destination: {error.reason}")


@dataclass(slots=True)
class _Upstream:
    stream: Stream
    key: tuple[str, int, Targeting]
    up: int = 0
    down: int = 0


class Front:
    """Serves one client connection at a time per task; shared state lives in the collaborators."""

    def __init__(self, settings: GatewaySettings, dialer: ExitDialer, authenticate: Authenticate) -> None:
        self._settings = settings
        self._dialer = dialer
        self._authenticate = authenticate
        self.splices: set[Splice] = set()
        # Scrapers send the same few user names and hosts over and over: parsed once, reused.
        self._parsed: dict[str, Targeting] = {}
        self._authorities: dict[str, tuple[str, int]] = {}

    async def handle(self, conn: Conn) -> None:
        socks = False
        try:
            # The deadline covers reading the request head or the SOCKS5 handshake, trickled or
            # not; it is lifted once the request is parsed (dials have their own deadline).
            conn.set_deadline(self._settings.handshake_timeout)
            first = await conn.read()
            if not first:
                conn.close()
                return
            socks = first[0] == 5
            if socks:
                await self._socks5(conn, first)
            else:
                await self._http(conn, first)
        except TimeoutError:
            if not socks:  # SOCKS5 has no way to say it: the connection is just closed
                conn.write(http1.error_response(408, "request timeout"))
            conn.close()
        except _Refused as refused:
            conn.write(refused.response)
            conn.close()
        except (ConnectionClosed, ConnectionError):
            conn.abort()
        except asyncio.CancelledError:
            conn.abort()
            raise
        except Exception:
            log.exception("internal error on a client connection")
            if not socks:
                conn.write(http1.error_response(500, "internal error"))
            conn.close()

    # authentication and targeting, shared by both protocols
    async def _targeting(self, username: str, password: str) -> Targeting | None:
        """The client's targeting, or None when the credentials are wrong. Raises TargetingError."""
        account = username.split("-", 1)[0].lower()
        if not account or await self._authenticate(account, password) is None:
            return None
        targeting = self._parsed.get(username)
        if targeting is None:
            targeting = parse_username(username)  # raises before anything is cached
            if len(self._parsed) >= _PARSE_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[username] = targeting
        return targeting

    # HTTP
    async def _read_head(self, conn: Conn, reader: http1.HeadReader, data: bytes) -> http1.RequestHead | None:
        head = reader.feed(data)
        while head is None:
            data = await conn.read()
            if not data:
                return None
            head = reader.feed(data)
        return head

    async def _http_auth(self, head: http1.RequestHead) -> Targeting:
        credentials = parse_basic_credentials(head.get("proxy-authorization") or "")
        if credentials is None:
            raise _http_error(407, "auth_required", "proxy authentication required", _REALM)
        try:
            targeting = await self._targeting(*credentials)
            if targeting is None:
                raise _http_error(407, "auth_failed", "proxy authentication failed", _REALM)
            return apply_headers(targeting, head.headers)
        except TargetingError as error:
            raise _http_error(400, "bad_targeting", str(error)) from None

    async def _http(self, conn: Conn, first: bytes) -> None:
        reader = http1.HeadReader(self._settings.limits)
        try:
            head = await self._read_head(conn, reader, first)
            if head is None:
                conn.close()
                return
            conn.clear_deadline()
            if head.method == "CONNECT":
                await self._connect(conn, head, reader.rest)
            else:
                await self._forward(conn, reader, head)
        except http1.ProtocolError as error:
            raise _http_error(error.status, "bad_request", error.reason) from None

    async def _connect(self, conn: Conn, head: http1.RequestHead, rest: bytes) -> None:
        authority = self._authorities.get(head.target)
        if authority is None:
            authority = http1.parse_authority(head.target)  # raises before anything is cached
            if len(self._authorities) >= _PARSE_CACHE_SIZE:
                self._authorities.clear()
            self._authorities[head.target] = authority
        host, port = authority
        targeting = await self._http_auth(head)
        try:
            stream = await self._dialer.open(targeting, host, port, "connect")
        except (DialError, NoExit) as error:
            raise _dial_refusal(error) from None
        conn.write(_CONNECTED)
        self._splice(conn, stream, rest)

    def _splice(self, client: Conn, stream: Stream, client_data: bytes) -> None:
        """Relay client ⇄ exit until both end; the usage event is sent when the splice is done."""
        try:
            client_transport, pending, client_eof = client.detach()
            exit_transport, exit_pending, exit_eof = stream.conn.detach()
        except ConnectionClosed:
            self._dialer.finish(stream, up=0, down=0, outcome="client_lost")
            stream.conn.close()
            return

        def done(result: SpliceResult) -> None:
            self.splices.discard(splice)
            outcome = _OUTCOMES.get(result.outcome, result.outcome)
            self._dialer.finish(
                stream, up=result.a_to_b, down=result.b_to_a, outcome=outcome, closed_at=result.closed_at
            )

        splice = Splice(
            client_transport,
            exit_transport,
            on_done=done,
            a_data=client_data + pending,
            b_data=exit_pending,
            a_eof=client_eof,
            b_eof=exit_eof,
            idle_timeout=self._settings.idle_timeout,
            opened_at=stream.opened_at,
        )
        if not stream.finished:
            self.splices.add(splice)

    async def _forward(self, conn: Conn, reader: http1.HeadReader, head: http1.RequestHead) -> None:
        """Plain-HTTP forwarding with keep-alive on both sides while the target stays the same."""
        upstream: _Upstream | None = None
        auth_header: str | None = None
        targeting: Targeting | None = None
        outcome = "client_closed"
        try:
            while True:
                host, port, origin_target = http1.parse_absolute_uri(head.target)
                header = head.get("proxy-authorization")
                if (
                    targeting is None
                    or header != auth_header
                    or any(name[:7].lower() == "x-ipsx-" for name, _ in head.headers)
                ):
                    targeting = await self._http_auth(head)
                    auth_header = header
                key = (host, port, targeting)
                if upstream is not None and (upstream.key != key or upstream.stream.conn.at_eof):
                    self._end_upstream(
                        upstream, "exit_closed" if upstream.stream.conn.at_eof else "client_closed"
                    )
                    upstream = None
                reused = upstream is not None
                if upstream is None:
                    upstream = await self._open_upstream(targeting, host, port, key)
                try:
                    keep_alive = await self._exchange(conn, reader, head, upstream, origin_target, reused)
                except _StaleUpstream:
                    # The origin closed a kept-alive connection just as it was reused, before any
                    # byte of a response: nothing reached the client, so a new stream retries it.
                    self._end_upstream(upstream, "exit_closed")
                    upstream = await self._open_upstream(targeting, host, port, key)
                    keep_alive = await self._exchange(conn, reader, head, upstream, origin_target, False)
                if not keep_alive:
                    break
                reader.reset()
                next_head = reader.feed(b"")
                while next_head is None:
                    data = await conn.read(self._settings.keepalive_timeout)
                    if not data:
                        break
                    next_head = reader.feed(data)
                if next_head is None:
                    break
                head = next_head
        except TimeoutError:
            outcome = "idle"  # keep-alive or idle deadline: close quietly
        except _ExitLost:
            outcome = "exit_lost"
            raise
        except ConnectionClosed:
            outcome = "client_lost"
            raise
        finally:
            if upstream is not None:
                self._end_upstream(upstream, outcome)
        conn.close()

    async def _open_upstream(
        self, targeting: Targeting, host: str, port: int, key: tuple[str, int, Targeting]
    ) -> _Upstream:
        try:
            stream = await self._dialer.open(targeting, host, port, "http")
        except (DialError, NoExit) as error:
            raise _dial_refusal(error) from None
        return _Upstream(stream, key)

    def _end_upstream(self, upstream: _Upstream, outcome: str) -> None:
        upstream.stream.conn.close()
        self._dialer.finish(upstream.stream, up=upstream.up, down=upstream.down, outcome=outcome)

    async def _exchange(
        self,
        conn: Conn,
        reader: http1.HeadReader,
        head: http1.RequestHead,
        upstream: _Upstream,
        origin_target: str,
        reused: bool,
    ) -> bool:
        """One request and its response. Returns whether both sides may keep the connection.

        Raises _StaleUpstream when a ``reused`` upstream closed before answering a request
        without a body (safe to send again), _ExitLost when the exit failed mid-response.
        """
        idle = self._settings.idle_timeout
        exit_conn = upstream.stream.conn
        host, port, _ = upstream.key
        framing = http1.request_body_framing(head)
        if framing.kind != "none" and (head.get("expect") or "").lower() == "100-continue":
            # Answer the client's expectation here so its body is not held up by a round trip
            # to the origin; the origin gets the request without the Expect header.
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = http1.RequestHead(
                head.method, head.target, head.version, [h for h in head.headers if h[0].lower() != "expect"]
            )
        out = http1.origin_request_bytes(head, host, port, origin_target)
        upstream.up += len(out)
        exit_conn.write(out)
        if framing.kind != "none":
            await self._pump_request_body(conn, reader, exit_conn, upstream, framing)
        response, chunk = await self._response_head(
            conn, exit_conn, upstream, stale_ok=reused and framing.kind == "none"
        )
        response_framing = http1.response_body_framing(head.method, response)
        close = http1.wants_close(head) or response_framing.kind == "close"
        conn.write(http1.response_head_bytes(response, close=close))
        tracker = http1.BodyTracker(response_framing, self._settings.limits, upstream=True)
        while response_framing.kind != "none" and not tracker.done:
            if not chunk:
                await conn.drain()
                chunk = await exit_conn.read(idle)
                if not chunk:
                    if response_framing.kind == "close":
                        break
                    raise _ExitLost("the origin closed mid-response")
                upstream.down += len(chunk)
            try:
                used = tracker.feed(chunk)
            except http1.UpstreamProtocolError:
                raise _ExitLost("malformed response body") from None
            conn.write(chunk[:used])
            chunk = chunk[used:]
        if chunk:  # the origin sent more than its framing allows: never reuse that connection
            close = True
        return not close

    async def _pump_request_body(
        self,
        conn: Conn,
        reader: http1.HeadReader,
        exit_conn: Conn,
        upstream: _Upstream,
        framing: http1.BodyFraming,
    ) -> None:
        body = http1.BodyTracker(framing, self._settings.limits)
        data = reader.rest
        reader.rest = b""
        while not body.done:
            if not data:
                await exit_conn.drain()
                data = await conn.read(self._settings.idle_timeout)
                if not data:
                    raise ConnectionClosed("client closed mid-body")
            used = body.feed(data)
            upstream.up += used
            exit_conn.write(data[:used])
            data = data[used:]
        reader.rest = data

    async def _response_head(
        self, conn: Conn, exit_conn: Conn, upstream: _Upstream, *, stale_ok: bool
    ) -> tuple[http1.ResponseHead, bytes]:
        """The final response head (interim 1xx ones are passed on) and the bytes after it."""
        response_reader = http1.ResponseHeadReader(self._settings.limits)
        seen = 0
        chunk = b""
        while True:
            try:
                response = response_reader.feed(chunk) if chunk else None
            except http1.UpstreamProtocolError as error:
                reason = f"the origin sent a malformed response: {error.reason}"
                raise _http_error(502, "bad_response", reason) from None
            if response is None:
                chunk = await exit_conn.read(self._settings.idle_timeout)
                if not chunk:
                    if stale_ok and seen == 0:
                        raise _StaleUpstream()
                    raise _http_error(
                        502, "exit_closed", "the origin closed the connection without a response"
                    )
                seen += len(chunk)
                upstream.down += len(chunk)
                continue
            chunk = response_reader.rest
            if not response.is_interim:
                return response, chunk
            conn.write(http1.response_head_bytes(response, close=False))
            response_reader = http1.ResponseHeadReader(self._settings.limits)

    # SOCKS5
    async def _socks5(self, conn: Conn, first: bytes) -> None:
        server = socks5.Socks5Server()
        data = first
        targeting: Targeting | None = None
        try:
            while True:
                server.receive_data(data)
                event = server.next_event()
                while event is not socks5.NEED_DATA:
                    out = server.data_to_send()
                    if out:
                        conn.write(out)
                    if isinstance(event, socks5.AuthRequest):
                        try:
                            targeting = await self._targeting(event.username, event.password)
                        except TargetingError:
                            targeting = None
                        conn.write(server.send_auth_result(targeting is not None))
                        if targeting is None:
                            conn.close()
                            return
                    elif isinstance(event, socks5.ConnectRequest) and targeting is not None:
                        conn.clear_deadline()
                        await self._socks5_connect(conn, server, targeting, event)
                        return
                    event = server.next_event()
                out = server.data_to_send()
                if out:
                    conn.write(out)
                data = await conn.read()
                if not data:
                    conn.close()
                    return
        except socks5.Socks5Error as error:
            if error.reply:
                conn.write(error.reply)
            conn.close()

    async def _socks5_connect(
        self, conn: Conn, server: socks5.Socks5Server, targeting: Targeting, request: socks5.ConnectRequest
    ) -> None:
        try:
            stream = await self._dialer.open(targeting, request.host, request.port, "socks5")
        except NoExit:
            conn.write(server.send_reply(socks5.ReplyCode(NO_EXIT[2])))
            conn.close()
            return
        except DialError as error:
            conn.write(server.send_reply(socks5.ReplyCode(DIAL_ERRORS[error.code][2])))
            conn.close()
            return
        conn.write(server.send_reply(socks5.ReplyCode.SUCCEEDED))
        self._splice(conn, stream, server.trailing)

    def abort_all(self) -> None:
        for splice in list(self.splices):
            splice.abort()
