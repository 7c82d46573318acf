"""The operator page's data that is judged by a clock, against the real Redis (a database of
its own: the session's web API serves from the web tests' one meanwhile)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from dashboard.web import operator_data as data
from pool.health import ExitHealth, reports
from pool.models import ExitInfo
from pool.nodes import NodeInfo, NodeRegistry
from pool.registry import ExitRegistry
from tests.pool.conftest import host_clock

REDIS_URL = os.environ.get("IPSX_TEST_OPERATOR_DATA_REDIS_URL", "redis://127.0.0.1:6379/2")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.mark.parametrize("skew", [-(data.WINDOW_MINUTES + 5) * 60.0, (data.WINDOW_MINUTES + 5) * 60.0])
async def test_recent_exit_errors_call_counts_by_the_servers_clock_not_the_api_hosts(
    redis: Redis, skew: float
) -> None:
    gateway = ExitHealth(redis, "n1")
    gateway.dial_failed("a", "timeout", exit_fault=True)
    gateway.dial_failed("a", "timeout", exit_fault=True)
    gateway.dial_failed("b", "refused", exit_fault=False)
    await gateway.flush()
    health = await reports(redis, ["a", "b"])
    # An API host whose clock is off by more than the window still shows the errors of its window.
    with host_clock(skew):
        assert await data.recent_exit_errors(redis, health) == [("timeout", 2), ("refused", 1)]


async def test_gateway_nodes_call_lists_live_nodes_with_the_exits_linked_to_each(redis: Redis) -> None:
    nodes, exits = NodeRegistry(redis, ttl=10.0), ExitRegistry(redis, heartbeat_ttl=10.0)
    await nodes.announce(NodeInfo("gw-1", ":8443", region="eu"))
    await nodes.announce(NodeInfo("gw-2", "10.0.0.2:8443"))
    shared = [
        ExitInfo("e1", "0xp", "gw-1", "10.1.0.1", "fr"),
        ExitInfo("e2", "0xp", "gw-1", "10.1.0.2", "de"),
    ]
    await exits.register(shared)
    await exits.register([replace(shared[0], node="gw-2")])  # e1's agent is linked to both nodes
    assert await data.gateway_nodes(redis) == [
        data.GatewayNode("gw-1", "eu", ":8443", 2),
        data.GatewayNode("gw-2", "", "10.0.0.2:8443", 1),
    ]
    await nodes.withdraw("gw-2")  # stopped: out of the list at once (a dead one after the TTL)
    assert [n.node for n in await data.gateway_nodes(redis)] == ["gw-1"]


def test_node_alerts_call() -> None:
    live = data.GatewayNode("gw-1", "", ":8443", 3)
    empty = data.GatewayNode("gw-2", "", ":8443", 0)
    (outage,) = data.node_alerts([], 0)
    assert (outage.level, outage.kind) == ("error", "no_gateway")
    assert outage.text == "no gateway node is live: requesters cannot connect"
    assert data.node_alerts([live], 3) == []
    (lost,) = data.node_alerts([live, empty], 3)
    assert (lost.level, lost.kind, lost.subject) == ("warn", "node_without_exits", "gw-2")
    assert lost.text == "gateway node gw-2 holds no exit while 3 are online"
    assert data.node_alerts([empty], 0) == []  # no exit online anywhere: nothing a node lost
