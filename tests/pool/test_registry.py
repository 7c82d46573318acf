"""Functional tests of the exit registry against a real Redis."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from redis.asyncio import Redis

from pool import keys
from pool.registry import ExitRegistry
from tests.pool.conftest import host_clock, make_exit

SKEW = 30.0  # seconds a host's clock is off, three times the default heartbeat TTL


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def members(redis: Redis, key: str) -> set[str]:
    return {text(member) for member in await redis.smembers(key)}


async def all_keys(redis: Redis) -> set[str]:
    return {text(key) for key in await redis.keys("*")}


async def make_stale(redis: Redis, node: str, exit_id: str) -> None:
    """Age a node's heartbeat for an exit far into the past (a node that died long ago)."""
    await redis.zadd(keys.alive(), {keys.alive_member(node, exit_id): 1000}, xx=True)


# register / get


async def test_register_call(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    info = make_exit("e1", city="paris", asn=3215, type="datacenter")
    await registry.register([info])
    assert await registry.get("e1") == info
    assert await registry.live_ids() == {"e1"}
    assert await registry.list_live() == [info]


async def test_register_state(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    await registry.register([make_exit("e1", city="paris", asn=3215)])
    assert await members(redis, keys.exit_nodes("e1")) == {"n1"}
    assert await members(redis, keys.node_exits("n1")) == {"e1"}
    assert await members(redis, keys.index("country", "fr")) == {"e1"}
    assert await members(redis, keys.index("city", "paris")) == {"e1"}
    assert await members(redis, keys.index("asn", "3215")) == {"e1"}
    assert await members(redis, keys.index("type", "residential")) == {"e1"}
    assert await redis.zscore(keys.alive(), keys.alive_member("n1", "e1")) is not None
    # Empty attributes are not indexed.
    assert await all_keys(redis) == {
        keys.exit_hash("e1"),
        keys.exit_nodes("e1"),
        keys.node_exits("n1"),
        keys.alive(),
        keys.index("country", "fr"),
        keys.index("city", "paris"),
        keys.index("asn", "3215"),
        keys.index("type", "residential"),
    }


async def test_register_several(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    exits = [make_exit("e1"), make_exit("e2", country="de"), make_exit("e3", node="n2")]
    await registry.register(exits)
    assert await registry.live_ids() == {"e1", "e2", "e3"}
    assert await registry.list_live() == exits
    assert await members(redis, keys.node_exits("n1")) == {"e1", "e2"}
    assert await members(redis, keys.node_exits("n2")) == {"e3"}
    assert await members(redis, keys.index("country", "fr")) == {"e1", "e3"}


async def test_get_unknown(redis: Redis) -> None:
    assert await ExitRegistry(redis).get("nope") is None


async def test_get_incomplete_record(redis: Redis) -> None:
    await redis.hset(keys.exit_hash("e1"), mapping={"exit_id": "e1", "country": "fr"})
    assert await ExitRegistry(redis).get("e1") is None


# heartbeat


async def test_heartbeat_call(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    await registry.register([make_exit("e1"), make_exit("e2")])
    await make_stale(redis, "n1", "e1")
    await make_stale(redis, "n1", "e2")
    assert await registry.live_ids() == set()
    await registry.heartbeat("n1", [make_exit("e1")])
    assert await registry.live_ids() == {"e1"}
    score = await redis.zscore(keys.alive(), keys.alive_member("n1", "e1"))
    assert score is not None and score > 1000


async def test_heartbeat_registers_again_an_exit_swept_while_its_node_was_silent(redis: Redis) -> None:
    registry = ExitRegistry(redis, heartbeat_ttl=10)
    kept, swept = make_exit("e1"), make_exit("e2", city="paris")
    await registry.register([kept, swept])
    await make_stale(redis, "n1", "e2")  # the node's loop stalled past the TTL for e2
    assert await registry.sweep() == 1
    assert await registry.get("e2") is None and await members(redis, keys.node_exits("n1")) == {"e1"}
    await registry.heartbeat("n1", [kept, swept])
    assert await registry.get("e2") == swept
    assert await registry.live_ids() == {"e1", "e2"}
    assert await members(redis, keys.node_exits("n1")) == {"e1", "e2"}
    assert await members(redis, keys.index("city", "paris")) == {"e2"}


async def test_heartbeat_empty(redis: Redis) -> None:
    await ExitRegistry(redis).heartbeat("n1", [])
    assert await all_keys(redis) == set()


# deregister


async def test_deregister_call(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    info = make_exit("e1", city="paris", asn=3215)
    await registry.register([info, make_exit("e2")])
    await registry.deregister("n1", [info])
    assert await registry.get("e1") is None
    assert await registry.live_ids() == {"e2"}
    assert await members(redis, keys.index("country", "fr")) == {"e2"}
    assert await members(redis, keys.node_exits("n1")) == {"e2"}
    assert not await redis.exists(
        keys.exit_nodes("e1"), keys.index("city", "paris"), keys.index("asn", "3215")
    )


async def test_deregister_last_leaves_nothing(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    exits = [make_exit("e1", city="paris"), make_exit("e2", country="de", asn=3320)]
    await registry.register(exits)
    await registry.deregister("n1", exits)
    assert await all_keys(redis) == set()


async def test_deregister_unknown(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    await registry.deregister("n1", [make_exit("e1")])
    assert await all_keys(redis) == set()


async def test_exit_on_two_nodes(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    on_n1, on_n2 = make_exit("e1", node="n1", city="paris"), make_exit("e1", node="n2", city="paris")
    await registry.register([on_n1])
    await registry.register([on_n2])
    assert await members(redis, keys.exit_nodes("e1")) == {"n1", "n2"}

    await registry.deregister("n1", [on_n1])
    # Still held by n2: attributes, indexes and liveness stay.
    info = await registry.get("e1")
    assert info is not None and (info.country, info.city) == ("fr", "paris")
    assert await registry.live_ids() == {"e1"}
    assert await members(redis, keys.exit_nodes("e1")) == {"n2"}
    assert await members(redis, keys.index("country", "fr")) == {"e1"}
    assert await members(redis, keys.index("city", "paris")) == {"e1"}
    assert await members(redis, keys.node_exits("n1")) == set()
    assert await members(redis, keys.node_exits("n2")) == {"e1"}
    assert await redis.zscore(keys.alive(), keys.alive_member("n1", "e1")) is None

    await registry.deregister("n2", [on_n2])
    assert await registry.get("e1") is None
    assert await registry.live_ids() == set()
    assert await all_keys(redis) == set()


async def test_exit_on_two_nodes_deregistered_twice_by_one(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    on_n1, on_n2 = make_exit("e1", node="n1"), make_exit("e1", node="n2")
    await registry.register([on_n1, on_n2])
    await registry.deregister("n1", [on_n1])
    await registry.deregister("n1", [on_n1])  # a repeated goodbye does not take n2's exit away
    assert await registry.live_ids() == {"e1"}
    assert await registry.get("e1") is not None


async def test_reregistered_with_new_attributes_leaves_nothing(redis: Redis) -> None:
    # Node n1 died holding the exit; its agent came back through n2 declaring another country.
    registry = ExitRegistry(redis, heartbeat_ttl=10.0)
    before = make_exit("e1", node="n1", country="fr")
    after = make_exit("e1", node="n2", country="de")
    await registry.register([before])
    await make_stale(redis, "n1", "e1")
    await registry.register([after])
    assert await registry.sweep() == 1  # n1's record goes
    assert await registry.get("e1") == after
    assert await members(redis, keys.index("country", "de")) == {"e1"}
    assert await members(redis, keys.index("country", "fr")) == set()
    await registry.deregister("n2", [after])
    assert await all_keys(redis) == set()


# liveness expiry and sweep


async def test_live_ids_expire(redis: Redis) -> None:
    registry = ExitRegistry(redis, heartbeat_ttl=0.5)
    await registry.register([make_exit("e1"), make_exit("e2")])
    assert await registry.live_ids() == {"e1", "e2"}
    await asyncio.sleep(0.6)
    assert await registry.live_ids() == set()
    await registry.heartbeat("n1", [make_exit("e2")])  # e1 last heard over 0.5 s ago, e2 just now
    assert await registry.live_ids() == {"e2"}
    assert [info.exit_id for info in await registry.list_live()] == ["e2"]
    assert await registry.get("e1") is not None  # expired, not yet swept


async def test_sweep_call(redis: Redis) -> None:
    registry = ExitRegistry(redis, heartbeat_ttl=0.5)
    await registry.register([make_exit("e1", city="paris")])
    await asyncio.sleep(0.6)
    await registry.register([make_exit("e2", country="de")])
    assert await registry.live_ids() == {"e2"}
    assert await registry.sweep() == 1
    assert await registry.get("e1") is None
    assert await registry.get("e2") is not None
    assert await all_keys(redis) == {
        keys.exit_hash("e2"),
        keys.exit_nodes("e2"),
        keys.node_exits("n1"),
        keys.alive(),
        keys.index("country", "de"),
        keys.index("type", "residential"),
    }
    assert await registry.sweep() == 0


async def test_sweep_one_node_of_two(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    await registry.register([make_exit("e1", node="n1"), make_exit("e1", node="n2")])
    await make_stale(redis, "n1", "e1")
    assert await registry.sweep() == 1
    assert await registry.live_ids() == {"e1"}
    assert await members(redis, keys.exit_nodes("e1")) == {"n2"}
    assert await members(redis, keys.node_exits("n1")) == set()
    assert await members(redis, keys.index("country", "fr")) == {"e1"}


async def test_sweep_orphan_heartbeat(redis: Redis) -> None:
    await redis.zadd(keys.alive(), {keys.alive_member("n1", "ghost"): 1000})
    registry = ExitRegistry(redis)
    assert await registry.sweep() == 1
    assert await all_keys(redis) == set()


async def test_register_after_deregister(redis: Redis) -> None:
    registry = ExitRegistry(redis)
    info = make_exit("e1")
    await registry.register([info])
    await registry.deregister("n1", [info])
    again = replace(info, city="lyon")
    await registry.register([again])
    assert await registry.get("e1") == again
    assert await registry.live_ids() == {"e1"}


# Hosts' clocks disagree: heartbeats are stamped and aged by the Redis server's clock.


async def test_exits_of_a_node_whose_clock_runs_behind_stay_live_and_are_not_swept(redis: Redis) -> None:
    slow_node = ExitRegistry(redis, heartbeat_ttl=10)
    with host_clock(-SKEW):
        await slow_node.register([make_exit("e1", node="n1")])
    other_node = ExitRegistry(redis, heartbeat_ttl=10)  # a correct clock
    assert await other_node.live_ids() == {"e1"}
    assert await other_node.sweep() == 0
    with host_clock(SKEW):  # a reader whose clock runs ahead
        assert await ExitRegistry(redis, heartbeat_ttl=10).live_ids() == {"e1"}
        assert await ExitRegistry(redis, heartbeat_ttl=10).sweep() == 0
    assert await members(redis, keys.node_exits("n1")) == {"e1"}


async def test_a_heartbeat_from_a_node_whose_clock_runs_behind_keeps_its_exit_live(redis: Redis) -> None:
    registry = ExitRegistry(redis, heartbeat_ttl=10)
    await registry.register([make_exit("e1")])
    await make_stale(redis, "n1", "e1")
    with host_clock(-SKEW):
        await registry.heartbeat("n1", [make_exit("e1")])
    assert await ExitRegistry(redis, heartbeat_ttl=10).live_ids() == {"e1"}


async def test_a_silent_exit_expires_for_a_reader_whose_clock_runs_behind(redis: Redis) -> None:
    ttl = 0.3
    registry = ExitRegistry(redis, heartbeat_ttl=ttl)
    await registry.register([make_exit("gone"), make_exit("kept")])
    await asyncio.sleep(ttl + 0.1)  # the node stopped beating for "gone" only
    await registry.heartbeat("n1", [make_exit("kept")])
    with host_clock(-SKEW):
        lagging = ExitRegistry(redis, heartbeat_ttl=ttl)
        assert await lagging.live_ids() == {"kept"}
        assert await lagging.sweep() == 1
    assert await registry.get("gone") is None
    assert await members(redis, keys.node_exits("n1")) == {"kept"}
