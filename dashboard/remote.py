"""The client's address when the API runs behind the operator's own reverse proxies.

A request's peer is its client, unless the peer is one of the proxies or load balancers the
operator names (``ipsx api --trusted-proxy CIDR``). Then ``X-Forwarded-For`` tells the hops:
each proxy appends the address it got the request from, so read from the right, the first
address that is not a trusted proxy is the client. What lies left of it was written by that
client and is not believed. A peer that is not trusted is the client whatever its headers say,
so nobody dodges a per-address limit by naming a new address each time.

The address found replaces ``request.remote``, which the sign-in limits count by
(``dashboard.auth.client_of``). Only that: unlike the ``X-Forwarded-*`` middlewares of
aiohttp-remotes, a trusted proxy does not change the scheme or host a request is seen at (the
sign-in messages name the configured domain, never a header), and a request that comes straight
to the API from elsewhere (a health check, another API node) is served, not refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 32  # addresses of X-Forwarded-For looked at, from the right


def parse_network(text: str) -> Network:
    """A trusted proxy's address or network (``10.0.0.7``, ``10.0.0.0/8``, ``fd00::/8``);
    raises ValueError for anything else."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network: {text!r}") from None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6] or [v6]:port
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def forwarded_client(
    peer: str | None, forwarded_for: Iterable[str], networks: Sequence[Network]
) -> str | None:
    """The client of a request from ``peer`` with these ``X-Forwarded-For`` values (each a comma-
    separated list, in the order received), given the trusted proxies' ``networks``.

    ``peer`` itself unless it is trusted. Otherwise the rightmost address that is not a trusted
    proxy; the leftmost when all are; the last trusted hop when an entry is not an address (who
    sent the request is unknown past it, so it counts against the proxy that passed it on).
    """
    if not networks or peer is None:
        return peer
    hop = _address(peer)
    if hop is None or not _trusted(hop, networks):
        return peer
    entries = [entry for value in forwarded_for for entry in value.split(",") if entry.strip()]
    for entry in reversed(entries[-MAX_HOPS:]):
        address = _address(entry)
        if address is None:
            break
        hop = address
        if not _trusted(address, networks):
            break
    return str(hop)


def trusted_proxies_middleware(networks: Sequence[Network]) -> Middleware:
    """An aiohttp middleware that sets ``request.remote`` to :func:`forwarded_client`."""
    networks = tuple(networks)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        client = forwarded_client(peer, request.headers.getall("X-Forwarded-For", ()), networks)
        if client is not None and client != peer:
            request = request.clone(remote=client)
        return await handler(request)

    return middleware
