"""Settings of the REST API: typed, immutable, built once at the edge."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

SECONDS = 1.0
KIB = 1024


@dataclass(frozen=True, slots=True)
class ApiSettings:
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    jwt_secret: str = field(repr=False)  # HS256 key of the session tokens; 32 bytes or more
    host: str = "127.0.0.1"
    port: int = 8000
    # Sign-In with Ethereum: the messages must name this domain and chain, and be signed within
    # nonce_ttl of asking for the nonce.
    siwe_domain: str = "localhost:8000"
    chain_id: int = 1
    nonce_ttl: float = 5 * 60 * SECONDS
    token_ttl: float = 15 * 60 * SECONDS
    # requests one client address (the connection's peer, or the client a trusted proxy names)
    # may make per auth_window of POST /v1/auth/nonce, and of POST /v1/auth/siwe (each attempt,
    # signed in or refused), before it is answered 429. With nonce_ttl they bound the unused
    # nonces one address holds: auth_nonce_limit for each window a nonce's lifetime overlaps (360
    # with these defaults).
    auth_nonce_limit: int = 60
    auth_siwe_limit: int = 60
    auth_window: float = 60 * SECONDS
    # the operator's reverse proxies and load balancers (addresses or networks): a request from one
    # of them counts against the client its X-Forwarded-For names (dashboard.remote)
    trusted_proxies: tuple[str, ...] = ()
    jwt_audience: str = "ipsx-api"
    jwt_issuer: str = "ipsx"
    max_body: int = 64 * KIB
    page_limit: int = 100  # the most items one page of a list returns
    db_pool: int = 10  # PostgreSQL connections at most
    # where the other API nodes reach this one to forward market calls when it runs the market
    # (default http://HOST:PORT, the machine's name when HOST is 0.0.0.0)
    advertise_url: str | None = None
    market: bool = True  # run the market here (if no other process holds its lock)
    spot_duration_s: int = 600  # how long a spot deal opened for traffic without an order lasts
    spot_traffic_bytes: int = 10**9  # and the traffic it may carry
    # the gateway's HTTP proxy, HOST:PORT as browsers reach it: what the orders' PAC files name
    proxy_address: str = "127.0.0.1:8080"
    # Payments over channels: the PaymentChannels contract (on chain_id) whose balance proofs pay
    # invoices (None: invoices cannot be paid here), and the unpaid usage, in base units, a
    # channel-funded requester may owe before the gateways answer it 402.
    channels_address: str | None = None
    unpaid_limit: int = 10**18
    invoice_interval: float = 2.0
    # how long the operator's consent to close a requester channel lasts (whole seconds): the
    # channel is frozen until then (billing.payments.consent)
    consent_ttl: int = 60 * 60
    # the operator's wallet (hex key): with channels_address, the market's node signs providers'
    # payout proofs with it (billing.payouts); None: no payouts signed
    operator_key: str | None = field(default=None, repr=False)
    # seals the accounts' TLS-inspection CA keys in PostgreSQL (gateway.inspect.ca); the same
    # IPSX_INSPECT_CA_SECRET as the inspecting nodes'. None: stored unsealed
    inspect_ca_secret: str | None = field(default=None, repr=False)
    # The web dashboard (dashboard.web). Sessions are a JWT in an HttpOnly cookie, for web_session_ttl.
    web_session_ttl: float = 8 * 60 * 60 * SECONDS
    # sign-in attempts one client address may make per web_signin_window before it is answered 429
    web_signin_limit: int = 10
    web_signin_window: float = 60 * SECONDS
    # with an account name, the sign-in page offers a one-click login as that account: for
    # `ipsx demo` only, since anyone who reaches the dashboard may then act as it
    web_demo_account: str | None = None
    web_live_interval: float = 1 * SECONDS  # how often the live page's event stream pushes totals
    # the gateway's SOCKS5 port as users reach it, HOST:PORT (the HTTP one is proxy_address)
    socks_address: str = "127.0.0.1:1080"
    # where users reach this API, e.g. https://dash.example.com: the base of the PAC URLs the pages
    # and GET /v1/orders/{id}/pac hand out (None: http://HOST:PORT, the address the API listens on)
    public_url: str | None = None

    def base_url(self, bound_port: int | None = None) -> str:
        """Where users reach this API: ``public_url`` (without a trailing ``/``), else
        ``http://HOST:PORT`` of the listening address (``bound_port`` when ``port`` is 0; this
        machine's name when HOST is every address). Never a request's Host header, which a client
        or a cache in front may forge."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = socket.gethostname() if self.host in ("", "0.0.0.0", "::") else self.host
        port = self.port or bound_port or 0
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
