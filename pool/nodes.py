"""Gateway nodes in Redis: each node announces its provider tunnel endpoint with a heartbeat.

Agents learn the live nodes from the node they log in to and keep a tunnel to every one of them,
so a requester reaching any node can use any exit with no second gateway hop. A node that stops
announcing is out of the list after ``ttl`` seconds, and agents then let it go. Announcements are
stamped and aged by the Redis server's clock (``pool.server_time``), so every reader sees the same
list whatever the hosts' clocks say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from pool import keys
from pool.server_time import NOW_MS_LUA

# KEYS: the node's hash, the node list; ARGV: node, tunnel, boot token, region, the hash's TTL (ms)
_ANNOUNCE_LUA = (
    NOW_MS_LUA
    + """
redis.call('HSET', KEYS[1], 'tunnel', ARGV[2], 'boot', ARGV[3], 'region', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 1
"""
)

# KEYS: the node list; ARGV: ttl (ms). Drops the nodes silent for longer; returns the others.
_LIVE_LUA = (
    NOW_MS_LUA
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[1])))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A gateway node as agents see it.

    ``tunnel`` is ``HOST:PORT``, or ``:PORT`` when the node listens on every address and the
    agent should use the host it already reached the gateway at.
    """

    node: str
    tunnel: str
    boot: str = ""  # the node process's boot token (``gateway.tickets``): changes on restart
    region: str = ""  # agents of a region keep tunnels to its nodes only ("": no region)

    def to_wire(self) -> dict[str, str]:
        wire = {"node": self.node, "tunnel": self.tunnel}
        if self.region:
            wire["region"] = self.region
        return wire


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NodeRegistry:
    """Announce, list and withdraw gateway nodes (keys under the pool's hash tag)."""

    def __init__(self, redis: aioredis.Redis, *, ttl: float = 10.0) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl * 1000)
        self._announce = redis.register_script(_ANNOUNCE_LUA)
        self._live = redis.register_script(_LIVE_LUA)

    async def announce(self, info: NodeInfo) -> None:
        """Add or refresh ``info``; call it more often than every ``ttl`` seconds."""
        await self._announce(
            keys=[keys.gateway_node(info.node), keys.gateway_nodes()],
            # the hash outlives the announcement, so a reader never lists a node without it
            args=[info.node, info.tunnel, info.boot, info.region, 3 * self._ttl_ms],
        )

    async def withdraw(self, node: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.gateway_nodes(), node)
            pipe.delete(keys.gateway_node(node))
            await pipe.execute()

    async def live(self) -> list[NodeInfo]:
        """Nodes announced within the last ``ttl`` seconds (by the Redis server's clock), sorted by
        id; stale ones are removed."""
        members = await self._live(keys=[keys.gateway_nodes()], args=[self._ttl_ms])
        ids = sorted(_text(member) for member in members)
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in ids:
                pipe.hmget(keys.gateway_node(node), ["tunnel", "boot", "region"])
            found = await pipe.execute()
        return [
            NodeInfo(node, _text(tunnel), _text(boot or b""), _text(region or b""))
            for node, (tunnel, boot, region) in zip(ids, found, strict=True)
            if tunnel
        ]
