"""Settings of a gateway node: typed, immutable, built once at the edge and passed in."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

from gateway.http1 import Limits

SECONDS = 1.0


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    redis_url: str
    database_url: str = field(repr=False)
    host: str = "127.0.0.1"
    http_port: int = 8080  # HTTP forward proxy (absolute-URI and CONNECT); also answers SOCKS5
    socks_port: int = 1080  # SOCKS5; also answers HTTP
    tunnel_host: str = "127.0.0.1"
    tunnel_port: int = 8443  # where provider agents dial in
    tunnel_cert: str | None = None  # PEM certificate chain: agents then connect with TLS
    tunnel_key: str | None = field(default=None, repr=False)  # its private key
    # The host agents are told to dial this node's tunnel port at; default tunnel_host, or, when
    # that is a wildcard address, whatever host the agent already reached the gateway at.
    advertise_host: str | None = None
    region: str = ""  # announced with the node: agents of a region keep tunnels to its nodes only
    reuse_port: bool = False  # share the requester ports with sibling processes (--workers)
    # Route each requester only through the exits of its active deals (spot deals when it has
    # none); off: any live exit that matches, usage not attributed to deals (no market running).
    market: bool = False
    node_id: str = field(default_factory=default_node_id)
    limits: Limits = field(default_factory=Limits)
    handshake_timeout: float = 10 * SECONDS  # a client's request head / SOCKS5 handshake
    keepalive_timeout: float = 60 * SECONDS  # between two requests on a kept-alive connection
    idle_timeout: float = 300 * SECONDS  # a tunnel with no byte either way is closed
    dial_timeout: float = 10 * SECONDS  # from "dial" to the agent's answer
    max_attempts: int = 3  # exits tried for one connection when a dial fails before any byte
    heartbeat_interval: float = 3 * SECONDS
    heartbeat_ttl: float = 10 * SECONDS  # an exit silent this long is out of selection
    auth_cache_ttl: float = 30 * SECONDS
    candidate_cache_ttl: float = 1 * SECONDS
    # how often a node adds its streams' bytes to their deals' counters (--market): a stream runs
    # past its deal's traffic allowance by at most what it carries in this long
    allowance_interval: float = 0.5 * SECONDS
    max_exits_per_agent: int = 256
    drain_timeout: float = 30 * SECONDS  # on stop, streams in flight get this long to finish
    db_pool: int = 4  # PostgreSQL connections at most (API-key lookups, cached; market reads)
    # /metrics, /healthz and /readyz on a port of their own (None: not served; 9108 is customary).
    # Unauthenticated: keep metrics_host on loopback or a private network, never public.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    ban_ttl: int = 3600  # seconds an X-IPSX-Ban keeps an exit away from a requester's domain
    # White-label listeners: (reseller account name, port) pairs, each a port of its own (HTTP and
    # SOCKS5 on one, on ``host``) where the reseller's sub-users, and only they, authenticate,
    # under the reseller's brand. A load balancer routes the reseller's hostname to its port.
    reseller_ports: tuple[tuple[str, int], ...] = ()
    # how long a listener trusts a sub-user's standing (suspended, monthly quota and spend limit)
    standing_ttl: float = 5 * SECONDS
    retry_body_limit: int = 64 * 1024  # bytes of a request body kept so a retry can resend it

    def advertised_tunnel(self, bound_port: int) -> str:
        """This node's tunnel endpoint as announced to agents: ``HOST:PORT`` or ``:PORT``."""
        host = self.advertise_host or self.tunnel_host
        if host in ("", "0.0.0.0", "::"):
            return f":{bound_port}"
        return f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
