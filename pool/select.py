"""Exit selection: filters, rotation, load spreading, exit health and sticky sessions.

The candidate set for a filter comes from Redis (one script call: index intersection plus
liveness) and is cached for ``cache_ttl`` seconds per filter, so a rotating scraper opening
thousands of tunnels a second costs Redis one call per filter per second. The node's own view —
is the exit's tunnel up here, how many streams does it carry — is asked of the caller through
two callbacks, so an exit that just died is never picked from a stale cache. Exit health
(``pool.health``), when given, is read from the node's memory too: quarantines and weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from pool import keys
from pool.health import Breaker, ExitHealth
from pool.models import ExitFilters
from pool.server_time import NOW_MS_LUA

# KEYS[1] node set, KEYS[2] alive zset, KEYS[3..] index sets; ARGV[1] heartbeat TTL (ms), ARGV[2]
# the node. A heartbeat is fresh by the server's clock (``pool.server_time``).
_CANDIDATES_LUA = (
    NOW_MS_LUA
    + """
local ids
if #KEYS > 2 then
  ids = redis.call('SINTER', KEYS[1], unpack(KEYS, 3))
else
  ids = redis.call('SMEMBERS', KEYS[1])
end
local floor = now - tonumber(ARGV[1])
local prefix = ARGV[2] .. '|'
local out = {}
for _, id in ipairs(ids) do
  local score = redis.call('ZSCORE', KEYS[2], prefix .. id)
  if score and tonumber(score) >= floor then out[#out + 1] = id end
end
return out
"""
)

# KEYS[1] the session; ARGV[1] the exit it was seen bound to ('' for none), ARGV[2] the exit to
# bind it to instead, ARGV[3] its TTL (s). Binds unless another connection rebound it since it was
# read, and returns the exit the session is bound to now (TTL refreshed either way).
_REBIND_LUA = """
local bound = redis.call('GET', KEYS[1])
if not bound or bound == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return ARGV[2]
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return bound
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


DEFAULT_SESSION_TTL = 600  # seconds; a sticky session lives this long after its last use
_GOLDEN = (math.sqrt(5) - 1) / 2  # steps of a Weyl sequence: evenly spread, never repeating


def _rotate(exits: list[str], weights: list[float], turn: int) -> str:
    """The exit whose turn ``turn`` is: in order when the weights are equal, else each in
    proportion to its weight (``turn`` walks the golden-ratio sequence over the weight line)."""
    if all(weight == weights[0] for weight in weights):
        return exits[turn % len(exits)]
    point = (turn * _GOLDEN) % 1.0 * sum(weights)
    for exit_id, weight in zip(exits, weights, strict=True):
        point -= weight
        if point < 0:
            return exit_id
    return exits[-1]  # rounding at the far end of the line


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
        health: ExitHealth | None = None,
    ) -> None:
        self._redis = redis
        self._node = node
        self._is_available = is_available
        self._load = load
        self._health = health
        self._heartbeat_ttl = heartbeat_ttl
        self._cache_ttl = cache_ttl
        self._cache: dict[ExitFilters, tuple[float, list[str]]] = {}
        self._cursor = 0
        self._script = redis.register_script(_CANDIDATES_LUA)
        self._rebind = redis.register_script(_REBIND_LUA)

    async def candidates(self, filters: ExitFilters) -> list[str]:
        """Live exits on this node matching ``filters`` (possibly ``cache_ttl`` old)."""
        now = time.monotonic()
        cached = self._cache.get(filters)
        if cached is not None and cached[0] > now:
            return cached[1]
        index_keys = [keys.index(attribute, value) for attribute, value in filters.items()]
        raw = await self._script(
            keys=[keys.node_exits(self._node), keys.alive(), *index_keys],
            args=[int(self._heartbeat_ttl * 1000), self._node],
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
        accept: Callable[[str], bool] | None = None,
    ) -> str | None:
        """A fresh exit for one connection, or None when no exit may take it.

        Skipped: exits in ``exclude``, outside ``only`` (when given: a requester's deal exits),
        unavailable on this node, or refused by ``accept``. Without health: the least loaded,
        rotating among equals. With health: quarantined exits are skipped, and a half-open one
        is taken first, as its breaker's probe. Among the rest, the lowest load relative to
        weight (``load / weight``); ties, such as an idle pool, rotate in proportion to weight,
        so a slow or failing exit gets fewer connections but still some (equal weights rotate
        in turn). When every remaining exit is quarantined, the one whose cool-down ends first
        is probed early rather than the requester told there is no exit; a probe already in
        flight on this node blocks that, and None is returned.
        """
        ids = await self.candidates(filters)
        if only is not None:
            ids = [exit_id for exit_id in ids if exit_id in only]
        if not ids:
            return None
        health = self._health
        now = health.now() if health is not None else 0.0
        least: list[str] = []
        weights: list[float] = []
        least_score = 0.0
        quarantined: list[str] = []
        for exit_id in ids:
            if exit_id in exclude or not self._is_available(exit_id):
                continue
            if accept is not None and not accept(exit_id):
                continue
            weight = 1.0
            if health is not None:
                state = health.state(exit_id, now)
                if state is Breaker.HALF_OPEN and health.begin_probe(exit_id, now):
                    return exit_id
                if state is not Breaker.CLOSED:
                    quarantined.append(exit_id)
                    continue
                weight = health.weight(exit_id)
            score = self._load(exit_id) / weight
            if not least or score < least_score:
                least, weights, least_score = [exit_id], [weight], score
            elif score == least_score:
                least.append(exit_id)
                weights.append(weight)
        if not least:
            return self._last_resort(quarantined, now)
        # Rotate among the best only, so no exit inherits the turns of a busy or excluded
        # neighbour.
        self._cursor = (self._cursor + 1) % (1 << 30)
        return _rotate(least, weights, self._cursor)

    def _last_resort(self, quarantined: list[str], now: float) -> str | None:
        """Probe early the quarantined exit whose cool-down ends first, if it may be probed."""
        health = self._health
        if health is None or not quarantined:
            return None
        first = min(quarantined, key=health.quarantined_until)
        return first if health.begin_probe(first, now) else None

    def _fit_for_session(self, exit_id: str) -> bool:
        """A session stays on its exit only while the exit's breaker is closed."""
        return self._health is None or self._health.state(exit_id) is Breaker.CLOSED

    async def select(
        self,
        account: str,
        filters: ExitFilters,
        *,
        session: str | None = None,
        session_ttl: int | None = None,
        exclude: frozenset[str] = frozenset(),
        only: frozenset[str] | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> Choice | None:
        """The exit for a new connection of ``account``, or None if no live exit matches.

        With a ``session`` the exit it is bound to is reused while it is live, matches, is
        accepted and (with health) its breaker is closed, and the session's TTL slides forward
        on every use; otherwise a new exit is chosen (see :meth:`choose`) and the session is
        rebound to it — unless another connection of the session rebound it meanwhile, whose
        exit this one then takes too where it may, so parallel connections opening a session
        leave through one exit.
        """
        if session is None:
            chosen = await self.choose(filters, exclude=exclude, only=only, accept=accept)
            return None if chosen is None else Choice(chosen, sticky=False)
        ttl = session_ttl or DEFAULT_SESSION_TTL
        key = keys.session(account, session)
        raw = await self._redis.getex(key, ex=ttl)
        bound = "" if raw is None else _text(raw)
        if bound and await self._keeps(bound, filters, exclude, only, accept):
            return Choice(bound, sticky=True)
        chosen = await self.choose(filters, exclude=exclude, only=only, accept=accept)
        if chosen is None:
            return None
        # Parallel first connections of a new session (or of one whose exit just died) each
        # chose an exit: the first to bind wins and the others follow it where they may.
        now_bound = _text(await self._rebind(keys=[key], args=[bound, chosen, ttl]))
        if now_bound != chosen and await self._keeps(now_bound, filters, exclude, only, accept):
            if self._health is not None and self._health.state(chosen) is not Breaker.CLOSED:
                self._health.dial_abandoned(chosen)  # its probe goes to another connection
            return Choice(now_bound, sticky=True)
        return Choice(chosen, sticky=False)

    async def _keeps(
        self,
        exit_id: str,
        filters: ExitFilters,
        exclude: frozenset[str],
        only: frozenset[str] | None,
        accept: Callable[[str], bool] | None,
    ) -> bool:
        """Whether a session bound to ``exit_id`` stays on it for this connection."""
        return (
            exit_id not in exclude
            and (only is None or exit_id in only)
            and self._is_available(exit_id)
            and (accept is None or accept(exit_id))
            and self._fit_for_session(exit_id)
            and exit_id in await self.candidates(filters)
        )
