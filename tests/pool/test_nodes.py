"""The gateway node registry on real Redis: announce, list, age out, withdraw."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from pool import keys
from pool.nodes import NodeInfo, NodeRegistry
from tests.pool.conftest import host_clock

SKEW = 30.0  # seconds a host's clock is off, three times the registry's 10 s


async def server_ms(redis: Redis) -> int:
    """The Redis server's clock, in milliseconds."""
    seconds, microseconds = await redis.time()
    return seconds * 1000 + microseconds // 1000


async def test_announced_nodes_are_listed_sorted_with_their_tunnel(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=10)
    await nodes.announce(NodeInfo("gw-b", "10.0.0.2:8443"))
    await nodes.announce(NodeInfo("gw-a", ":8444"))
    assert await nodes.live() == [NodeInfo("gw-a", ":8444"), NodeInfo("gw-b", "10.0.0.2:8443")]


async def test_a_new_announcement_replaces_the_tunnel_address(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=10)
    await nodes.announce(NodeInfo("gw-a", "10.0.0.1:8443"))
    await nodes.announce(NodeInfo("gw-a", "10.0.0.9:9443"))
    assert await nodes.live() == [NodeInfo("gw-a", "10.0.0.9:9443")]


async def test_withdrawn_node_is_gone_at_once(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=10)
    await nodes.announce(NodeInfo("gw-a", ":8443"))
    await nodes.announce(NodeInfo("gw-b", ":8444"))
    await nodes.withdraw("gw-a")
    assert await nodes.live() == [NodeInfo("gw-b", ":8444")]
    assert not await redis.exists(keys.gateway_node("gw-a"))


async def test_a_node_that_stops_announcing_ages_out_and_is_removed(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=10)
    await nodes.announce(NodeInfo("gw-live", ":8443"))
    # A node whose last announcement is 11 s old (as if it died then).
    stale_ms = int((time.time() - 11) * 1000)
    await redis.hset(keys.gateway_node("gw-dead"), mapping={"tunnel": ":8444"})
    await redis.zadd(keys.gateway_nodes(), {"gw-dead": stale_ms})
    assert await nodes.live() == [NodeInfo("gw-live", ":8443")]
    assert await redis.zscore(keys.gateway_nodes(), "gw-dead") is None


async def test_node_without_its_hash_is_not_listed(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=10)
    await redis.zadd(keys.gateway_nodes(), {"gw-half": int(time.time() * 1000)})
    assert await nodes.live() == []


async def test_node_hash_expires_on_its_own_if_never_withdrawn(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=2)
    await nodes.announce(NodeInfo("gw-a", ":8443"))
    ttl_ms = await redis.pttl(keys.gateway_node("gw-a"))
    assert 0 < ttl_ms <= 6000


def test_node_keys_share_the_pool_hash_tag() -> None:
    assert keys.gateway_nodes().startswith("ipsx:{pool}:")
    assert keys.gateway_node("x").startswith("ipsx:{pool}:")


async def test_live_nodes_carry_their_boot_token(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=10)
    await nodes.announce(NodeInfo("gw-a", ":8443", "boot-1"))
    assert await nodes.live() == [NodeInfo("gw-a", ":8443", "boot-1")]
    await nodes.announce(NodeInfo("gw-a", ":8443", "boot-2"))  # restarted under the same id
    assert await nodes.live() == [NodeInfo("gw-a", ":8443", "boot-2")]


async def test_a_node_s_region_is_announced_and_told_to_agents(redis: Redis) -> None:
    nodes = NodeRegistry(redis, ttl=10)
    await nodes.announce(NodeInfo("gw-eu", ":8443", "boot-1", "eu"))
    await nodes.announce(NodeInfo("gw-any", ":8444", "boot-2"))
    live = await nodes.live()
    assert live == [NodeInfo("gw-any", ":8444", "boot-2", ""), NodeInfo("gw-eu", ":8443", "boot-1", "eu")]
    assert [info.to_wire() for info in live] == [
        {"node": "gw-any", "tunnel": ":8444"},
        {"node": "gw-eu", "tunnel": ":8443", "region": "eu"},
    ]


# Hosts' clocks disagree: the registry goes by the Redis server's clock, so every reader sees the
# same list.


@pytest.mark.parametrize(
    ("writer", "reader"),
    [(-SKEW, 0.0), (0.0, SKEW)],
    ids=["node-behind", "reader-ahead"],
)
async def test_a_live_node_is_listed_whatever_the_hosts_clocks_say(
    redis: Redis, writer: float, reader: float
) -> None:
    before = await server_ms(redis)
    with host_clock(writer):
        await NodeRegistry(redis, ttl=10).announce(NodeInfo("gw-a", ":8443"))
    after = await server_ms(redis)
    stamp = await redis.zscore(keys.gateway_nodes(), "gw-a")
    assert stamp is not None and before <= stamp <= after  # stamped by the server's clock
    with host_clock(reader):
        assert await NodeRegistry(redis, ttl=10).live() == [NodeInfo("gw-a", ":8443")]
    assert await NodeRegistry(redis, ttl=10).live() == [NodeInfo("gw-a", ":8443")]


@pytest.mark.parametrize(
    ("writer", "reader"),
    [(SKEW, 0.0), (0.0, -SKEW)],
    ids=["node-ahead", "reader-behind"],
)
async def test_a_silent_node_leaves_every_list_within_the_ttl_whatever_the_hosts_clocks_say(
    redis: Redis, writer: float, reader: float
) -> None:
    ttl = 0.3
    with host_clock(writer):
        await NodeRegistry(redis, ttl=ttl).announce(NodeInfo("gw-dead", ":8443"))
        await NodeRegistry(redis, ttl=ttl).announce(NodeInfo("gw-live", ":8444"))
    await asyncio.sleep(ttl + 0.1)  # gw-dead stopped announcing; gw-live goes on
    with host_clock(writer):
        await NodeRegistry(redis, ttl=ttl).announce(NodeInfo("gw-live", ":8444"))
    with host_clock(reader):
        assert await NodeRegistry(redis, ttl=ttl).live() == [NodeInfo("gw-live", ":8444")]
    assert await redis.zscore(keys.gateway_nodes(), "gw-dead") is None
