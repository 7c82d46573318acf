"""The requester-facing front: HTTP/1.1 forward proxy (absolute-URI and CONNECT) and SOCKS5.

The protocol cores (``http1``, ``socks5``, ``targeting``) are sans-IO; this module does the
socket work around them. Authentication happens before anything else: an unauthenticated
client gets 407 (SOCKS5: method 0xFF / auth failure), no exit is chosen and no byte is relayed.

A white-label reseller's listener is a front with a :class:`Brand`: its clients authenticate as
the reseller's sub-users, an ``admit`` hook refuses a sub-user whose standing stops new streams
(suspended, monthly quota or spend limit reached), and nothing it answers names IPSX — the
``Proxy-Authenticate`` realm is the brand, the gateway's own ``X-IPSX-*`` response headers are
``X-<brand token>-*`` there, and refusal texts are rewritten the same way. Its clients send
targeting and rule headers under the brand's name (``X-<brand token>-Session``) or the platform's;
both are read and stripped before anything is forwarded (other ``X-<brand token>-*`` headers are
the client's own and pass).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from billing.accounts import ApiKey
from billing.errors import AccountsUnavailable
from gateway import http1, http1_write, socks5
from gateway.conn import Conn, ConnectionClosed
from gateway.exits import DIAL_ERRORS, NO_DEAL, NO_EXIT, ExitDialer, NoDeal, NoExit, Stream
from gateway.forward import Authorize, PlainForwarder, _Upstream
from gateway.metrics import GatewayStats
from gateway.refusals import Refused, dial_refusal, http_error
from gateway.relay import Splice, SpliceResult
from gateway.settings import GatewaySettings
from gateway.targeting import (
    Targeting,
    TargetingError,
    apply_headers,
    is_header_key,
    parse_basic_credentials,
    parse_rules,
    parse_username,
    with_rules,
)
from gateway.tunnel_streams import DialError
from gateway.wire import ALLOWANCE_USED, CLIENT_LOST

log = logging.getLogger("ipsx.gateway.front")

Authenticate = Callable[[str, str], Awaitable[ApiKey | None]]
# An account's standing: why its new streams are refused (a key of STANDING_REFUSALS), or None.
Admit = Callable[[str], Awaitable[str | None]]
# The tunnel's answer names the exit it leaves through (X-IPSX-Exit, as on plain-HTTP responses).
_CONNECTED = b"HTTP/1.1 200 Connection established\r\nX-%s-Exit: %s\r\n\r\n"
_PARSE_CACHE_SIZE = 4096
# A white-label sub-user's standing refuses its new streams: HTTP status, X-*-Error reason,
# SOCKS5 reply code (2: not allowed by ruleset), message.
STANDING_REFUSALS: dict[str, tuple[int, str, int, str]] = {
    "suspended": (403, "account_suspended", 2, "this account is suspended"),
    "quota_exceeded": (403, "quota_exceeded", 2, "this account's monthly traffic quota is used up"),
    "spend_limit_reached": (402, "spend_limit_reached", 2, "this account's monthly spend limit is reached"),
}
_PLATFORM = "IPSX"
_PLATFORM_WORD = re.compile(r"ipsx", re.IGNORECASE)
_PLATFORM_HEADER = re.compile(r"x-ipsx-", re.IGNORECASE)
_HEADER_LINE = re.compile(rb"^X-IPSX-", re.IGNORECASE | re.MULTILINE)
# Refusal texts that name the platform's own tools, said without them on a reseller's listener.
_UNBRANDED_TEXTS = {
    "payment_required": "your unpaid usage is above the limit: pay your open invoices to go on",
}


@dataclass(frozen=True, slots=True)
class Brand:
    """What a listener calls itself: ``name`` in the realm and texts, ``token`` in header names
    (``X-<token>-Error``). ``name`` is printable ASCII without '"' or '\\'; ``token`` letters
    and digits."""

    name: str = _PLATFORM
    token: str = _PLATFORM

    @property
    def realm(self) -> list[tuple[str, str]]:
        return [("Proxy-Authenticate", f'Basic realm="{self.name}"')]

    @property
    def is_platform(self) -> bool:
        return self.token == _PLATFORM and self.name == _PLATFORM

    def rewrite(self, response: bytes) -> bytes:
        """An error response of ours (``http1_write.error_response``) as this brand says it: header
        names ``X-IPSX-*`` become ``X-<token>-*`` and the platform's name in the text the brand's."""
        if self.is_platform:
            return response
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        code = ""
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            lname = name.lower()
            if lname in ("content-type", "content-length"):
                continue
            if lname == "connection":
                close = close or value.lower() == "close"
                continue
            if lname == "x-ipsx-error":
                code = value
            if lname.startswith("x-ipsx-"):
                name = f"X-{self.token}-{name[7:]}"
            headers.append((name, _PLATFORM_WORD.sub(self.name, value)))
        text = _UNBRANDED_TEXTS.get(code) or body.decode("utf-8", "replace").rstrip("\n")
        text = _PLATFORM_WORD.sub(self.name, _PLATFORM_HEADER.sub(f"X-{self.token}-", text))
        return http1_write.error_response(status, text, headers=headers, close=close)

    def own_headers(self, head: http1.RequestHead) -> None:
        """Read the brand's targeting and rule headers (``X-<token>-Session: s1``) as the
        platform's ``X-IPSX-*`` ones, in place, so they target the request and never reach the
        origin. Only the names the platform reads are taken: a brand called Request leaves the
        client's ``X-Request-ID`` alone."""
        if self.is_platform:
            return
        prefix = f"x-{self.token.lower()}-"
        size = len(prefix)
        head.headers[:] = [
            ("X-IPSX-" + name[size:], value)
            if name[:size].lower() == prefix and is_header_key(name[size:])
            else (name, value)
            for name, value in head.headers
        ]

    def header_lines(self, extra: bytes) -> bytes:
        """Header lines of ours (``X-IPSX-Exit: …\\r\\n``) with this brand's names."""
        if self.is_platform:
            return extra
        return _HEADER_LINE.sub(b"X-" + self.token.encode("ascii") + b"-", extra)


PLATFORM = Brand()
# How a spliced stream ended, in the requester's terms (A is the client, B the exit).
_OUTCOMES = {
    "a_closed": "client_closed",
    "b_closed": "exit_closed",
    "a_lost": "client_lost",
    "b_lost": "exit_lost",
}


class _BrandedForwarder(PlainForwarder):
    """Plain-HTTP forwarding whose own response headers carry the listener's brand."""

    def __init__(
        self,
        settings: GatewaySettings,
        dialer: ExitDialer,
        authorize: Authorize,
        brand: Brand,
    ) -> None:
        super().__init__(settings, dialer, authorize)
        self._brand = brand

    def _own_headers(self, head: http1.RequestHead) -> None:
        self._brand.own_headers(head)

    async def _relay_response(
        self,
        conn: Conn,
        head: http1.RequestHead,
        response: http1.ResponseHead,
        chunk: bytes,
        upstream: _Upstream,
        extra: bytes,
    ) -> bool:
        return await super()._relay_response(
            conn, head, response, chunk, upstream, self._brand.header_lines(extra)
        )


class Front:
    """Serves one client connection at a time per task; shared state lives in the collaborators.

    ``brand`` and ``admit`` make it a reseller's listener (see the module docstring);
    ``authenticate`` then checks the reseller's sub-users' credentials.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        dialer: ExitDialer,
        authenticate: Authenticate,
        *,
        stats: GatewayStats | None = None,
        brand: Brand = PLATFORM,
        admit: Admit | None = None,
    ) -> None:
        self._settings = settings
        self._stats = GatewayStats() if stats is None else stats
        self._dialer = dialer
        self._authenticate = authenticate
        self._brand = brand
        self._admit = admit
        self.splices: set[Splice] = set()
        # Scrapers send the same few user names over and over: parsed once, reused.
        self._parsed: dict[tuple[str, str], Targeting] = {}
        self._forwarder = (
            PlainForwarder(settings, dialer, self._http_auth)
            if brand.is_platform
            else _BrandedForwarder(settings, dialer, self._http_auth, brand)
        )

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
                conn.write(http1_write.error_response(408, "request timeout"))
            conn.close()
        except Refused as refused:
            conn.write(self._brand.rewrite(refused.response))
            conn.close()
        except (ConnectionClosed, ConnectionError):
            conn.abort()
        except asyncio.CancelledError:
            conn.abort()
            raise
        except Exception:
            log.exception("internal error on a client connection")
            if not socks:
                conn.write(http1_write.error_response(500, "internal error"))
            conn.close()

    # authentication and targeting, shared by both protocols
    async def _targeting(self, username: str, password: str) -> Targeting | None:
        """The client's targeting, or None when the credentials are wrong. Raises TargetingError."""
        account = username.split("-", 1)[0].lower()
        try:
            key = await self._authenticate(account, password) if account else None
            if key is None or "proxy" not in key.scopes:  # a key without the scope is no credential here
                return None
        except AccountsUnavailable:
            log.warning("credentials of %r could not be checked: accounts database unavailable", account[:32])
            raise
        # Cached with the key it came with, so a connection costs a lookup and no copy.
        targeting = self._parsed.get((username, key.key_id))
        if targeting is None:
            # The key's account is the one billed: on a reseller's listener the user name is the
            # sub-user's name there, and its account has an internal name of its own.
            parsed = parse_username(username)  # raises before caching
            if key.rules:  # the key's standing rules, for what the user name leaves unset
                parsed = with_rules(parsed, parse_rules(key.rules))
            targeting = replace(parsed, account=key.account_name, key=key.key_id)
            if len(self._parsed) >= _PARSE_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[(username, key.key_id)] = targeting
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

    async def _refusal(self, account: str) -> str | None:
        """Why the account's standing refuses new streams (a key of STANDING_REFUSALS), or None.
        Raises AccountsUnavailable."""
        if self._admit is None:
            return None
        refusal = await self._admit(account)
        if refusal is not None:
            self._stats.refused(refusal)
        return refusal

    async def _http_auth(self, head: http1.RequestHead) -> Targeting:
        credentials = parse_basic_credentials(head.get("proxy-authorization") or "")
        realm = self._brand.realm
        if credentials is None:
            self._stats.auth_failed("missing")
            raise http_error(407, "auth_required", "proxy authentication required", realm)
        try:
            targeting = await self._targeting(*credentials)
            if targeting is None:
                self._stats.auth_failed("invalid")
                raise http_error(407, "auth_failed", "proxy authentication failed", realm)
            refusal = await self._refusal(targeting.account)
            if refusal is not None:
                status, code, _, message = STANDING_REFUSALS.get(refusal, STANDING_REFUSALS["suspended"])
                raise http_error(status, code, message)
            return apply_headers(targeting, head.headers)
        except TargetingError as error:
            self._stats.auth_failed("bad_targeting")
            raise http_error(400, "bad_targeting", str(error)) from None
        except AccountsUnavailable:
            self._stats.auth_failed("unavailable")
            raise http_error(
                503, "auth_unavailable", "credentials cannot be checked now; try again"
            ) from None

    async def _http(self, conn: Conn, first: bytes) -> None:
        reader = http1.HeadReader(self._settings.limits)
        try:
            head = await self._read_head(conn, reader, first)
            if head is None:
                conn.close()
                return
            conn.clear_deadline()
            if head.method == "CONNECT":
                self._brand.own_headers(head)
                await self._connect(conn, head, reader.rest)
            else:
                await self._forwarder.run(conn, reader, head)
        except http1.ProtocolError as error:
            raise http_error(error.status, "bad_request", error.reason) from None

    async def _connect(self, conn: Conn, head: http1.RequestHead, rest: bytes) -> None:
        host, port = http1.parse_authority(head.target)
        targeting = await self._http_auth(head)
        try:
            stream = await self._dialer.open(targeting, host, port, "connect")
        except (DialError, NoExit, NoDeal) as error:
            raise dial_refusal(error) from None
        conn.write(_CONNECTED % (self._brand.token.encode("ascii"), stream.exit_id.encode()))
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
            # a client gone mid-stream: the agent hears how much of the download it got
            cut_short=lambda client: stream.cut_short(splice.b_to_a, CLIENT_LOST) if client else None,
        )
        if not stream.finished:
            self.splices.add(splice)
            if stream.watched is not None:
                stream.watched.gauge = lambda: splice.a_to_b + splice.b_to_a
                stream.watched.cut = lambda: self._cut_allowance(stream, splice)

    @staticmethod
    def _cut_allowance(stream: Stream, splice: Splice) -> None:
        """End a tunnel whose deal carried its allowance, the agent told how much of the download
        reached the client."""
        stream.cut_short(splice.b_to_a, ALLOWANCE_USED)
        splice.end(ALLOWANCE_USED)

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
                        except (TargetingError, AccountsUnavailable) as error:
                            targeting = None
                            unavailable = isinstance(error, AccountsUnavailable)
                            self._stats.auth_failed("unavailable" if unavailable else "bad_targeting")
                        else:
                            if targeting is None:
                                self._stats.auth_failed("invalid")
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
            if error.reply == b"\x05\xff":  # no username/password offered
                self._stats.auth_failed("missing")
            # What the core answered before the error (the method selection of a greeting that
            # came in one packet with a bad sub-negotiation) goes first.
            out = server.data_to_send() + error.reply
            if out:
                conn.write(out)
            conn.close()

    async def _socks5_connect(
        self, conn: Conn, server: socks5.Socks5Server, targeting: Targeting, request: socks5.ConnectRequest
    ) -> None:
        try:
            standing = await self._refusal(targeting.account)
        except AccountsUnavailable:
            standing = "unavailable"
        if standing is not None:
            code = STANDING_REFUSALS[standing][2] if standing in STANDING_REFUSALS else 1
            conn.write(server.send_reply(socks5.ReplyCode(code)))
            conn.close()
            return
        try:
            stream = await self._dialer.open(targeting, request.host, request.port, "socks5")
        except NoExit:
            conn.write(server.send_reply(socks5.ReplyCode(NO_EXIT[2])))
            conn.close()
            return
        except NoDeal as refusal:
            code = NO_DEAL.get(refusal.reason, NO_DEAL["unavailable"])[2]
            conn.write(server.send_reply(socks5.ReplyCode(code)))
            conn.close()
            return
        except DialError as error:
            conn.write(server.send_reply(socks5.ReplyCode(DIAL_ERRORS[error.code][2])))
            conn.close()
            return
        conn.write(server.send_reply(socks5.ReplyCode.SUCCEEDED))
        self._splice(conn, stream, server.trailing)

    @property
    def busy(self) -> int:
        """Streams in flight: tunnels being relayed and plain-HTTP exchanges under way."""
        return len(self.splices) + self._forwarder.exchanging

    def drain(self) -> None:
        """From now on, kept-alive plain-HTTP connections close after their current exchange."""
        self._forwarder.draining = True

    def abort_all(self) -> None:
        for splice in list(self.splices):
            splice.abort()
