"""Plain-HTTP forwarding: absolute-URI requests relayed to the origin through an exit.

Both sides are kept alive while the client keeps asking the same origin with the same
targeting: one exit stream carries many requests. Each request head is rewritten to origin form
without proxy credentials, ``X-IPSX-*`` and hop-by-hop headers; bodies are relayed as they come,
framed by ``http1.BodyTracker`` without re-encoding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway import http1
from gateway.conn import Conn, ConnectionClosed
from gateway.exits import ExitDialer, NoDeal, NoExit, Stream
from gateway.refusals import dial_refusal, http_error
from gateway.settings import GatewaySettings
from gateway.targeting import Targeting
from gateway.tunnel import DialError

Authorize = Callable[[http1.RequestHead], Awaitable[Targeting]]


class _StaleUpstream(Exception):
    """A reused upstream connection closed before any byte of a response."""


class _ExitLost(ConnectionClosed):
    """The exit's side of a plain-HTTP exchange failed mid-response."""


@dataclass(slots=True)
class _Upstream:
    stream: Stream
    key: tuple[str, int, Targeting]
    reader: http1.ResponseHeadReader  # reused for every response on this stream
    up: int = 0
    down: int = 0


class PlainForwarder:
    """Serves the absolute-URI requests of one client connection after another."""

    def __init__(self, settings: GatewaySettings, dialer: ExitDialer, authorize: Authorize) -> None:
        self._settings = settings
        self._dialer = dialer
        self._authorize = authorize
        self.exchanging = 0  # requests in flight (a kept-alive connection between two is idle)
        self.draining = False  # the node is stopping: close each connection after its exchange

    async def run(self, conn: Conn, reader: http1.HeadReader, head: http1.RequestHead) -> None:
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
                    targeting = await self._authorize(head)
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
                self.exchanging += 1
                try:
                    keep_alive = await self._exchange(conn, reader, head, upstream, origin_target, reused)
                except _StaleUpstream:
                    # The origin closed a kept-alive connection just as it was reused, before any
                    # byte of a response: nothing reached the client, so a new stream retries it.
                    self._end_upstream(upstream, "exit_closed")
                    upstream = await self._open_upstream(targeting, host, port, key)
                    keep_alive = await self._exchange(conn, reader, head, upstream, origin_target, False)
                finally:
                    self.exchanging -= 1
                if not keep_alive or self.draining:
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
        except (DialError, NoExit, NoDeal) as error:
            raise dial_refusal(error) from None
        upstream = _Upstream(stream, key, http1.ResponseHeadReader(self._settings.limits))
        if stream.watched is not None:
            stream.watched.gauge = lambda: upstream.up + upstream.down
            stream.watched.cut = stream.conn.close
        return upstream

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
        # The head goes out with the first piece of the body, in one system call.
        pending: bytes | None = http1.response_head_bytes(response, close=close)
        tracker = http1.BodyTracker(response_framing, self._settings.limits, upstream=True)
        while response_framing.kind != "none" and not tracker.done:
            if not chunk:
                if pending is not None:
                    conn.write(pending)
                    pending = None
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
            if pending is not None:
                conn.write_both(pending, chunk[:used])
                pending = None
            else:
                conn.write(chunk[:used])
            chunk = chunk[used:]
        if pending is not None:
            conn.write(pending)
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
        response_reader = upstream.reader
        response_reader.rest = b""  # the bytes after the last head were that response's body
        response_reader.reset()
        seen = 0
        chunk = b""
        while True:
            try:
                response = response_reader.feed(chunk) if chunk else None
            except http1.UpstreamProtocolError as error:
                reason = f"the origin sent a malformed response: {error.reason}"
                raise http_error(502, "bad_response", reason) from None
            if response is None:
                chunk = await exit_conn.read(self._settings.idle_timeout)
                if not chunk:
                    if stale_ok and seen == 0:
                        raise _StaleUpstream()
                    raise http_error(
                        502, "exit_closed", "the origin closed the connection without a response"
                    )
                seen += len(chunk)
                upstream.down += len(chunk)
                continue
            chunk = response_reader.rest
            if not response.is_interim:
                return response, chunk
            conn.write(http1.response_head_bytes(response, close=False))
            response_reader.rest = b""  # fed again as ``chunk`` for the next head
            response_reader.reset()
