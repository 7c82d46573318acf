"""Plain-HTTP forwarding: absolute-URI requests relayed to the origin through an exit.

Both sides are kept alive while the client keeps asking the same origin with the same
targeting: one exit stream carries many requests. Each request head is rewritten to origin form
without proxy credentials, ``X-IPSX-*`` and hop-by-hop headers; bodies are relayed as they come,
framed by ``http1_body.BodyTracker`` without re-encoding.

Every response says which exit served it (``X-IPSX-Exit``) and how many exits the request was
sent to (``X-IPSX-Tries``). A request whose targeting asks for retries (``X-IPSX-Retry-On:
403,429``, ``X-IPSX-Max-Retries: 2``) is sent again through another exit when the origin answers
one of those statuses — only for idempotent methods with a body small enough to keep, and only
once another exit is dialled: when none is left the client gets the origin's own answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from gateway import http1, http1_body, http1_write
from gateway.conn import Conn, ConnectionClosed
from gateway.exits import ExitDialer, NoDeal, NoExit, Stream
from gateway.refusals import Refused, dial_refusal, http_error
from gateway.settings import GatewaySettings
from gateway.targeting import Targeting
from gateway.tunnel_streams import DialError
from gateway.wire import ALLOWANCE_USED, CLIENT_LOST, LIMIT_CUTS

Authorize = Callable[[http1.RequestHead], Awaitable[Targeting]]


class _StaleUpstream(Exception):
    """A reused upstream connection closed before any byte of a response."""


class _ExitLost(ConnectionClosed):
    """The exit's side of a plain-HTTP exchange failed mid-response."""


class _BadResponse(Refused):
    """The origin's response cannot be relayed: the client gets 502, the stream ends as exit_lost."""


def _bad_response(reason: str) -> _BadResponse:
    return _BadResponse(
        http_error(502, "bad_response", f"the origin sent a malformed response: {reason}").response
    )


def _outcome_of(error: BaseException) -> str:
    """The usage outcome of a stream whose exchange ended with ``error``."""
    if isinstance(error, (_ExitLost, _BadResponse)):
        return "exit_lost"
    if isinstance(error, TimeoutError):
        return "idle"
    return CLIENT_LOST


IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DEFAULT_MAX_RETRIES = 1  # when a request names statuses to retry on but no number of retries
# Interim (1xx) heads passed on before the final one: real origins send one or two; an endless
# stream of them would hold the exchange (and the client's write buffer) forever.
MAX_INTERIM_RESPONSES = 10


@dataclass(slots=True)
class _Upstream:
    stream: Stream
    key: tuple[str, int, Targeting]
    reader: http1.ResponseHeadReader  # reused for every response on this stream
    up: int = 0
    down: int = 0
    ended_for: str | None = None  # the outcome of a stream this node cut (its deal's allowance)


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
            from_headers = False  # the targeting came from the previous request's X-IPSX-* headers
            while True:
                self._own_headers(head)
                host, port, origin_target = http1.parse_absolute_uri(head.target)
                header = head.get("proxy-authorization")
                has_headers = any(name[:7].lower() == "x-ipsx-" for name, _ in head.headers)
                if targeting is None or header != auth_header or has_headers or from_headers:
                    # Headers speak for their own request only: the next one is read afresh.
                    targeting = await self._authorize(head)
                    auth_header, from_headers = header, has_headers
                # A ban is an instruction about this request, not a kind of stream: it never keeps
                # the stream it asks to leave, and the stream it gets serves the next requests.
                banning = targeting.ban is not None
                key = (host, port, replace(targeting, ban=None) if banning else targeting)
                if upstream is not None and (
                    upstream.key != key
                    or upstream.stream.conn.at_eof
                    or banning
                    or await self._dialer.is_banned(targeting.account, host, upstream.stream.exit_id)
                ):
                    self._end_upstream(
                        upstream, "exit_closed" if upstream.stream.conn.at_eof else "client_closed"
                    )
                    upstream = None
                reused = upstream is not None
                if upstream is None:
                    upstream = await self._open_upstream(targeting, host, port, key)
                self.exchanging += 1
                try:
                    keep_alive, upstream = await self._exchange(
                        conn, reader, head, upstream, origin_target, reused, targeting
                    )
                finally:
                    self.exchanging -= 1
                if not keep_alive or self.draining:
                    break
                next_head = await self._next_head(conn, reader)
                if next_head is None:
                    break
                head = next_head
        except TimeoutError:
            outcome = "idle"  # keep-alive or idle deadline: close quietly
        except (_ExitLost, _BadResponse):
            outcome = "exit_lost"
            raise
        except ConnectionClosed:
            outcome = CLIENT_LOST
            raise
        finally:
            if upstream is not None:
                self._end_upstream(upstream, outcome)
        conn.close()

    async def _next_head(self, conn: Conn, reader: http1.HeadReader) -> http1.RequestHead | None:
        """The next request head on a kept-alive connection; None when the client closes first.

        The client may stay silent for ``keepalive_timeout`` (TimeoutError after that); once a
        head has begun, the rest of it must come within ``handshake_timeout``, as the first
        head's did, or Refused (408) is raised.
        """
        begun = bool(reader.rest.lstrip(b"\r\n"))  # blank lines before a request are skipped
        reader.reset()
        head = reader.feed(b"")
        if head is not None:
            return head
        if not begun:
            data = await conn.read(self._settings.keepalive_timeout)
            if not data:
                return None
            head = reader.feed(data)
            if head is not None:  # the common case: a whole head in one read, no timer
                return head
        conn.set_deadline(self._settings.handshake_timeout)
        try:
            while head is None:
                data = await conn.read()
                if not data:
                    return None
                head = reader.feed(data)
        except TimeoutError:
            raise Refused(http1_write.error_response(408, "request timeout")) from None
        finally:
            conn.clear_deadline()
        return head

    def _own_headers(self, head: http1.RequestHead) -> None:
        """Hook: a white-label listener's forwarder reads its brand's header names as X-IPSX-*."""

    async def _open_upstream(
        self,
        targeting: Targeting,
        host: str,
        port: int,
        key: tuple[str, int, Targeting],
        avoid: frozenset[str] = frozenset(),
    ) -> _Upstream:
        try:
            stream = await self._dialer.open(targeting, host, port, "http", avoid=avoid)
        except (DialError, NoExit, NoDeal) as error:
            raise dial_refusal(error) from None
        upstream = _Upstream(stream, key, http1.ResponseHeadReader(self._settings.limits))
        if stream.watched is not None:
            stream.watched.gauge = lambda: upstream.up + upstream.down

            def cut() -> None:  # the agent told how much of the download came through, then closed
                upstream.ended_for = ALLOWANCE_USED
                stream.cut_short(upstream.down, ALLOWANCE_USED)
                stream.conn.close()

            stream.watched.cut = cut
        return upstream

    def _end_upstream(self, upstream: _Upstream, outcome: str) -> None:
        if outcome == CLIENT_LOST and upstream.ended_for is None:
            # The client went away mid-exchange: the agent hears how much of the download got through.
            upstream.stream.cut_short(upstream.down, CLIENT_LOST)
        upstream.stream.conn.close()
        outcome = upstream.ended_for or outcome
        self._dialer.finish(upstream.stream, up=upstream.up, down=upstream.down, outcome=outcome)

    async def _exchange(
        self,
        conn: Conn,
        reader: http1.HeadReader,
        head: http1.RequestHead,
        upstream: _Upstream,
        origin_target: str,
        reused: bool,
        targeting: Targeting,
    ) -> tuple[bool, _Upstream]:
        """One request and its response, through as many exits as its retry rule allows.

        Returns whether both sides may keep the connection, and the upstream that answered.
        Raises _ExitLost when the exit failed mid-response.
        """
        framing = http1_body.request_body_framing(head)
        if framing.kind != "none" and (head.get("expect") or "").lower() == "100-continue":
            # Answer the client's expectation here so its body is not held up by a round trip
            # to the origin; the origin gets the request without the Expect header.
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = http1.RequestHead(
                head.method, head.target, head.version, [h for h in head.headers if h[0].lower() != "expect"]
            )
        current = [upstream]
        try:
            keep_alive = await self._exchange_through(
                conn, reader, head, current, origin_target, reused, targeting
            )
        except BaseException as error:
            # A retry moved the request to another stream, which run() does not know of: it
            # ends here (the first one was ended when the retry began).
            if current[0] is not upstream:
                self._end_upstream(current[0], _outcome_of(error))
            raise
        return keep_alive, current[0]

    async def _exchange_through(
        self,
        conn: Conn,
        reader: http1.HeadReader,
        head: http1.RequestHead,
        current: list[_Upstream],
        origin_target: str,
        reused: bool,
        targeting: Targeting,
    ) -> bool:
        """``_exchange`` with the stream in use kept in ``current[0]``."""
        upstream = current[0]
        framing = http1_body.request_body_framing(head)
        retry_on, retries = self._retry_rule(targeting, head)
        out = http1_write.origin_request_bytes(head, upstream.key[0], upstream.key[1], origin_target)
        body: bytes | None = None  # the request body as sent, kept while a retry may need it
        tried: list[str] = []
        while True:
            exit_conn = upstream.stream.conn
            upstream.up += len(out)
            exit_conn.write(out)
            if body is not None:
                upstream.up += len(body)
                exit_conn.write(body)
            elif framing.kind != "none":
                keep = self._settings.retry_body_limit if retries else 0
                body = await self._pump_request_body(conn, reader, exit_conn, upstream, framing, keep=keep)
            try:
                response, chunk = await self._response_head(
                    conn, exit_conn, upstream, stale_ok=reused and framing.kind == "none"
                )
            except _StaleUpstream:
                # The origin closed a kept-alive connection just as it was reused, before any
                # byte of a response: nothing reached the client, so a new stream retries it.
                self._end_upstream(upstream, "exit_closed")
                upstream = current[0] = await self._open_upstream(targeting, *upstream.key[:2], upstream.key)
                reused = False
                continue
            if (
                response.status in retry_on
                and len(tried) < retries
                and (framing.kind == "none" or body is not None)
            ):
                fresh = await self._another_upstream(
                    targeting, upstream, frozenset((*tried, upstream.stream.exit_id))
                )
                if fresh is not None:
                    tried.append(upstream.stream.exit_id)
                    self._end_upstream(upstream, "retried")
                    upstream = current[0] = fresh
                    reused = False
                    continue
            break
        served_by = upstream.stream.exit_id.encode()
        extra = b"X-IPSX-Exit: %s\r\nX-IPSX-Tries: %d\r\n" % (served_by, len(tried) + 1)
        return await self._relay_response(conn, head, response, chunk, upstream, extra)

    def _retry_rule(self, targeting: Targeting, head: http1.RequestHead) -> tuple[frozenset[int], int]:
        """The statuses this request is retried on and how many retries it may take."""
        if not targeting.retryon or head.method not in IDEMPOTENT_METHODS:
            return frozenset(), 0
        retries = DEFAULT_MAX_RETRIES if targeting.maxretries is None else targeting.maxretries
        return targeting.retryon, retries

    async def _another_upstream(
        self, targeting: Targeting, upstream: _Upstream, avoid: frozenset[str]
    ) -> _Upstream | None:
        """A stream to the same origin through an exit not in ``avoid``, or None if none answers."""
        host, port, _ = upstream.key
        try:
            return await self._open_upstream(targeting, host, port, upstream.key, avoid)
        except Refused:
            return None

    async def _relay_response(
        self,
        conn: Conn,
        head: http1.RequestHead,
        response: http1.ResponseHead,
        chunk: bytes,
        upstream: _Upstream,
        extra: bytes,
    ) -> bool:
        """Relay a response, head then body. Returns whether both sides may keep the connection."""
        idle = self._settings.idle_timeout
        exit_conn = upstream.stream.conn
        try:
            response_framing = http1_body.response_body_framing(head.method, response)
        except http1.UpstreamProtocolError as error:
            raise _bad_response(error.reason) from None
        close = http1_write.wants_close(head) or response_framing.kind == "close"
        # The head goes out with the first piece of the body, in one system call.
        pending: bytes | None = http1_write.response_head_bytes(response, close=close, extra=extra)
        tracker = http1_body.BodyTracker(response_framing, self._settings.limits, upstream=True)
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
        framing: http1_body.BodyFraming,
        *,
        keep: int = 0,
    ) -> bytes | None:
        """Relay the request body to the exit as it comes. Returns it whole if it is at most
        ``keep`` bytes (a retry may send it again), else None."""
        body = http1_body.BodyTracker(framing, self._settings.limits)
        kept: bytearray | None = bytearray() if keep else None
        data = reader.rest
        reader.rest = b""
        while not body.done:
            if not data:
                await exit_conn.drain()
                if exit_conn.closed:  # the exit ended the stream mid-body: the rest goes nowhere
                    cut = upstream.stream.cut
                    limit = cut is not None and cut[1] in LIMIT_CUTS
                    why = "reached its provider's limit" if limit else "closed the connection"
                    raise http_error(502, "exit_closed", f"the exit {why} before the request body was sent")
                data = await conn.read(self._settings.idle_timeout)
                if not data:
                    raise ConnectionClosed("client closed mid-body")
            used = body.feed(data)
            upstream.up += used
            exit_conn.write(data[:used])
            if kept is not None:
                kept += data[:used]
                if len(kept) > keep:
                    kept = None
            data = data[used:]
        reader.rest = data
        return None if kept is None else bytes(kept)

    async def _response_head(
        self, conn: Conn, exit_conn: Conn, upstream: _Upstream, *, stale_ok: bool
    ) -> tuple[http1.ResponseHead, bytes]:
        """The final response head and the bytes after it.

        Interim 1xx heads are passed on, each written out before the next is read (ConnectionClosed
        when the client is gone); more than MAX_INTERIM_RESPONSES of them raise Refused (502).
        """
        response_reader = upstream.reader
        response_reader.rest = b""  # the bytes after the last head were that response's body
        response_reader.reset()
        seen = 0
        interim = 0
        chunk = b""
        while True:
            try:
                response = response_reader.feed(chunk) if chunk else None
            except http1.UpstreamProtocolError as error:
                raise _bad_response(error.reason) from None
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
            interim += 1
            if interim > MAX_INTERIM_RESPONSES:
                raise _bad_response(f"more than {MAX_INTERIM_RESPONSES} interim responses")
            conn.write(http1_write.response_head_bytes(response, close=False))
            await conn.drain()  # a client that reads nothing holds the origin back, not our memory
            response_reader.rest = b""  # fed again as ``chunk`` for the next head
            response_reader.reset()
