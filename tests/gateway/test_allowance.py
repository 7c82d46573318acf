"""The allowance guard against the real Redis: two nodes' streams add up under one deal counter,
and every stream of a deal that carried its allowance is cut, on each node, at its next pass."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from gateway.allowance import AllowanceGuard, Watched, used_key


class Relay:
    """Stands in for a relay's byte counters and its abort: what the guard reads and calls."""

    def __init__(self, watched: Watched) -> None:
        self.carried = 0
        self.cut = False
        watched.gauge = lambda: self.carried
        watched.cut = self.abort

    def abort(self) -> None:
        self.cut = True


async def test_streams_of_two_nodes_share_one_counter_and_are_cut_at_the_allowance(redis: Redis) -> None:
    node_a, node_b = AllowanceGuard(redis), AllowanceGuard(redis)
    on_a = Relay(node_a.watch("alice", "r1_1", 1000))
    on_b = Relay(node_b.watch("alice", "r1_1", 1000))
    other = Relay(node_a.watch("alice", "r2_2", 1000))  # another deal: not cut with it
    on_a.carried, on_b.carried, other.carried = 300, 400, 100
    await node_a.flush()
    await node_b.flush()
    assert int(await redis.get(used_key("alice", "r1_1"))) == 700
    assert not (on_a.cut or on_b.cut or node_a.exhausted("r1_1"))
    on_a.carried = 500  # 200 more: 900 in all, still under
    await node_a.flush()
    assert int(await redis.get(used_key("alice", "r1_1"))) == 900
    on_b.carried = 600  # 200 more on node b: 1,100 ≥ 1,000
    await node_b.flush()
    assert on_b.cut and node_b.exhausted("r1_1")
    assert not on_a.cut  # node a learns it at its next pass, even with nothing new to add
    await node_a.flush()
    assert on_a.cut and node_a.exhausted("r1_1")
    assert not other.cut and not node_a.exhausted("r2_2")
    assert int(await redis.get(used_key("alice", "r1_1"))) == 1_100
    assert 0 < await redis.ttl(used_key("alice", "r1_1")) <= 2 * 86_400


async def test_a_finished_streams_last_bytes_are_added_once(redis: Redis) -> None:
    guard = AllowanceGuard(redis)
    watched = guard.watch("bob", "r3_1", 10_000)
    relay = Relay(watched)
    relay.carried = 1_000
    await guard.flush()
    guard.done(watched, 1_250)  # the relay's final count
    await guard.flush()
    await guard.flush()
    assert int(await redis.get(used_key("bob", "r3_1"))) == 1_250


async def test_a_deal_whose_counter_is_already_spent_is_cut_on_first_count(redis: Redis) -> None:
    await redis.set(used_key("carol", "r4_1"), 5_000)  # other nodes used it up
    guard = AllowanceGuard(redis)
    relay = Relay(guard.watch("carol", "r4_1", 5_000))
    relay.carried = 1
    await guard.flush()
    assert relay.cut and guard.exhausted("r4_1")


async def test_counts_survive_a_redis_that_does_not_answer(redis: Redis) -> None:
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    guard = AllowanceGuard(unreachable)
    watched = guard.watch("dave", "r5_1", 100)
    relay = Relay(watched)
    relay.carried = 150
    await guard.flush()  # no exception, nothing cut on a guess
    assert not relay.cut and not guard.exhausted("r5_1")
    guard.done(watched, 150)
    # The same guard's pending counts, handed to a reachable Redis, arrive whole.
    guard._redis = redis
    await guard.flush()
    assert int(await redis.get(used_key("dave", "r5_1"))) == 150
    await unreachable.aclose()


async def test_run_flushes_every_interval_and_once_more_on_stop(redis: Redis) -> None:
    guard = AllowanceGuard(redis, interval=0.05)
    watched = guard.watch("erin", "r6_1", 10**9)
    relay = Relay(watched)
    stop = asyncio.Event()
    task = asyncio.create_task(guard.run(stop))
    relay.carried = 10
    for _ in range(100):
        if await redis.get(used_key("erin", "r6_1")) is not None:
            break
        await asyncio.sleep(0.02)
    assert int(await redis.get(used_key("erin", "r6_1"))) == 10
    guard.done(watched, 25)
    stop.set()
    await task
    assert int(await redis.get(used_key("erin", "r6_1"))) == 25
