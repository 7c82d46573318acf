"""Name resolution for the agent: IP literals without a lookup, names cached for a short while.

A rotating scraper opens many streams to the same few hosts; resolving each time costs a
thread-pool round trip in the event loop. Cached answers are still checked by the exit policy
on every dial, since the policy applies to the address connected to, not to the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from typing import Any

AddrInfo = tuple[Any, ...]


class Resolver:
    def __init__(self, *, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._cache: dict[str, tuple[float, list[AddrInfo]]] = {}

    def cached(self, host: str) -> list[AddrInfo] | None:
        """The addresses of ``host`` if known without a lookup: an IP literal, or a fresh answer."""
        entry = self._cache.get(host)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return None
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        infos: list[AddrInfo] = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(literal), 0))]
        self._store(host, math.inf, infos)
        return infos

    async def lookup(self, host: str) -> list[AddrInfo]:
        """Resolve ``host`` now; raises OSError (or UnicodeError) when it does not resolve."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        self._store(host, time.monotonic() + self._ttl, infos)
        return infos

    def _store(self, host: str, expires: float, infos: list[AddrInfo]) -> None:
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[host] = (expires, infos)
