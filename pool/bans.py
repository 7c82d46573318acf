"""Exits a requester banned for a domain (SPEC §6b: ban-aware rotation).

A ban keeps one exit away from one requester's connections to one domain, and to the domain's
subdomains, until it ends. Gateway nodes read bans through a short cache (a second by default),
so a scraper opening thousands of connections a second to one site costs Redis one script call
per second per node; the node that records a ban drops the requester's cached entries at once, so
its very next connection skips the banned exit, and every other node sees it within the cache
time.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import cast

import redis.asyncio as aioredis

from pool import keys
from pool.server_time import NOW_MS_LUA

DEFAULT_BAN_TTL = 3600  # seconds
MAX_BAN_TTL = 30 * 86400
_MAX_LEVELS = 6  # a host and at most five parent domains are looked up
_CACHE_LIMIT = 50_000

# Sets ``floor``: the score bound of the bans in force now (their end is later than now).
_IN_FORCE_LUA = (
    NOW_MS_LUA
    + """
local floor = '(' .. string.format('%.3f', now / 1000)
"""
)

# KEYS[1] the ban set; ARGV[1] the ban's length (s), ARGV[2] exit id. Returns when the exit's ban
# ends (unix seconds). A longer ban is never shortened; ended bans are dropped; the set expires
# with its last ban.
_BAN_LUA = (
    NOW_MS_LUA
    + """
redis.call('ZADD', KEYS[1], 'GT', math.ceil(now / 1000 + tonumber(ARGV[1])), ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.3f', now / 1000))
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])))
return math.floor(tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2])))
"""
)

# KEYS: one account's ban sets (a host's and its parent domains'). The exits banned in any of them.
_BANNED_LUA = (
    _IN_FORCE_LUA
    + """
local out = {}
for i = 1, #KEYS do
  for _, exit_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], floor, '+inf')) do
    out[#out + 1] = exit_id
  end
end
return out
"""
)

# KEYS[1] a ban set. Its bans in force: exit id, end (unix seconds), exit id, end, …
_LISTED_LUA = (
    _IN_FORCE_LUA
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], floor, '+inf', 'WITHSCORES')
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def domain_of(host: str) -> str:
    """The domain a ban is recorded for: the host in lower case, without a trailing dot or a
    leading ``www.`` (IP literals as they are)."""
    name = host.lower().rstrip(".")
    return name[4:] if name.startswith("www.") and name.count(".") >= 2 else name


def lookup_domains(host: str) -> list[str]:
    """The domains whose bans apply to ``host``: itself and its parents of two labels or more
    (of a longer name, itself and its five shortest parents).

    ``a.shop.example.com`` → ``a.shop.example.com``, ``shop.example.com``, ``example.com``.
    """
    name = domain_of(host)
    try:
        ipaddress.ip_address(name.strip("[]"))
        return [name]
    except ValueError:
        pass
    labels = name.split(".")
    if len(labels) <= 2:
        return [name]
    parents = [".".join(labels[start:]) for start in range(1, len(labels) - 1)]
    return [name, *parents[-(_MAX_LEVELS - 1) :]]


class BanBook:
    """Records bans and answers which exits a requester may not use for a host.

    Bans start, end and are judged by the Redis server's clock (``pool.server_time``), so a
    ban lasts as long for every node and the API whatever their hosts' clocks say. ``clock``
    (seconds) times this book's cache only.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._cache_ttl = cache_ttl
        self._clock = clock
        # account → host → (cache expiry, banned exit ids)
        self._cache: dict[str, dict[str, tuple[float, frozenset[str]]]] = {}
        self._script = redis.register_script(_BAN_LUA)
        self._banned = redis.register_script(_BANNED_LUA)
        self._listed = redis.register_script(_LISTED_LUA)

    async def ban(self, account: str, domain: str, exit_id: str, ttl: int = DEFAULT_BAN_TTL) -> int:
        """Ban ``exit_id`` for ``account`` on ``domain`` for ``ttl`` seconds (an existing longer
        ban stays). Returns when the ban ends (unix seconds); raises ValueError for a TTL out of
        1..MAX_BAN_TTL."""
        if not 1 <= ttl <= MAX_BAN_TTL:
            raise ValueError(f"a ban lasts from 1 to {MAX_BAN_TTL} seconds")
        ends = await self._script(keys=[keys.bans(account, domain_of(domain))], args=[ttl, exit_id])
        self._cache.pop(account, None)
        return int(ends)

    async def lift(self, account: str, domain: str, exit_id: str) -> bool:
        """End a ban early; False if there was none."""
        removed = await self._redis.zrem(keys.bans(account, domain_of(domain)), exit_id)
        self._cache.pop(account, None)
        return bool(removed)

    async def listed(self, account: str, domain: str) -> dict[str, int]:
        """The bans in force recorded for exactly ``domain``: exit id → end (unix seconds)."""
        raw = cast(list[bytes], await self._listed(keys=[keys.bans(account, domain_of(domain))]))
        return {_text(member): int(float(score)) for member, score in zip(raw[::2], raw[1::2], strict=True)}

    async def banned(self, account: str, host: str) -> frozenset[str]:
        """The exits ``account`` may not use for ``host`` (bans of the host and its parents)."""
        now = self._clock()
        per_account = self._cache.get(account)
        if per_account is not None:
            cached = per_account.get(host)
            if cached is not None and cached[0] > now:
                return cached[1]
        domains = [keys.bans(account, domain) for domain in lookup_domains(host)]
        found = frozenset(_text(member) for member in await self._banned(keys=domains))
        if per_account is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            per_account = self._cache.setdefault(account, {})
        elif len(per_account) >= _CACHE_LIMIT:
            per_account.clear()
        per_account[host] = (now + self._cache_ttl, found)
        return found

    async def session_exit(self, account: str, session: str) -> str | None:
        """The exit ``account``'s sticky ``session`` is bound to now, or None."""
        bound = await self._redis.get(keys.session(account, session))
        return None if bound is None else _text(bound)
