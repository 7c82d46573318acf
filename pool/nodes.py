"""Gateway nodes in Redis: each node announces its provider tunnel endpoint with a heartbeat.

Agents learn the live nodes from the node they log in to and keep a tunnel to every one of them,
so a requester reaching any node can use any exit with no second gateway hop. A node that stops
announcing is out of the list after ``ttl`` seconds, and agents then let it go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from pool import keys


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
        self._ttl = ttl

    async def announce(self, info: NodeInfo) -> None:
        """Add or refresh ``info``; call it more often than every ``ttl`` seconds."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.gateway_node(info.node),
                mapping={"tunnel": info.tunnel, "boot": info.boot, "region": info.region},
            )
            pipe.pexpire(keys.gateway_node(info.node), int(self._ttl * 3000))
            pipe.zadd(keys.gateway_nodes(), {info.node: int(time.time() * 1000)})
            await pipe.execute()

    async def withdraw(self, node: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.gateway_nodes(), node)
            pipe.delete(keys.gateway_node(node))
            await pipe.execute()

    async def live(self) -> list[NodeInfo]:
        """Nodes announced within the last ``ttl`` seconds, sorted by id; stale ones are removed."""
        floor = int((time.time() - self._ttl) * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(keys.gateway_nodes(), "-inf", f"({floor}")
            pipe.zrange(keys.gateway_nodes(), 0, -1)
            _, members = await pipe.execute()
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
