"""Settings of an inspecting worker: typed, immutable, built once at the edge and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

SECONDS = 1.0
MIB = 1024 * 1024
MIN_CA_SECRET = 16  # characters of IPSX_INSPECT_CA_SECRET at least


def check_ca_secret(secret: str | None) -> str | None:
    """``secret`` if it can seal CA keys (``None``: they are stored unsealed); raises ValueError."""
    if secret is not None and len(secret) < MIN_CA_SECRET:
        raise ValueError(f"IPSX_INSPECT_CA_SECRET must be at least {MIN_CA_SECRET} characters")
    return secret


@dataclass(frozen=True, slots=True)
class InspectSettings:
    redis_url: str
    database_url: str = field(repr=False)
    gateway_host: str = "127.0.0.1"  # the gateway node decrypted requests go on through
    gateway_port: int = 8080  # its HTTP proxy port
    host: str = "127.0.0.1"
    port: int = 8082  # the inspecting port: never the gateway's
    upstream_ca: str | None = None  # CA bundle origins' certificates are checked with (None: the system's)
    connect_timeout: float = 15 * SECONDS  # gateway connection, CONNECT (the exit's dial) and origin TLS
    idle_timeout: float = 60 * SECONDS  # waiting for any byte of an origin's response
    max_request_body: int = 16 * MIB  # bodies are buffered: a retried request is sent again whole
    max_response_body: int = 64 * MIB  # and so are responses, to apply the rules to them
    max_idle_tunnels: int = 4  # idle tunnels a client connection keeps for its next requests
    auth_cache_ttl: float = 30 * SECONDS
    ca_cache_size: int = 1024  # accounts whose CA (and leaf certificates) stay in memory
    drain_timeout: float = 10 * SECONDS  # on stop, open client connections get this long
    db_pool: int = 2
    ca_secret: str | None = field(default=None, repr=False)  # seals accounts' CA keys (gateway.inspect.ca)

    def __post_init__(self) -> None:
        if (self.host, self.port) == (self.gateway_host, self.gateway_port):
            raise ValueError("the inspecting port must not be the gateway's port")
        if not 0 <= self.port <= 65535 or not 1 <= self.gateway_port <= 65535:
            raise ValueError("ports must be from 1 to 65535 (0: any free port for the inspecting port)")
        if self.max_request_body < 0 or self.max_response_body < 0 or self.max_idle_tunnels < 0:
            raise ValueError("body caps and max_idle_tunnels must not be negative")
        if min(self.connect_timeout, self.idle_timeout, self.drain_timeout) <= 0 or self.db_pool < 1:
            raise ValueError("timeouts and db_pool must be positive")
        check_ca_secret(self.ca_secret)
