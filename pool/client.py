"""The Redis client for an ``IPSX_REDIS_URL``: one server, a Redis Cluster, or Sentinel.

    redis://[:PASSWORD@]HOST:PORT[/DB]                        one server (rediss:// for TLS)
    redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT…]         a Redis Cluster, from any of its nodes
    redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]
                                                               the master Sentinel names for SERVICE

Every key IPSX touches together shares a hash tag (see ``pool.keys``), so the cluster client
never needs a cross-slot operation. The password, if any, is the data servers' (Sentinel itself
is reached without one).
"""

from __future__ import annotations

from typing import cast
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

_SCHEMES = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def _hosts(netloc: str, url: str) -> tuple[str | None, list[tuple[str, int]]]:
    credentials, _, hosts = netloc.rpartition("@")
    password = unquote(credentials.partition(":")[2]) if credentials else None
    found = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT in the Redis URL, got {item!r}")
        found.append((host.strip("[]"), int(port)))
    if not found:
        raise ValueError(f"no host in the Redis URL {_redacted(url)!r}")
    return password or None, found


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}…@{rest.rpartition('@')[2]}" if "@" in rest else url


def redis_from_url(url: str) -> Redis:
    """A client for ``url``; raises ValueError for a malformed one (its password never in the message).

    The cluster client is typed as ``Redis``: IPSX uses only commands both clients have.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        return Redis.from_url(url)
    tls = scheme.startswith("rediss")
    netloc, _, path = rest.partition("/")
    password, hosts = _hosts(netloc, url)
    if scheme.endswith("+cluster"):
        if path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0")
        nodes = [ClusterNode(host, port) for host, port in hosts]
        return cast(Redis, RedisCluster(startup_nodes=nodes, password=password, ssl=tls))
    service, _, db = path.strip("/").partition("/")
    if not service or (db and not db.isdigit()):
        raise ValueError(f"expected redis+sentinel://HOSTS/SERVICE[/DB], got {_redacted(url)!r}")
    sentinel = Sentinel(hosts, ssl=tls)  # type: ignore[no-untyped-call]
    master: _SentinelMaster = sentinel.master_for(
        service, redis_class=_SentinelMaster, password=password, db=int(db or 0), ssl=tls
    )
    master.watchers = sentinel
    return master


class _SentinelMaster(Redis):
    """The master Sentinel names; closing it also closes the connections to the Sentinels."""

    watchers: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.watchers is not None:
            for client in self.watchers.sentinels:
                await client.aclose()
