"""IPSX's Redis usage against Redis Cluster: key layout and routing.

Redis Cluster refuses a Lua script, a MULTI/EXEC transaction or a multi-key command whose keys
hash to different slots (``CROSSSLOT``), and it does so even on a single node that owns all 16384
slots. This module starts such clusters of its own (``redis-server --cluster-enabled yes`` on free
loopback ports, never the machine's Redis) and runs every Redis operation of the pool, the billing
publisher and worker, the market routes, the gateway's ticket key and the API's sign-in nonces
against them, checking each operation's result, twice:

- with a plain client on a one-node cluster: the server refuses any cross-slot operation;
- with the client production makes of ``redis+cluster://`` (``pool.client``) on three masters
  that share the slots: every key must be routed to the master that owns it.

The pool's Lua scripts are also run with a ``#!lua`` shebang: Redis then also refuses a script
that reaches, by a name it builds itself, a key in another slot than its declared keys, which
plain (shebang-less) scripts are allowed to do on a node that owns every slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from eth_account import Account
from eth_account.messages import encode_defunct
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, ResponseError
from siwe import SiweMessage

import pool.bans
import pool.nodes
import pool.registry
import pool.select
from billing import db
from billing.keys import USAGE_DEAD_STREAM, USAGE_GROUP, USAGE_STREAM
from billing.usage import UsagePublisher, decode_entry
from billing.worker import WorkerSettings, _read, ensure_group, ingest_once
from dashboard import auth
from dashboard.problems import Problem
from dashboard.settings import ApiSettings
from gateway.allowance import AllowanceGuard, used_key
from gateway.tickets import Ticket, TicketKey
from matching import routing
from matching.orders import RequestFilters
from pool import keys
from pool.bans import BanBook
from pool.client import redis_from_url
from pool.models import ExitFilters
from pool.nodes import NodeInfo, NodeRegistry
from pool.registry import ExitRegistry
from pool.select import Choice, Selector
from tests.billing.conftest import TABLES, create_and_migrate, drop_database, make_event, make_report
from tests.pool.conftest import make_exit

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# redis-py raises ClusterCrossSlotError (a ResponseError) for CROSSSLOT, with this message
CROSSSLOT = "Keys in request don't hash to the same slot"
STRICT = "#!lua\n"  # a script with a shebang may not reach keys of another slot than its KEYS


def _free_ports() -> tuple[int, int]:
    """Two free loopback ports: the client port and the cluster bus port (not port + 10000, which
    may be taken or above 65535)."""
    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        return int(first.getsockname()[1]), int(second.getsockname()[1])


def _log_of(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@contextlib.contextmanager
def _cluster(directory: Path, masters: int) -> Iterator[list[tuple[str, int]]]:
    """A Redis Cluster of ``masters`` nodes on loopback, the 16384 slots split evenly between
    them; yields their (host, port), stops them after."""
    servers: list[subprocess.Popen[bytes]] = []
    clients: list[redis.Redis] = []
    nodes: list[tuple[str, int]] = []
    bus_ports: list[int] = []
    try:
        for index in range(masters):
            port, bus_port = _free_ports()
            home = directory / f"node-{index}"
            home.mkdir()
            with open(home / "redis.log", "wb") as log:
                servers.append(
                    subprocess.Popen(
                        [
                            REDIS_SERVER,
                            "--port",
                            str(port),
                            "--cluster-port",
                            str(bus_port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(home / "nodes.conf"),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            str(home),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            nodes.append(("127.0.0.1", port))
            bus_ports.append(bus_port)
            clients.append(redis.Redis(host="127.0.0.1", port=port, socket_timeout=5))
        deadline = time.monotonic() + 20
        for index, client in enumerate(clients):
            while True:
                if servers[index].poll() is not None:
                    log_text = _log_of(directory / f"node-{index}" / "redis.log")
                    raise RuntimeError(f"redis-server exited ({servers[index].returncode}):\n{log_text}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer")
                time.sleep(0.05)
            info: Any = client.info("cluster")
            assert info["cluster_enabled"] == 1, info
            first = 16384 * index // masters
            last = 16384 * (index + 1) // masters - 1
            assert client.cluster("ADDSLOTSRANGE", first, last)
        for client in clients[1:]:
            client.cluster("MEET", *nodes[0], bus_ports[0])
        for client in clients:
            while True:
                state: Any = client.cluster("INFO")  # parsed into a dict by redis-py
                if state["cluster_state"] == "ok" and int(state["cluster_known_nodes"]) == masters:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster never got to cluster_state:ok:\n{state}")
                time.sleep(0.05)
            assert int(state["cluster_slots_assigned"]) == 16384, state
        yield nodes
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A one-node Redis Cluster owning all 16384 slots: (host, port). A plain client meets no
    redirection there, and the node still refuses every cross-slot operation."""
    with _cluster(tmp_path_factory.mktemp("redis-cluster-1"), 1) as nodes:
        yield nodes[0]


@pytest.fixture(scope="module")
def cluster_of_three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, int]]]:
    """Three masters sharing the slots: the cluster client must route every key to its owner."""
    with _cluster(tmp_path_factory.mktemp("redis-cluster-3"), 3) as nodes:
        yield nodes


@pytest.fixture(params=["one-node", "three-masters"])
async def rds(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """A client, every key flushed before and after the test: a plain one on the one-node
    cluster, and the cluster-aware one production makes of ``redis+cluster://`` on three masters
    (slot routing, pipelines split by node, single-slot transactions)."""
    if request.param == "one-node":
        host, port = request.getfixturevalue("cluster_node")
        client = Redis(host=host, port=port)
    else:
        nodes = request.getfixturevalue("cluster_of_three")
        client = redis_from_url("redis+cluster://" + ",".join(f"{host}:{port}" for host, port in nodes))
        assert isinstance(client, RedisCluster)
    await client.flushall()
    yield client
    await client.flushall()
    await client.aclose()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A migrated scratch PostgreSQL database of this module's own."""
    name = f"ipsx_test_redis_cluster_{os.getpid()}"
    url = asyncio.run(create_and_migrate(name))
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pg_pool = await db.connect(database_url, max_size=3)
    await pg_pool.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    yield pg_pool
    await pg_pool.close()


@pytest.fixture(params=["as-shipped", "strict"])
def scripts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the pool's Lua scripts as shipped, and again with a ``#!lua`` shebang (strict slots)."""
    if request.param == "strict":
        for module, name in (
            (pool.registry, "_REGISTER_LUA"),
            (pool.registry, "_DEREGISTER_LUA"),
            (pool.registry, "_HEARTBEAT_LUA"),
            (pool.registry, "_FRESH_LUA"),
            (pool.registry, "_EXPIRED_LUA"),
            (pool.select, "_CANDIDATES_LUA"),
            (pool.select, "_REBIND_LUA"),
            (pool.nodes, "_ANNOUNCE_LUA"),
            (pool.nodes, "_LIVE_LUA"),
            (pool.bans, "_BAN_LUA"),
            (pool.bans, "_BANNED_LUA"),
            (pool.bans, "_LISTED_LUA"),
        ):
            monkeypatch.setattr(module, name, STRICT + getattr(module, name))
    return str(request.param)


def _check_mode(registry: ExitRegistry, selector: Selector | None, mode: str) -> None:
    """The scripts really are the variant ``mode`` names."""
    scripts = [registry._register.script, registry._deregister.script, registry._beat.script]
    scripts += [registry._fresh.script, registry._expired.script]
    if selector is not None:
        scripts += [selector._script.script, selector._rebind.script]
    for script in scripts:
        text = _text(script)
        assert text.startswith(STRICT) == (mode == "strict")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def members(rds: Redis, key: str) -> set[str]:
    return {_text(member) for member in await rds.smembers(key)}


async def alive(rds: Redis) -> list[str]:
    """The members of the alive sorted set, oldest heartbeat first."""
    return [_text(member) for member in await rds.zrange(keys.alive(), 0, -1)]


def _ms_ago(seconds: float) -> int:
    return int((time.time() - seconds) * 1000)


# -- the fixture enforces what a cluster enforces -----------------------------------------------


@pytest.fixture
async def plain(cluster_node: tuple[str, int]) -> AsyncIterator[Redis]:
    """A plain client: it sends what it is given, so the server's own refusals show."""
    client = Redis(host=cluster_node[0], port=cluster_node[1])
    await client.flushall()
    yield client
    await client.flushall()
    await client.aclose()


async def test_the_node_refuses_cross_slot_transactions_commands_and_scripts(plain: Redis) -> None:
    rds = plain
    assert await rds.cluster("KEYSLOT", "a") != await rds.cluster("KEYSLOT", "b")
    with pytest.raises(ClusterCrossSlotError, match=CROSSSLOT):
        async with rds.pipeline(transaction=True) as pipe:
            pipe.set("a", "1")
            pipe.set("b", "2")
            await pipe.execute()
    with pytest.raises(ClusterCrossSlotError, match=CROSSSLOT):
        await rds.sinter(["a", "b"])
    with pytest.raises(ClusterCrossSlotError, match=CROSSSLOT):
        await rds.eval("return 1", 2, "a", "b")
    # A strict script may not reach a key of another slot than its declared ones by name.
    await rds.set("b", "x")
    assert await rds.eval("return redis.call('GET', 'b')", 1, "a") == b"x"  # plain: allowed
    with pytest.raises(ResponseError, match="do not hash to the same slot"):
        await rds.eval(STRICT + "return redis.call('GET', 'b')", 1, "a")
    assert await rds.exists("a") == 0  # the refused transaction wrote nothing

    # The same operations on keys sharing a hash tag go through.
    async with rds.pipeline(transaction=True) as pipe:
        pipe.set("{t}a", "1")
        pipe.set("{t}b", "2")
        assert await pipe.execute() == [True, True]
    await rds.sadd("{t}s1", "x", "y")
    await rds.sadd("{t}s2", "y")
    assert await rds.sinter(["{t}s1", "{t}s2"]) == {b"y"}
    assert await rds.eval(STRICT + "return redis.call('GET', '{t}b')", 1, "{t}a") == b"2"


# -- pool/registry.py -------------------------------------------------------------------------


async def test_registry_register_indexes_and_reregistration(rds: Redis, scripts: str) -> None:
    registry = ExitRegistry(rds)
    _check_mode(registry, None, scripts)
    a = make_exit("a", region="idf", city="paris", asn=3215)
    b = make_exit("b", asn=16276, type="datacenter")
    c = make_exit("c", country="de", region="be", city="berlin", asn=3320, type="mobile")
    await registry.register([a, b, c])
    a2 = make_exit("a", node="n2", region="idf", city="paris", asn=3215)  # the same exit, on n2 too
    await registry.register([a2])

    assert await registry.get("b") == b
    assert await registry.get("c") == c
    assert await registry.get("a") == a2
    assert await members(rds, keys.index("country", "fr")) == {"a", "b"}
    assert await members(rds, keys.index("country", "de")) == {"c"}
    assert await members(rds, keys.index("city", "paris")) == {"a"}
    assert await members(rds, keys.index("asn", "16276")) == {"b"}
    assert await members(rds, keys.index("type", "residential")) == {"a"}
    assert await members(rds, keys.index("type", "mobile")) == {"c"}
    assert await members(rds, keys.node_exits("n1")) == {"a", "b", "c"}
    assert await members(rds, keys.node_exits("n2")) == {"a"}
    assert await members(rds, keys.exit_nodes("a")) == {"n1", "n2"}
    assert sorted(await alive(rds)) == ["n1|a", "n1|b", "n1|c", "n2|a"]
    assert await registry.live_ids() == {"a", "b", "c"}
    assert [info.exit_id for info in await registry.list_live()] == ["a", "b", "c"]

    # c's agent was reconfigured: it leaves the indexes of the attributes it lost.
    c2 = make_exit("c", country="at", asn=3320, type="mobile")
    await registry.register([c2])
    assert await registry.get("c") == c2
    assert await members(rds, keys.index("country", "de")) == set()
    assert await members(rds, keys.index("country", "at")) == {"c"}
    assert await members(rds, keys.index("city", "berlin")) == set()
    assert await members(rds, keys.index("region", "be")) == set()
    assert await members(rds, keys.index("type", "mobile")) == {"c"}


async def test_registry_heartbeat_and_live_ids(rds: Redis, scripts: str) -> None:
    registry = ExitRegistry(rds, heartbeat_ttl=10)
    _check_mode(registry, None, scripts)
    await registry.register([make_exit("a"), make_exit("b"), make_exit("c")])
    old = _ms_ago(60)
    await rds.zadd(keys.alive(), {"n1|a": old, "n1|b": old, "n1|c": old})
    assert await registry.live_ids() == set()

    await registry.heartbeat("n1", [make_exit("a"), make_exit("b")])
    assert await registry.live_ids() == {"a", "b"}
    score = await rds.zscore(keys.alive(), "n1|a")
    assert score is not None and score > _ms_ago(5)
    assert await rds.zscore(keys.alive(), "n1|c") == old


async def test_registry_deregister_keeps_the_exit_until_its_last_node_leaves(
    rds: Redis, scripts: str
) -> None:
    registry = ExitRegistry(rds)
    _check_mode(registry, None, scripts)
    a1 = make_exit("a", city="paris", asn=3215, type="datacenter")
    a2 = make_exit("a", node="n2", city="paris", asn=3215, type="datacenter")
    await registry.register([a1, make_exit("b")])
    await registry.register([a2])

    await registry.deregister("n1", [a1])
    assert await registry.get("a") == a2
    assert await members(rds, keys.exit_nodes("a")) == {"n2"}
    assert await members(rds, keys.node_exits("n1")) == {"b"}
    assert await members(rds, keys.index("city", "paris")) == {"a"}
    assert await registry.live_ids() == {"a", "b"}

    await registry.deregister("n2", [a2])
    assert await registry.get("a") is None
    assert await rds.exists(keys.exit_hash("a"), keys.exit_nodes("a")) == 0
    for attribute, value in a1.attributes():
        assert "a" not in await members(rds, keys.index(attribute, value))
    assert await members(rds, keys.index("country", "fr")) == {"b"}
    assert await members(rds, keys.node_exits("n2")) == set()
    assert await registry.live_ids() == {"b"}


async def test_registry_sweep_lets_go_of_stale_exits(rds: Redis, scripts: str) -> None:
    registry = ExitRegistry(rds, heartbeat_ttl=10)
    _check_mode(registry, None, scripts)
    await registry.register([make_exit("x", type="mobile"), make_exit("y")])
    await rds.zadd(keys.alive(), {"n1|x": _ms_ago(60), "n9|ghost": _ms_ago(60)})

    assert await registry.sweep() == 2
    assert await registry.get("x") is None
    assert await registry.get("y") == make_exit("y")
    assert await members(rds, keys.index("type", "mobile")) == set()
    assert await members(rds, keys.index("country", "fr")) == {"y"}
    assert await members(rds, keys.node_exits("n1")) == {"y"}
    assert await alive(rds) == ["n1|y"]
    assert await registry.sweep() == 0


# -- pool/select.py ---------------------------------------------------------------------------


async def test_selector_filters_and_sticky_sessions_of_two_accounts(rds: Redis, scripts: str) -> None:
    registry = ExitRegistry(rds)
    await registry.register(
        [
            make_exit("a", region="idf", city="paris", asn=3215),
            make_exit("b", asn=16276, type="datacenter"),
            make_exit("c", country="de", type="datacenter"),
            make_exit("d", city="paris", type="datacenter"),
            make_exit("z", node="n2", type="datacenter"),  # another node's exit
        ]
    )
    loads = {"a": 0, "b": 1, "c": 0, "d": 5}
    down: set[str] = set()
    selector = Selector(
        rds,
        "n1",
        is_available=lambda exit_id: exit_id not in down,
        load=lambda exit_id: loads.get(exit_id, 0),
        cache_ttl=0,
    )
    _check_mode(registry, selector, scripts)

    assert await selector.candidates(ExitFilters()) == ["a", "b", "c", "d"]  # SMEMBERS path
    assert await selector.candidates(ExitFilters(country="fr")) == ["a", "b", "d"]
    assert await selector.candidates(ExitFilters(country="fr", type="datacenter")) == ["b", "d"]
    everything = ExitFilters(country="fr", region="idf", city="paris", asn=3215, type="residential")
    assert await selector.candidates(everything) == ["a"]
    assert await selector.candidates(ExitFilters(country="de", type="mobile")) == []

    assert await selector.select("alice", ExitFilters(country="fr", type="datacenter")) == Choice("b", False)
    assert await selector.select("alice", everything) == Choice("a", False)
    assert await selector.select("alice", ExitFilters(country="us")) is None

    fr = ExitFilters(country="fr")
    assert await selector.select("alice", fr, session="s1") == Choice("a", sticky=False)
    assert await selector.select("alice", fr, session="s1") == Choice("a", sticky=True)
    loads["a"] = 9  # alice's session sticks; bob's new session gets the least loaded exit now
    assert await selector.select("bob", fr, session="s1") == Choice("b", sticky=False)
    assert await selector.select("alice", fr, session="s1") == Choice("a", sticky=True)
    assert await selector.select("bob", fr, session="s1", session_ttl=30) == Choice("b", sticky=True)
    assert await rds.get(keys.session("alice", "s1")) == b"a"
    assert await rds.get(keys.session("bob", "s1")) == b"b"
    assert 0 < await rds.ttl(keys.session("bob", "s1")) <= 30

    # alice's exit leaves: her session is rebound to a live one.
    await registry.deregister("n1", [make_exit("a", region="idf", city="paris", asn=3215)])
    assert await selector.select("alice", fr, session="s1") == Choice("b", sticky=False)
    assert await rds.get(keys.session("alice", "s1")) == b"b"


# -- pool/nodes.py ----------------------------------------------------------------------------


async def test_node_registry_announce_live_withdraw(rds: Redis, scripts: str) -> None:
    nodes = NodeRegistry(rds, ttl=10)
    for script in (nodes._announce.script, nodes._live.script):
        assert _text(script).startswith(STRICT) == (scripts == "strict")
    await nodes.announce(NodeInfo("n2", ":7001"))
    await nodes.announce(NodeInfo("n1", "10.0.0.1:7000"))
    assert await nodes.live() == [NodeInfo("n1", "10.0.0.1:7000"), NodeInfo("n2", ":7001")]
    assert 0 < await rds.pttl(keys.gateway_node("n1")) <= 30_000

    await nodes.announce(NodeInfo("n1", "10.0.0.9:7000"))  # a refresh with a new endpoint
    await nodes.withdraw("n2")
    assert await nodes.live() == [NodeInfo("n1", "10.0.0.9:7000")]
    assert await rds.exists(keys.gateway_node("n2")) == 0

    await rds.zadd(keys.gateway_nodes(), {"n1": _ms_ago(60)})  # n1 stopped announcing
    assert await nodes.live() == []
    assert await rds.zscore(keys.gateway_nodes(), "n1") is None


# -- pool/bans.py -----------------------------------------------------------------------------


async def test_bans_of_a_host_and_its_parent_domains(rds: Redis, scripts: str) -> None:
    book = BanBook(rds, cache_ttl=0)
    for script in (book._script.script, book._banned.script, book._listed.script):
        assert _text(script).startswith(STRICT) == (scripts == "strict")
    until = await book.ban("alice", "example.com", "e1", ttl=600)
    await book.ban("alice", "shop.example.com", "e2", ttl=600)
    await book.ban("bob", "example.com", "e3", ttl=600)
    assert await book.banned("alice", "www.shop.example.com") == frozenset({"e1", "e2"})
    assert await book.banned("alice", "example.org") == frozenset()
    assert await book.listed("alice", "example.com") == {"e1": until}
    assert await book.lift("alice", "example.com", "e1") is True
    assert await book.banned("alice", "shop.example.com") == frozenset({"e2"})


# -- billing/usage.py and billing/worker.py ---------------------------------------------------


def _worker(database_url: str, consumer: str, **options: Any) -> WorkerSettings:
    return WorkerSettings(
        redis_url="redis://unused", database_url=database_url, consumer=consumer, block_ms=50, **options
    )


async def test_usage_publisher_and_worker_ingest_through_the_stream(
    rds: Redis, pg: asyncpg.Pool, database_url: str
) -> None:
    e1, e2 = make_event(), make_event(requester="bob", deal_id=None, protocol="socks5")
    r1 = make_report(event_id=e1.event_id)
    sent: list[str] = []
    publisher = UsagePublisher(rds, max_batch=2)

    def confirm(event_id: str) -> Callable[[], None]:
        return lambda: sent.append(event_id)

    for item in (e1, r1, e2):
        publisher.publish(item, confirm(item.event_id))
    assert await publisher.flush() == 3
    assert sent == [e1.event_id, r1.event_id, e2.event_id]
    assert publisher.pending == 0
    assert await rds.xlen(USAGE_STREAM) == 2  # two batch entries

    await ensure_group(rds, USAGE_STREAM, USAGE_GROUP)
    await ensure_group(rds, USAGE_STREAM, USAGE_GROUP)  # BUSYGROUP is not an error
    groups: Any = await rds.xinfo_groups(USAGE_STREAM)
    assert [group["name"] for group in groups] == [USAGE_GROUP.encode()]

    # Worker w1 reads the entries (xautoclaim finds nothing, xreadgroup delivers) and dies.
    first = _worker(database_url, "w1")
    entries = await _read(rds, first)
    items = [item for _, fields in entries for item in decode_entry(fields)[0]]  # type: ignore[arg-type]
    assert items == [e1, r1, e2]
    assert await _read(rds, first) == []  # nothing new
    info: Any = await rds.xpending(USAGE_STREAM, USAGE_GROUP)
    assert info["pending"] == 2

    # Worker w2 claims w1's pending entries with xautoclaim, stores them, acks and deletes them.
    second = _worker(database_url, "w2", claim_idle_ms=0)
    assert await ingest_once(rds, pg, second) == 3
    rows = await pg.fetch("SELECT event_id, requester, deal_id FROM usage_events ORDER BY requester")
    assert [tuple(row) for row in rows] == [(e1.event_id, "alice", "deal-1"), (e2.event_id, "bob", None)]
    assert await pg.fetchval("SELECT event_id FROM agent_reports") == r1.event_id
    info = await rds.xpending(USAGE_STREAM, USAGE_GROUP)
    assert info["pending"] == 0
    assert await rds.xlen(USAGE_STREAM) == 0
    assert await ingest_once(rds, pg, second) == 0

    # The background flusher, and a malformed entry going to the dead-letter stream.
    e3 = make_event(requester="carol")
    await publisher.start()
    publisher.publish(e3)
    await publisher.close()
    await rds.xadd(USAGE_STREAM, {"kind": "bogus"})
    assert await ingest_once(rds, pg, _worker(database_url, "w3")) == 2
    assert await pg.fetchval("SELECT count(*) FROM usage_events WHERE requester = 'carol'") == 1
    dead: Any = await rds.xrange(USAGE_DEAD_STREAM)
    assert len(dead) == 1
    assert dead[0][1][b"kind"] == b"bogus"
    assert dead[0][1][b"dead:stream"] == USAGE_STREAM.encode()
    assert await rds.xlen(USAGE_STREAM) == 0


# -- matching/routing.py ----------------------------------------------------------------------


async def test_routes_publish_withdraw_and_publish_all(rds: Redis) -> None:
    await routing.publish(rds, "alice", "e1", "d1")
    await routing.publish(rds, "alice", "e2", "d2")
    await routing.publish(rds, "bob", "e3", "d3")
    await routing.withdraw(rds, "alice", "e2", "d2")
    routes = routing.DealRoutes(rds, cache_ttl=0)
    assert await routes.routes("alice") == {"e1": "d1"}
    assert await routes.routes("bob") == {"e3": "d3"}

    await routing.publish_all(rds, {"alice": {"e5": "d5", "e6": "d6"}, "carol": {"e7": "d7"}, "dave": {}})
    assert await routes.routes("alice") == {"e5": "d5", "e6": "d6"}
    assert await routes.routes("bob") == {}
    assert await routes.routes("carol") == {"e7": "d7"}
    stored = sorted([key.decode() async for key in rds.scan_iter(match="ipsx:market:routes:*")])
    assert stored == [routing.routes_key("alice"), routing.routes_key("carol")]


async def test_route_allowances_and_the_allowance_counters(rds: Redis) -> None:
    await routing.publish(rds, "alice", "e1", "d1", 5_000)
    await routing.publish(rds, "alice", "e2", "d2")  # a time-only deal: no allowance field
    routes = routing.DealRoutes(rds, cache_ttl=0)
    assert await routes.routes("alice") == {"e1": "d1", "e2": "d2"}
    assert (routes.allowance("alice", "d1"), routes.allowance("alice", "d2")) == (5_000, 0)
    await routing.withdraw(rds, "alice", "e1", "d1")
    assert await rds.hgetall(routing.routes_key("alice")) == {b"e2": b"d2"}
    await routing.publish_all(rds, {"bob": {"e3": ("d3", 7), "e4": "d4"}})
    assert await routes.routes("bob") == {"e3": "d3", "e4": "d4"}
    assert routes.allowance("bob", "d3") == 7
    # Two requesters' counters (two slots) in one non-transactional pipeline.
    guard = AllowanceGuard(rds)
    carried = {"bob": 0, "carol": 0}
    cut: list[str] = []
    for requester, deal in (("bob", "d3"), ("carol", "d9")):
        watched = guard.watch(requester, deal, 7 if requester == "bob" else 100)
        watched.gauge = lambda requester=requester: carried[requester]  # type: ignore[misc]
        watched.cut = lambda deal=deal: cut.append(deal)  # type: ignore[misc]
    carried.update(bob=8, carol=3)
    await guard.flush()
    assert cut == ["d3"]
    assert int(await rds.get(used_key("carol", "d9"))) == 3


async def test_spot_request_round_trip(rds: Redis) -> None:
    routes = routing.DealRoutes(rds, spot_timeout=5)
    filters = RequestFilters(country="fr", type="mobile", asn=3215, protocol="socks5")

    async def market() -> routing.SpotRequest | None:
        asked = await routing.next_spot_request(rds, wait=5)
        if asked is not None:
            await routing.answer_spot(rds, asked.reply_to, "no_offer")
        return asked

    answer, asked = await asyncio.gather(
        routes.ask_spot("alice", filters, key_id="k1", max_price_per_gb=123), market()
    )
    assert answer == "no_offer"
    assert asked is not None
    assert asked == routing.SpotRequest("alice", filters, asked.reply_to, "k1", 123)
    assert await rds.llen(routing.SPOT_QUEUE) == 0
    assert await rds.exists(routing._reply_key(asked.reply_to)) == 0  # the answer was consumed

    # An answer nobody reads expires.
    await routing.answer_spot(rds, "token", "ok")
    assert await rds.lrange(routing._reply_key("token"), 0, -1) == [b"ok"]
    assert 0 < await rds.ttl(routing._reply_key("token")) <= 30

    # No market: the gateway gives up.
    assert await routing.DealRoutes(rds, spot_timeout=0.2).ask_spot("bob", filters) == "unavailable"
    assert await rds.llen(routing.SPOT_QUEUE) == 1


# -- gateway/tickets.py -----------------------------------------------------------------------


async def test_ticket_key_is_shared_through_redis(rds: Redis) -> None:
    ticket = Ticket(uuid.uuid4().hex, "n1", "e1", "alice", "", "connect", "example.com:443", 1, "boot-1")
    first = await TicketKey.shared(rds)
    second = await TicketKey.shared(rds)
    assert first.sign(ticket) == second.sign(ticket)
    stored = await rds.get(keys.ticket_key())
    assert isinstance(stored, bytes) and len(stored) == 32
    assert TicketKey(stored).sign(ticket) == first.sign(ticket)
    assert second.check(ticket.to_wire(), first.sign(ticket)) == ticket

    await rds.delete(keys.ticket_key())
    assert (await TicketKey.shared(rds)).sign(ticket) != first.sign(ticket)


# -- dashboard/auth.py ------------------------------------------------------------------------


async def test_sign_in_nonce_is_set_then_spent(rds: Redis, pg: asyncpg.Pool, database_url: str) -> None:
    settings = ApiSettings(database_url=database_url, redis_url="redis://unused", jwt_secret="s" * 40)
    nonce = await auth.new_nonce(rds, settings)
    nonce_key = f"ipsx:api:nonce:{nonce}"
    assert await rds.get(nonce_key) == b"1"
    assert 0 < await rds.ttl(nonce_key) <= int(settings.nonce_ttl)

    wallet = Account.from_key(bytes.fromhex("22" * 32))
    now = dt.datetime.now(dt.UTC)
    message = SiweMessage(
        domain=settings.siwe_domain,
        address=wallet.address,
        statement="Sign in to IPSX",
        uri=f"http://{settings.siwe_domain}/",
        version="1",
        chain_id=settings.chain_id,
        nonce=nonce,
        issued_at=now.isoformat().replace("+00:00", "Z"),
        expiration_time=(now + dt.timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
    ).prepare_message()
    signature = "0x" + wallet.sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")

    token, account = await auth.sign_in(pg, rds, settings, message, signature)
    assert token
    assert account.address == wallet.address
    assert await rds.exists(nonce_key) == 0  # GETDEL spent it
    with pytest.raises(Problem) as refused:
        await auth.sign_in(pg, rds, settings, message, signature)
    assert (refused.value.status, refused.value.detail) == (401, "unknown, expired or already used nonce")
