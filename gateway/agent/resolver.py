"""Name resolution for the agent: IP literals without a lookup, names cached for a short while.

A rotating scraper opens many streams to the same few hosts; resolving each time costs a
thread-pool round trip in the event loop. Cached answers are still checked by the exit policy
on every dial, since the policy applies to the address connected to, not to the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

AddrInfo = tuple[Any, ...]


class Resolver:
    def __init__(self, *, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._cache: dict[str, tuple[float, list[AddrInfo]]] = {}

    async def resolve(self, host: str, port: int) -> list[AddrInfo]:
        """``getaddrinfo``-shaped results for ``host``; raises OSError when it does not resolve."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(literal), port))]
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[host] = (now + self._ttl, infos)
        return infos
