"""The mitmproxy addons of the inspecting port: who may use it, which CA signs for them, and how
each decrypted request goes on (through the gateway, never straight to an origin).

mitmproxy parses the client's HTTP and terminates its TLS; these hooks decide everything else:

- ``http_connect``: the client's CONNECT is authenticated like the gateway's (its API key, the
  ``proxy`` scope, the username's targeting) and refused unless its account turned inspection on;
  the account's CA is loaded for the TLS handshake that follows;
- ``tls_start_client`` (:class:`RequesterTls`): the leaf certificate is minted by that CA;
- ``request``: the request goes out over a tunnel of the gateway's (``upstream``), the rules
  (``rules``) are applied, and the response is set on the flow;
- ``server_connect``: refused, always — mitmproxy itself never dials an origin, so no byte leaves
  unmetered.

Every refusal is a short text/plain response with ``X-IPSX-Error``; no traceback reaches a client.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from mitmproxy import connection, http, tls
from mitmproxy.addons.tlsconfig import TlsConfig
from mitmproxy.certs import Cert, CertStore, DHParams
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing.accounts import KeyCache
from billing.errors import AccountsUnavailable
from gateway.inspect import ca, rules, state
from gateway.inspect.errors import InspectError
from gateway.inspect.settings import InspectSettings
from gateway.inspect.upstream import (
    ClientTunnels,
    Limits,
    OriginRequest,
    OriginResponse,
    TunnelKey,
    origin_context,
)
from gateway.targeting import (
    Targeting,
    TargetingError,
    apply_headers,
    parse_basic_credentials,
    parse_rules,
    parse_username,
    with_rules,
)

log = logging.getLogger("ipsx.inspect")

_REALM = 'Basic realm="IPSX"'
_REQUESTER = "ipsx.requester"  # flow.metadata key of a plain request's requester
# Options of mitmproxy's own CA: this port never makes or reads one (no ~/.mitmproxy).
_STORE_OPTIONS = frozenset({"certs", "confdir", "key_size", "cert_passphrase"})


@dataclass(frozen=True, slots=True)
class Requester:
    """An authenticated client with inspection on: whose traffic it is and how it targets."""

    account: str
    account_id: int
    authorization: str = field(repr=False)  # its Proxy-Authorization, passed on to the gateway
    targeting: Targeting = field(repr=False)
    connect_headers: tuple[tuple[str, str], ...] = ()  # the X-IPSX-* headers of its CONNECT


@dataclass(slots=True)
class _Client:
    tunnels: ClientTunnels
    requester: Requester | None = None  # set by an accepted CONNECT
    store: CertStore | None = None  # its account's CA, for the TLS handshake inside the tunnel


def refusal(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> http.Response:
    """A short text/plain answer naming its reason in ``X-IPSX-Error``."""
    headers = {"Content-Type": "text/plain; charset=utf-8", "X-IPSX-Error": code, **(extra or {})}
    return http.Response.make(status, message + "\n", headers)


def _error_response(error: InspectError) -> http.Response:
    extra = {"Proxy-Authenticate": error.authenticate} if error.authenticate else None
    return refusal(error.status, error.code, error.message, extra)


def _text_headers(headers: http.Headers) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.fields]


class RequesterTls(TlsConfig):
    """mitmproxy's TLS setup, with the client's own account CA in place of mitmproxy's single one.

    ``store_of(client)`` is that CA's certificate store, or None for a client that has not been
    admitted by a CONNECT: such a handshake gets no certificate and the connection is closed.
    """

    def __init__(self, store_of: Callable[[connection.Client], CertStore | None]) -> None:
        self._store_of = store_of

    def running(self) -> None:
        """mitmproxy would load (or make) its own CA in ``confdir`` here: there is none to load."""

    def configure(self, updated: set[str]) -> None:
        super().configure(set(updated) - _STORE_OPTIONS)  # type: ignore[no-untyped-call]

    def tls_start_client(self, tls_start: tls.TlsData) -> None:
        client = tls_start.context.client
        store = self._store_of(client)
        if store is None:
            log.info("TLS from a client that was not admitted by a CONNECT: connection closed")
            return
        # The base class reads ``self.certstore``; the hook runs to its end without yielding to
        # the event loop, so no other connection sees this store.
        self.certstore = store
        super().tls_start_client(tls_start)


class Inspector:
    """The addon that admits clients and forwards their decrypted requests through the gateway."""

    def __init__(
        self, settings: InspectSettings, *, keys: KeyCache, redis: Redis, pg: asyncpg.Pool, dhparams: DHParams
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._redis = redis
        self._pg = pg
        self._dhparams = dhparams
        self._gateway = (settings.gateway_host, settings.gateway_port)
        self._origin_tls = origin_context(settings.upstream_ca)
        self._limits = Limits(
            connect_timeout=settings.connect_timeout,
            idle_timeout=settings.idle_timeout,
            max_response_body=settings.max_response_body,
        )
        self._clients: dict[str, _Client] = {}
        self._stores: OrderedDict[int, CertStore] = OrderedDict()
        self.tls = RequesterTls(self._store_of)

    # client connections
    def _client(self, client: connection.Client) -> _Client:
        found = self._clients.get(client.id)
        if found is None:
            tunnels = ClientTunnels(
                self._gateway, self._origin_tls, self._limits, max_idle=self._settings.max_idle_tunnels
            )
            found = self._clients[client.id] = _Client(tunnels)
        return found

    def _store_of(self, client: connection.Client) -> CertStore | None:
        found = self._clients.get(client.id)
        return None if found is None else found.store

    def client_disconnected(self, client: connection.Client) -> None:
        found = self._clients.pop(client.id, None)
        if found is not None:
            found.tunnels.close()

    def close(self) -> None:
        """Close every client's idle tunnels (the worker is stopping)."""
        for found in self._clients.values():
            found.tunnels.close()
        self._clients.clear()

    # admission: credentials, targeting, the account's switch, its CA
    async def _admit(self, headers: http.Headers) -> Requester:
        """The requester these request headers authenticate. Raises InspectError (407, 400, 403, 503)."""
        credentials = parse_basic_credentials(headers.get("proxy-authorization", ""))
        if credentials is None:
            raise _auth_error("auth_required", "proxy authentication required")
        username, password = credentials
        account = username.split("-", 1)[0].lower()
        try:
            key = await self._keys.check(account, password) if account else None
        except AccountsUnavailable:
            log.warning("credentials of %r could not be checked: accounts database unavailable", account[:32])
            raise InspectError(
                "credentials cannot be checked right now", status=503, code="accounts_unavailable"
            ) from None
        if key is None or "proxy" not in key.scopes:
            raise _auth_error("auth_failed", "proxy authentication failed")
        connect_headers = rules.ipsx_headers(_text_headers(headers))
        try:
            targeting = parse_username(username)
            if key.rules:  # the key's standing rules (retries too), as on the gateway's ports
                targeting = with_rules(targeting, parse_rules(key.rules))
            apply_headers(targeting, connect_headers)
        except TargetingError as error:
            raise InspectError(str(error), status=400, code="bad_targeting") from None
        try:
            enabled = await state.is_enabled(self._redis, key.account_name)
        except (RedisError, OSError):
            log.warning("the inspection switch of %r could not be read: Redis unavailable", key.account_name)
            raise InspectError(
                "inspection cannot be checked right now", status=503, code="inspection_unavailable"
            ) from None
        if not enabled:
            raise InspectError(
                "TLS inspection is off for this account: turn it on with PUT /v1/inspection",
                status=403,
                code="inspection_disabled",
            )
        return Requester(
            account=key.account_name,
            account_id=key.account_id,
            authorization=headers.get("proxy-authorization", ""),
            targeting=targeting,
            connect_headers=tuple(connect_headers),
        )

    async def _store(self, requester: Requester) -> CertStore:
        store = self._stores.get(requester.account_id)
        if store is not None:
            self._stores.move_to_end(requester.account_id)
            return store
        secret = self._settings.ca_secret
        try:
            authority = await ca.authority_for(
                self._pg, requester.account_id, requester.account, secret=secret
            )
            key = authority.private_key(secret)
        except ca.CaKeyLocked as locked:
            log.error("the inspection CA of %r: %s", requester.account, locked)
            raise InspectError(
                "the account's CA cannot be loaded right now", status=503, code="ca_unavailable"
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, LookupError):
            log.warning("the inspection CA of %r could not be loaded", requester.account)
            raise InspectError(
                "the account's CA cannot be loaded right now", status=503, code="ca_unavailable"
            ) from None
        store = CertStore(key, Cert(authority.certificate), None, self._dhparams)
        self._stores[requester.account_id] = store
        while len(self._stores) > self._settings.ca_cache_size:
            self._stores.popitem(last=False)
        return store

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Admit the tunnel, or answer the CONNECT with the refusal (and close)."""
        found = self._client(flow.client_conn)
        try:
            requester = await self._admit(flow.request.headers)
            store = await self._store(requester)
        except InspectError as error:
            flow.response = _error_response(error)
            return
        found.requester, found.store = requester, store

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A plain (absolute-form) request is admitted on its own credentials, before its body."""
        found = self._client(flow.client_conn)
        if found.requester is not None or flow.response is not None:
            return
        try:
            flow.metadata[_REQUESTER] = await self._admit(flow.request.headers)
        except InspectError as error:
            flow.response = _error_response(error)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Answer the request from the origin, through the gateway, by the request's rules."""
        if flow.response is not None:
            return
        try:
            flow.response = await self._forward(flow)
        except InspectError as error:
            flow.response = _error_response(error)
        except TargetingError as error:
            flow.response = refusal(400, "bad_targeting", str(error))
        except Exception:
            log.exception("internal error on an inspected request (client %s)", flow.client_conn.id)
            flow.response = refusal(500, "internal_error", "internal error")

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """mitmproxy wants to dial an origin itself (a flow no hook answered, or a non-HTTP
        tunnel): never — that byte would leave unmetered, from this worker's own address."""
        data.server.error = "the inspecting port reaches origins through the gateway only"

    # forwarding
    async def _forward(self, flow: http.HTTPFlow) -> http.Response:
        found = self._client(flow.client_conn)
        requester = found.requester or flow.metadata.get(_REQUESTER)
        if not isinstance(requester, Requester):
            raise _auth_error("auth_required", "proxy authentication required")
        request = flow.request
        if request.headers.get("upgrade"):
            raise InspectError(
                "protocol upgrades (WebSocket) are not inspected: use the gateway's port",
                status=501,
                code="upgrade_unsupported",
            )
        planned = rules.plan(requester.targeting, requester.connect_headers, _text_headers(request.headers))
        started = time.time()
        response, exit_id, tries = await self._attempts(found.tunnels, requester, request, planned)
        return _client_response(request.method, response, exit_id, tries, started)

    async def _attempts(
        self, tunnels: ClientTunnels, requester: Requester, request: http.Request, planned: rules.Plan
    ) -> tuple[OriginResponse, str | None, int]:
        """Send the request, again through a fresh exit while the rules ask for it.

        Returns the last response, the exit that served it and the attempts that got an answer;
        raises InspectError when the first attempt gets none.
        """
        outgoing = _outgoing(request)
        asked = planned.rules
        headers = planned.headers
        last: tuple[OriginResponse, str | None] | None = None
        tries = 0
        while True:
            tries += 1
            key = TunnelKey(requester.authorization, headers, request.scheme, request.host, request.port)
            ban = asked.ban if tries == 1 else None
            if ban is not None:  # through a new tunnel, whose CONNECT carries the ban
                tunnels.forget(key)
            try:
                response, tunnel = await tunnels.exchange(
                    key,
                    outgoing,
                    fresh=ban is not None or tries > 1,
                    extra=(("X-IPSX-Ban", ban),) if ban is not None else (),
                    keep=tries == 1,  # a retry's session is used once
                )
            except InspectError:
                if last is None:
                    raise
                return (*last, tries - 1)  # the retry found no way out: the answer the client had
            last = (response, tunnel.exit_id)
            if not rules.should_retry(asked, request.method, response.status, tries):
                return (*last, tries)
            headers = rules.with_session(planned.headers, rules.new_session())


def _outgoing(request: http.Request) -> OriginRequest:
    """The request as it goes to the origin: origin form, end-to-end headers, the whole body."""
    body = request.raw_content or b""
    default_port = 443 if request.scheme == "https" else 80
    host = request.host if request.port == default_port else rules.authority(request.host, request.port)
    headers = rules.origin_headers(
        request.headers.fields, host=host, method=request.method, body_length=len(body)
    )
    return OriginRequest(request.method, request.data.path or b"/", headers, body)


def _auth_error(code: str, message: str) -> InspectError:
    return InspectError(message, status=407, code=code, authenticate=_REALM)


def _client_response(
    method: str, response: OriginResponse, exit_id: str | None, tries: int, started: float
) -> http.Response:
    bodiless = method.upper() == "HEAD" or response.status < 200 or response.status in (204, 304)
    headers = rules.client_headers(
        response.headers, body_length=None if bodiless else len(response.body), exit_id=exit_id, tries=tries
    )
    return http.Response(
        b"HTTP/1.1",
        response.status,
        response.reason,
        http.Headers(headers),
        b"" if bodiless else response.body,
        None,
        started,
        time.time(),
    )
