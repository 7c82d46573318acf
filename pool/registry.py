"""Live exits in Redis: registration, heartbeats, indexes and removal.

An exit (one source address of one provider) may be connected to several gateway nodes at
once; each node registers it and heartbeats it under its own name. The exit's attributes and
index entries go when the last node lets it go.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import redis.asyncio as aioredis

from pool import keys
from pool.models import ExitInfo
from pool.server_time import NOW_MS_LUA

_FIELDS = tuple(f.name for f in fields(ExitInfo))

# KEYS: exit hash, exit nodes set, node set, alive zset, N index sets to join, then index sets to leave
# ARGV: exit id, node, N, then the exit's hash fields as name, value pairs
_REGISTER_LUA = (
    NOW_MS_LUA
    + """
local exit_id, node, joined = ARGV[1], ARGV[2], tonumber(ARGV[3])
local record = {}
for i = 4, #ARGV do record[#record + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('SADD', KEYS[2], node)
redis.call('SADD', KEYS[3], exit_id)
redis.call('ZADD', KEYS[4], now, node .. '|' .. exit_id)
for i = 5, 4 + joined do redis.call('SADD', KEYS[i], exit_id) end
for i = 5 + joined, #KEYS do redis.call('SREM', KEYS[i], exit_id) end
return 1
"""
)

# KEYS: exit hash, exit nodes set, node set, alive zset, index sets…; ARGV: exit id, node
# Returns 1 when this was the exit's last node and its records were removed.
_DEREGISTER_LUA = """
local exit_id, node = ARGV[1], ARGV[2]
redis.call('SREM', KEYS[3], exit_id)
redis.call('ZREM', KEYS[4], node .. '|' .. exit_id)
redis.call('SREM', KEYS[2], node)
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
for i = 5, #KEYS do redis.call('SREM', KEYS[i], exit_id) end
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_exit(raw: Mapping[Any, Any]) -> ExitInfo | None:
    data = {_text(k): _text(v) for k, v in raw.items()}
    if not all(name in data for name in _FIELDS):
        return None
    return ExitInfo(
        exit_id=data["exit_id"],
        provider=data["provider"],
        node=data["node"],
        bind=data["bind"],
        country=data["country"],
        region=data["region"],
        city=data["city"],
        asn=int(data["asn"] or 0),
        type=data["type"],
    )


# KEYS: node set, alive zset; ARGV: node, exit ids. Refreshes the exits still in the node's set
# and returns the others: a sweep let them go while this node was silent.
_HEARTBEAT_LUA = (
    NOW_MS_LUA
    + """
local node = ARGV[1]
local gone = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], now, node .. '|' .. ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
"""
)

# KEYS: alive zset; ARGV: heartbeat TTL (ms). The members heard from within the TTL.
_FRESH_LUA = (
    NOW_MS_LUA
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now - tonumber(ARGV[1])), '+inf')
"""
)

# KEYS: alive zset; ARGV: heartbeat TTL (ms). The members silent for longer than the TTL.
_EXPIRED_LUA = (
    NOW_MS_LUA
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[1])))
"""
)


def _keys_for(exit_id: str, node: str, attributes: list[tuple[str, str]]) -> list[str]:
    return [
        keys.exit_hash(exit_id),
        keys.exit_nodes(exit_id),
        keys.node_exits(node),
        keys.alive(),
        *(keys.index(attribute, value) for attribute, value in attributes),
    ]


class ExitRegistry:
    """The pool's view of which exits are live, their attributes, and which nodes hold them.

    An exit is live on a node while that node's heartbeat for it is younger than
    ``heartbeat_ttl`` seconds; a node or provider that vanishes without a goodbye drops out of
    selection within that time, and ``sweep`` removes its records. Heartbeats are stamped and
    aged by the Redis server's clock (``pool.server_time``), never by a host's.
    """

    def __init__(self, redis: aioredis.Redis, *, heartbeat_ttl: float = 10.0) -> None:
        self._redis = redis
        self.heartbeat_ttl = heartbeat_ttl
        self._register = redis.register_script(_REGISTER_LUA)
        self._deregister = redis.register_script(_DEREGISTER_LUA)
        self._beat = redis.register_script(_HEARTBEAT_LUA)
        self._fresh = redis.register_script(_FRESH_LUA)
        self._expired = redis.register_script(_EXPIRED_LUA)

    async def register(self, exits: list[ExitInfo]) -> None:
        for info in exits:
            record = [item for pair in asdict(info).items() for item in (pair[0], str(pair[1]))]
            joined = info.attributes()
            # An exit may come back with other attributes (its agent was reconfigured): it
            # leaves the index sets of the attributes it no longer has.
            stored = await self.get(info.exit_id)
            left = [pair for pair in stored.attributes() if pair not in joined] if stored else []
            await self._register(
                keys=_keys_for(info.exit_id, info.node, joined + left),
                args=[info.exit_id, info.node, len(joined), *record],
            )

    async def heartbeat(self, node: str, exits: list[ExitInfo]) -> None:
        """``exits`` are live on ``node`` now. Those a sweep let go meanwhile (the node was
        silent past ``heartbeat_ttl``, a stalled loop or a partition) are registered again."""
        if exits:
            gone = await self._beat(
                keys=[keys.node_exits(node), keys.alive()],
                args=[node, *(info.exit_id for info in exits)],
            )
            if gone:
                back = {_text(exit_id) for exit_id in gone}
                await self.register([info for info in exits if info.exit_id in back])

    async def deregister(self, node: str, exits: list[ExitInfo]) -> None:
        for info in exits:
            stored = await self.get(info.exit_id)
            attributes = info.attributes()
            if stored is not None:
                attributes += [pair for pair in stored.attributes() if pair not in attributes]
            await self._deregister(keys=_keys_for(info.exit_id, node, attributes), args=[info.exit_id, node])

    async def get(self, exit_id: str) -> ExitInfo | None:
        return _decode_exit(await self._redis.hgetall(keys.exit_hash(exit_id)))

    def _ttl_ms(self) -> int:
        return int(self.heartbeat_ttl * 1000)

    async def live_ids(self) -> set[str]:
        """Exits with a fresh heartbeat on at least one node."""
        members = await self._fresh(keys=[keys.alive()], args=[self._ttl_ms()])
        return {_text(member).rsplit("|", 1)[1] for member in members}

    async def live_per_node(self) -> dict[str, int]:
        """How many exits each gateway node holds with a fresh heartbeat (an exit linked to several
        nodes counts on each)."""
        members = await self._fresh(keys=[keys.alive()], args=[self._ttl_ms()])
        return dict(collections.Counter(_text(member).rsplit("|", 1)[0] for member in members))

    async def list_live(self) -> list[ExitInfo]:
        found = [await self.get(exit_id) for exit_id in sorted(await self.live_ids())]
        return [info for info in found if info is not None]

    async def sweep(self) -> int:
        """Let go of exits whose heartbeat on a node expired (that node died); returns how many."""
        stale = await self._expired(keys=[keys.alive()], args=[self._ttl_ms()])
        for member in stale:
            node, exit_id = _text(member).rsplit("|", 1)
            info = await self.get(exit_id)
            if info is None:
                await self._redis.zrem(keys.alive(), _text(member))
            else:
                await self.deregister(node, [info])
        return len(stale)
