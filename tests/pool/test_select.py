"""Functional tests of exit selection against a real Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from pool import keys
from pool.models import ExitFilters
from pool.registry import ExitRegistry
from pool.select import DEFAULT_SESSION_TTL, Choice, Selector
from tests.pool.conftest import REDIS_URL, host_clock, make_exit

FR = ExitFilters(country="fr")
ANY = ExitFilters()


@dataclass
class NodeView:
    """What the gateway node knows: which exits' tunnels are up here, and their load."""

    loads: dict[str, int] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    def is_available(self, exit_id: str) -> bool:
        return exit_id not in self.down

    def load(self, exit_id: str) -> int:
        return self.loads.get(exit_id, 0)


def selector_for(redis: Redis, view: NodeView, *, node: str = "n1", **options: float) -> Selector:
    options.setdefault("cache_ttl", 0.0)
    return Selector(redis, node, is_available=view.is_available, load=view.load, **options)


async def register(redis: Redis, *exits_ids: str, **attributes: object) -> ExitRegistry:
    registry = ExitRegistry(redis)
    await registry.register([make_exit(exit_id, **attributes) for exit_id in exits_ids])  # type: ignore[arg-type]
    return registry


async def bound(redis: Redis, account: str, session: str) -> str | None:
    """The exit a session is bound to in Redis."""
    value = await redis.get(keys.session(account, session))
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def view() -> NodeView:
    return NodeView()


# candidates


@pytest.fixture
async def catalogue(redis: Redis) -> ExitRegistry:
    registry = ExitRegistry(redis)
    await registry.register(
        [
            make_exit("a", asn=3215),
            make_exit("b", type="datacenter", asn=16276),
            make_exit("c", country="de", asn=3320),
            make_exit("d", city="paris", asn=3215),
            make_exit("e", country="de", type="datacenter", asn=16276),
            make_exit("x", node="n2"),  # another node's exit
        ]
    )
    return registry


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (ANY, ["a", "b", "c", "d", "e"]),
        (FR, ["a", "b", "d"]),
        (ExitFilters(country="de"), ["c", "e"]),
        (ExitFilters(type="datacenter"), ["b", "e"]),
        (ExitFilters(country="fr", type="residential"), ["a", "d"]),
        (ExitFilters(country="fr", type="datacenter"), ["b"]),
        (ExitFilters(asn=3215), ["a", "d"]),
        (ExitFilters(asn=16276, country="de"), ["e"]),
        (ExitFilters(country="fr", city="paris", asn=3215), ["d"]),
        (ExitFilters(country="fr", asn=3320), []),
        (ExitFilters(country="jp"), []),
        (ExitFilters(type="mobile"), []),
    ],
)
async def test_candidates_filters(
    redis: Redis, view: NodeView, catalogue: ExitRegistry, filters: ExitFilters, expected: list[str]
) -> None:
    assert await selector_for(redis, view).candidates(filters) == expected


async def test_candidates_by_node(redis: Redis, view: NodeView, catalogue: ExitRegistry) -> None:
    assert await selector_for(redis, view, node="n2").candidates(FR) == ["x"]
    assert await selector_for(redis, view, node="n3").candidates(ANY) == []


async def test_candidates_exclude_stale(redis: Redis, view: NodeView) -> None:
    registry = await register(redis, "a", "b")
    await redis.zadd(keys.alive(), {keys.alive_member("n1", "a"): 1000}, xx=True)
    selector = selector_for(redis, view)
    assert await selector.candidates(FR) == ["b"]
    await registry.heartbeat("n1", [make_exit("a")])
    assert await selector.candidates(FR) == ["a", "b"]


async def test_candidates_expire_with_heartbeat_ttl(redis: Redis, view: NodeView) -> None:
    await register(redis, "a")
    selector = selector_for(redis, view, heartbeat_ttl=0.5)
    assert await selector.candidates(FR) == ["a"]
    await asyncio.sleep(0.6)
    assert await selector.candidates(FR) == []


async def test_candidates_go_by_the_servers_clock_not_the_hosts(redis: Redis, view: NodeView) -> None:
    ttl = 0.3
    registry = ExitRegistry(redis, heartbeat_ttl=ttl)
    await registry.register([make_exit("silent")])
    await asyncio.sleep(ttl + 0.1)  # the node stopped beating for "silent"
    with host_clock(-30):  # the node's clock runs 30 s behind: its heartbeat is fresh all the same
        await registry.register([make_exit("beating")])
    assert await selector_for(redis, view, heartbeat_ttl=ttl).candidates(FR) == ["beating"]
    with host_clock(-30):  # nor does a selector whose clock runs behind keep the silent exit
        assert await selector_for(redis, view, heartbeat_ttl=ttl).candidates(FR) == ["beating"]
    with host_clock(30):
        assert await selector_for(redis, view, heartbeat_ttl=ttl).candidates(FR) == ["beating"]


async def test_candidates_after_deregister(redis: Redis, view: NodeView) -> None:
    registry = await register(redis, "a", "b")
    await registry.deregister("n1", [make_exit("a")])
    assert await selector_for(redis, view).candidates(FR) == ["b"]


async def test_candidates_of_reregistered_exit(redis: Redis, view: NodeView) -> None:
    # n2 died holding "a" in France; its agent came back through n1 declaring Germany.
    registry = ExitRegistry(redis)
    await registry.register([make_exit("a", node="n2", country="fr")])
    await redis.zadd(keys.alive(), {keys.alive_member("n2", "a"): 1000}, xx=True)
    await registry.register([make_exit("a", node="n1", country="de")])
    await registry.sweep()
    selector = selector_for(redis, view)
    assert await selector.candidates(ExitFilters(country="de")) == ["a"]
    assert await selector.candidates(FR) == []  # never an exit in Germany for France


# the candidate cache


async def test_candidates_cached(redis: Redis, view: NodeView) -> None:
    registry = await register(redis, "a")
    selector = selector_for(redis, view, cache_ttl=60.0)
    assert await selector.candidates(FR) == ["a"]
    await registry.register([make_exit("b")])
    assert await selector.candidates(FR) == ["a"]  # from the cache
    assert await selector.candidates(ANY) == ["a", "b"]  # a filter of its own
    selector.invalidate()
    assert await selector.candidates(FR) == ["a", "b"]


async def test_candidates_cache_expires(redis: Redis, view: NodeView) -> None:
    registry = await register(redis, "a")
    selector = selector_for(redis, view, cache_ttl=0.2)
    assert await selector.candidates(FR) == ["a"]
    await registry.deregister("n1", [make_exit("a")])
    await registry.register([make_exit("b")])
    assert await selector.candidates(FR) == ["a"]
    await asyncio.sleep(0.3)
    assert await selector.candidates(FR) == ["b"]


async def test_candidates_uncached(redis: Redis, view: NodeView) -> None:
    registry = await register(redis, "a")
    selector = selector_for(redis, view, cache_ttl=0.0)
    assert await selector.candidates(FR) == ["a"]
    await registry.register([make_exit("b")])
    assert await selector.candidates(FR) == ["a", "b"]


async def test_choose_never_picks_unavailable_from_cache(redis: Redis, view: NodeView) -> None:
    await register(redis, "a", "b")
    selector = selector_for(redis, view, cache_ttl=60.0)
    assert await selector.candidates(FR) == ["a", "b"]
    view.down.add("a")  # the tunnel went down after the candidates were cached
    assert {await selector.choose(FR) for _ in range(10)} == {"b"}


# choose


async def test_choose_least_loaded(redis: Redis) -> None:
    await register(redis, "a", "b", "c")
    view = NodeView(loads={"a": 3, "b": 1, "c": 2})
    selector = selector_for(redis, view)
    assert [await selector.choose(FR) for _ in range(6)] == ["b"] * 6
    view.loads["c"] = 0
    assert await selector.choose(FR) == "c"


async def test_choose_skips_unavailable(redis: Redis) -> None:
    await register(redis, "a", "b", "c")
    view = NodeView(loads={"a": 3, "b": 1, "c": 2}, down={"b"})
    selector = selector_for(redis, view)
    assert [await selector.choose(FR) for _ in range(6)] == ["c"] * 6
    view.down |= {"a", "c"}
    assert await selector.choose(FR) is None


async def test_choose_exclude(redis: Redis) -> None:
    await register(redis, "a", "b", "c")
    view = NodeView(loads={"a": 3, "b": 1, "c": 2})
    selector = selector_for(redis, view)
    assert await selector.choose(FR, exclude=frozenset({"b"})) == "c"
    assert await selector.choose(FR, exclude=frozenset({"b", "c"})) == "a"
    assert await selector.choose(FR, exclude=frozenset({"a", "b", "c"})) is None


async def test_choose_no_candidates(redis: Redis, view: NodeView) -> None:
    await register(redis, "a")
    selector = selector_for(redis, view)
    assert await selector.choose(ExitFilters(country="jp")) is None
    assert await selector_for(redis, view, node="n2").choose(FR) is None


@pytest.mark.parametrize("load", [0, 4])
async def test_choose_rotates_among_equals(redis: Redis, load: int) -> None:
    exits = ["a", "b", "c", "d"]
    await register(redis, *exits)
    selector = selector_for(redis, NodeView(loads=dict.fromkeys(exits, load)))
    picks = Counter([await selector.choose(FR) for _ in range(40)])
    assert picks == dict.fromkeys(exits, 10)


@pytest.mark.parametrize(
    ("view", "exclude"),
    [
        (NodeView(loads={"a": 5}), frozenset()),  # a busier exit
        (NodeView(down={"a"}), frozenset()),  # an exit whose tunnel is down here
        (NodeView(), frozenset({"a"})),  # an excluded exit
    ],
    ids=["busier", "unavailable", "excluded"],
)
async def test_choose_rotates_among_least_loaded(
    redis: Redis, view: NodeView, exclude: frozenset[str]
) -> None:
    # "b" and "c" are equally (least) loaded: each takes half of the connections.
    await register(redis, "a", "b", "c")
    selector = selector_for(redis, view)
    picks = Counter([await selector.choose(FR, exclude=exclude) for _ in range(30)])
    assert picks == {"b": 15, "c": 15}


# select


async def test_select_without_session(redis: Redis, view: NodeView) -> None:
    await register(redis, "a", "b")
    selector = selector_for(redis, view)
    choices = [await selector.select("alice", FR) for _ in range(4)]
    assert all(choice is not None and not choice.sticky for choice in choices)
    assert Counter(choice.exit_id for choice in choices if choice) == {"a": 2, "b": 2}
    assert await redis.keys("ipsx:sess:*") == []


async def test_select_session_sticks(redis: Redis, view: NodeView) -> None:
    await register(redis, "a", "b", "c")
    selector = selector_for(redis, view)
    first = await selector.select("alice", FR, session="s1", session_ttl=120)
    assert first is not None and not first.sticky
    assert await bound(redis, "alice", "s1") == first.exit_id
    for _ in range(5):
        assert await selector.select("alice", FR, session="s1", session_ttl=120) == Choice(
            first.exit_id, sticky=True
        )


async def test_select_session_ttl(redis: Redis, view: NodeView) -> None:
    await register(redis, "a")
    selector = selector_for(redis, view)
    key = keys.session("alice", "s1")
    await selector.select("alice", FR, session="s1", session_ttl=1000)
    assert 990 <= await redis.ttl(key) <= 1000
    await redis.expire(key, 5)
    assert await selector.select("alice", FR, session="s1", session_ttl=1000) == Choice("a", sticky=True)
    assert 990 <= await redis.ttl(key) <= 1000  # slid forward by the use


async def test_select_session_default_ttl(redis: Redis, view: NodeView) -> None:
    await register(redis, "a")
    await selector_for(redis, view).select("alice", FR, session="s1")
    assert DEFAULT_SESSION_TTL - 10 <= await redis.ttl(keys.session("alice", "s1")) <= DEFAULT_SESSION_TTL


async def test_select_session_rebinds_when_unavailable(redis: Redis, view: NodeView) -> None:
    await register(redis, "a", "b")
    selector = selector_for(redis, view)
    first = await selector.select("alice", FR, session="s1")
    assert first is not None
    other = "b" if first.exit_id == "a" else "a"
    view.down.add(first.exit_id)
    assert await selector.select("alice", FR, session="s1") == Choice(other, sticky=False)
    assert await bound(redis, "alice", "s1") == other
    view.down.clear()  # the old exit is back, but the session now lives on the new one
    assert await selector.select("alice", FR, session="s1") == Choice(other, sticky=True)


async def test_select_session_rebinds_when_excluded(redis: Redis, view: NodeView) -> None:
    await register(redis, "a", "b")
    selector = selector_for(redis, view)
    first = await selector.select("alice", FR, session="s1")
    assert first is not None
    other = "b" if first.exit_id == "a" else "a"
    choice = await selector.select("alice", FR, session="s1", exclude=frozenset({first.exit_id}))
    assert choice == Choice(other, sticky=False)
    assert await bound(redis, "alice", "s1") == other


async def test_select_session_rebinds_when_deregistered(redis: Redis, view: NodeView) -> None:
    registry = await register(redis, "a", "b")
    selector = selector_for(redis, view)
    first = await selector.select("alice", FR, session="s1")
    assert first is not None
    other = "b" if first.exit_id == "a" else "a"
    await registry.deregister("n1", [make_exit(first.exit_id)])
    assert await selector.select("alice", FR, session="s1") == Choice(other, sticky=False)


async def test_select_session_rebinds_when_filters_differ(redis: Redis, view: NodeView) -> None:
    registry = await register(redis, "a")
    await registry.register([make_exit("b", type="datacenter")])
    selector = selector_for(redis, view)
    residential = ExitFilters(country="fr", type="residential")
    assert await selector.select("alice", residential, session="s1") == Choice("a", sticky=False)
    datacenter = ExitFilters(country="fr", type="datacenter")
    assert await selector.select("alice", datacenter, session="s1") == Choice("b", sticky=False)
    assert await selector.select("alice", datacenter, session="s1") == Choice("b", sticky=True)


async def test_select_parallel_first_connections_of_a_session_share_one_exit(
    redis: Redis, view: NodeView
) -> None:
    await register(redis, "a", "b", "c", "d")
    # Two nodes' selectors and four connections each, all opening session s1 at once.
    selectors = [selector_for(redis, view), selector_for(redis, view, node="n1")]
    await asyncio.gather(*(redis.ping() for _ in range(8)))  # connections ready: no call waits for one
    choices = await asyncio.gather(
        *(selector.select("alice", FR, session="s1") for selector in selectors for _ in range(4))
    )
    exits = {choice.exit_id for choice in choices if choice is not None}
    assert len(exits) == 1 and len(choices) == 8
    assert await bound(redis, "alice", "s1") == exits.pop()


def binding_meanwhile(key: str, exit_id: str) -> Callable[[str], bool]:
    """An ``accept`` callback that binds the session to ``exit_id`` the first time it runs: another
    connection of the session binding it while this one chooses."""
    client = SyncRedis.from_url(REDIS_URL)
    done: list[bool] = []

    def accept(_candidate: str) -> bool:
        if not done:
            client.set(key, exit_id)
            done.append(True)
        return True

    return accept


async def test_select_follows_an_exit_another_connection_bound_meanwhile(
    redis: Redis, view: NodeView
) -> None:
    await register(redis, "a", "b")
    view.loads["b"] = 5  # this connection would choose a
    selector = selector_for(redis, view)
    accept = binding_meanwhile(keys.session("alice", "s1"), "b")
    assert await selector.select("alice", FR, session="s1", accept=accept) == Choice("b", sticky=True)
    assert await bound(redis, "alice", "s1") == "b"
    assert 590 <= await redis.ttl(keys.session("alice", "s1")) <= DEFAULT_SESSION_TTL


async def test_select_keeps_its_own_exit_when_the_one_bound_meanwhile_is_excluded(
    redis: Redis, view: NodeView
) -> None:
    await register(redis, "a", "b")
    selector = selector_for(redis, view)
    accept = binding_meanwhile(keys.session("alice", "s1"), "b")
    choice = await selector.select("alice", FR, session="s1", exclude=frozenset({"b"}), accept=accept)
    assert choice == Choice("a", sticky=False)
    assert await bound(redis, "alice", "s1") == "b"  # the other connection's binding stands


async def test_select_session_nothing_matches(redis: Redis, view: NodeView) -> None:
    await register(redis, "a")
    selector = selector_for(redis, view)
    assert await selector.select("alice", FR, session="s1") == Choice("a", sticky=False)
    # The bound exit is live and available, but not in Japan: no exit rather than a wrong one.
    assert await selector.select("alice", ExitFilters(country="jp"), session="s1") is None
    view.down.add("a")
    assert await selector.select("alice", FR, session="s1") is None
    assert await selector.select("alice", FR, session="s2") is None
    assert await selector.select("alice", FR) is None


async def test_select_sessions_per_account(redis: Redis, view: NodeView) -> None:
    await register(redis, "a", "b")
    selector = selector_for(redis, view)
    alice = await selector.select("alice", FR, session="s1")
    bob = await selector.select("bob", FR, session="s1")
    assert alice is not None and bob is not None
    assert not alice.sticky and not bob.sticky  # the same session name, two accounts
    assert alice.exit_id != bob.exit_id  # rotation gave them different exits
    assert await bound(redis, "alice", "s1") == alice.exit_id
    assert await bound(redis, "bob", "s1") == bob.exit_id
    assert await selector.select("alice", FR, session="s1") == Choice(alice.exit_id, sticky=True)
    assert await selector.select("bob", FR, session="s1") == Choice(bob.exit_id, sticky=True)


# the accept predicate (per-domain bans, provider policies)


async def test_choose_accept(redis: Redis) -> None:
    await register(redis, "a", "b", "c")
    view = NodeView(loads={"a": 3, "b": 1, "c": 2})
    selector = selector_for(redis, view)
    assert await selector.choose(FR, accept=lambda exit_id: exit_id != "b") == "c"  # next least loaded
    picks = Counter(
        [await selector.choose(FR, accept=lambda exit_id: exit_id in {"a", "c"}) for _ in range(4)]
    )
    assert picks == {"c": 4}
    assert await selector.choose(FR, accept=lambda _: False) is None


async def test_choose_accept_asked_only_of_eligible_exits(redis: Redis) -> None:
    await register(redis, "a", "b", "c")
    asked: list[str] = []

    def accept(exit_id: str) -> bool:
        asked.append(exit_id)
        return True

    selector = selector_for(redis, NodeView(down={"c"}))
    assert await selector.choose(FR, exclude=frozenset({"a"}), accept=accept) == "b"
    assert asked == ["b"]


async def test_select_session_rebinds_when_not_accepted(redis: Redis, view: NodeView) -> None:
    await register(redis, "a", "b")
    selector = selector_for(redis, view)
    first = await selector.select("alice", FR, session="s1")
    assert first is not None
    other = "b" if first.exit_id == "a" else "a"
    refused = first.exit_id
    choice = await selector.select("alice", FR, session="s1", accept=lambda exit_id: exit_id != refused)
    assert choice == Choice(other, sticky=False)
    assert await bound(redis, "alice", "s1") == other
    # The session now lives on the other exit, for every later request.
    assert await selector.select("alice", FR, session="s1") == Choice(other, sticky=True)


async def test_select_accept_refusing_all(redis: Redis, view: NodeView) -> None:
    await register(redis, "a")
    selector = selector_for(redis, view)
    assert await selector.select("alice", FR, session="s1") == Choice("a", sticky=False)
    assert await selector.select("alice", FR, session="s1", accept=lambda _: False) is None
    assert await bound(redis, "alice", "s1") == "a"  # no exit to rebind to: the binding stays
    assert await selector.select("alice", FR, accept=lambda _: False) is None
