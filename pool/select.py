"""Exit selection: filters, rotation, load spreading and sticky sessions.

The candidate set for a filter comes from Redis (one script call: index intersection plus
liveness) and is cached for ``cache_ttl`` seconds per filter, so a rotating scraper opening
thousands of tunnels a second costs Redis one call per filter per second. The node's own view —
is the exit's tunnel up here, how many streams does it carry — is asked of the caller through
two callbacks, so an exit that just died is never picked from a stale cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from pool import keys
from pool.models import ExitFilters

# KEYS[1] node set, KEYS[2] alive zset, KEYS[3..] index sets; ARGV[1] oldest live heartbeat (ms),
# ARGV[2] the node
_CANDIDATES_LUA = """
local ids
if #KEYS > 2 then
  ids = redis.call('SINTER', KEYS[1], unpack(KEYS, 3))
else
  ids = redis.call('SMEMBERS', KEYS[1])
end
local floor = tonumber(ARGV[1])
local prefix = ARGV[2] .. '|'
local out = {}
for _, id in ipairs(ids) do
  local score = redis.call('ZSCORE', KEYS[2], prefix .. id)
  if score and tonumber(score) >= floor then out[#out + 1] = id end
end
return out
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


DEFAULT_SESSION_TTL = 600  # seconds; a sticky session lives this long after its last use


@dataclass(frozen=True, slots=True)
class Choice:
    """The exit picked for a connection; ``sticky`` if it came from the requester's session."""

    exit_id: str
    sticky: bool


class Selector:
    """Picks exits reachable from ``node`` for a requester's filters and session."""

    def __init__(
        self,
        redis: aioredis.Redis,
        node: str,
        *,
        is_available: Callable[[str], bool],
        load: Callable[[str], int],
        heartbeat_ttl: float = 10.0,
        cache_ttl: float = 1.0,
    ) -> None:
        self._redis = redis
        self._node = node
        self._is_available = is_available
        self._load = load
        self._heartbeat_ttl = heartbeat_ttl
        self._cache_ttl = cache_ttl
        self._cache: dict[ExitFilters, tuple[float, list[str]]] = {}
        self._cursor = 0
        self._script = redis.register_script(_CANDIDATES_LUA)

    async def candidates(self, filters: ExitFilters) -> list[str]:
        """Live exits on this node matching ``filters`` (possibly ``cache_ttl`` old)."""
        now = time.monotonic()
        cached = self._cache.get(filters)
        if cached is not None and cached[0] > now:
            return cached[1]
        index_keys = [keys.index(attribute, value) for attribute, value in filters.items()]
        floor = int((time.time() - self._heartbeat_ttl) * 1000)
        raw = await self._script(
            keys=[keys.node_exits(self._node), keys.alive(), *index_keys], args=[floor, self._node]
        )
        ids = sorted(_text(member) for member in raw)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[filters] = (now + self._cache_ttl, ids)
        return ids

    def invalidate(self) -> None:
        """Forget cached candidates (an exit joined or left this node)."""
        self._cache.clear()

    async def choose(
        self,
        filters: ExitFilters,
        *,
        exclude: frozenset[str] = frozenset(),
        only: frozenset[str] | None = None,
    ) -> str | None:
        """A fresh exit for one connection: the least loaded, rotating among equals.

        ``only``, when given, restricts the choice to those exits (a requester's deal exits).
        """
        ids = await self.candidates(filters)
        if only is not None:
            ids = [exit_id for exit_id in ids if exit_id in only]
        count = len(ids)
        if count == 0:
            return None
        least: list[str] = []
        least_load = 0
        for exit_id in ids:
            if exit_id in exclude or not self._is_available(exit_id):
                continue
            load = self._load(exit_id)
            if not least or load < least_load:
                least, least_load = [exit_id], load
            elif load == least_load:
                least.append(exit_id)
        if not least:
            return None
        # Rotate among the least loaded only, so no exit inherits the turns of a busy or
        # excluded neighbour.
        self._cursor = (self._cursor + 1) % (1 << 30)
        return least[self._cursor % len(least)]

    async def select(
        self,
        account: str,
        filters: ExitFilters,
        *,
        session: str | None = None,
        session_ttl: int | None = None,
        exclude: frozenset[str] = frozenset(),
        only: frozenset[str] | None = None,
    ) -> Choice | None:
        """The exit for a new connection of ``account``, or None if no live exit matches.

        With a ``session`` the exit it is bound to is reused while it is live and matches, and
        the session's TTL slides forward on every use; otherwise (or if that exit is gone or
        excluded) a new exit is chosen and the session is rebound to it.
        """
        if session is None:
            chosen = await self.choose(filters, exclude=exclude, only=only)
            return None if chosen is None else Choice(chosen, sticky=False)
        ttl = session_ttl or DEFAULT_SESSION_TTL
        key = keys.session(account, session)
        bound = await self._redis.getex(key, ex=ttl)
        if bound is not None:
            exit_id = _text(bound)
            if (
                exit_id not in exclude
                and (only is None or exit_id in only)
                and self._is_available(exit_id)
                and exit_id in await self.candidates(filters)
            ):
                return Choice(exit_id, sticky=True)
        chosen = await self.choose(filters, exclude=exclude, only=only)
        if chosen is None:
            return None
        await self._redis.set(key, chosen, ex=ttl)
        return Choice(chosen, sticky=False)
