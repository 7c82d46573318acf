"""End-to-end: the scale-out topology, and processes killed outright in it.

Three gateway nodes run as separate processes on loopback ports, sharing one Redis and one
PostgreSQL; three provider agents are each given a different node and learn the others from the
node registry; a billing worker ingests the usage stream. Requests spread over every node. Then:

- one node is SIGKILLed while downloads run through it and requests keep going through the
  others: only its streams in flight fail, the other nodes serve on, the node leaves the
  registry and the agents within seconds, and every stream an exit relayed — the lost node's
  included, metered from its agent's report — is in PostgreSQL exactly once;
- the worker is SIGKILLed while a batch it read is still uncommitted: another worker claims the
  entries and ingests each exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import pytest
import redis

from billing.keys import USAGE_GROUP, USAGE_STREAM
from tests.e2e.conftest import EXITS, Stack, free_port, running_stack, wait_port
from tests.e2e.test_proxy import curl

REDIS_URL = os.environ.get("IPSX_TEST_CLUSTER_REDIS_URL", "redis://127.0.0.1:6379/13")
NODES = ("node-a", "node-b", "node-c")
SLOW = 4 * 1024 * 1024  # /slow/ sends 64 KiB every 20 ms: over a second for this much


@dataclass
class Cluster:
    stack: Stack
    http: dict[str, int]  # node → its HTTP proxy port
    tunnel: dict[str, int]  # node → its provider tunnel port
    gateways: dict[str, subprocess.Popen[bytes]]
    worker: subprocess.Popen[bytes]

    def proxy(self, node: str) -> str:
        return f"http://{self.stack.account}:{self.stack.secret}@127.0.0.1:{self.http[node]}"

    def registered(self) -> set[str]:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return {member.decode() for member in client.zrange("ipsx:{pool}:gwnodes", 0, -1)}
        finally:
            client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    with running_stack(tmp, f"ipsx_test_cluster_{os.getpid()}", REDIS_URL, gateway=False) as stack:
        http = {node: free_port() for node in NODES}
        tunnel = {node: free_port() for node in NODES}
        gateways = {
            node: stack.spawn_gateway(node, http[node], tunnel[node], "--handshake-timeout", "2")
            for node in NODES
        }
        worker = stack.spawn("worker", "--consumer", "worker-1", log="worker-1.log")
        for node in NODES:
            wait_port(tunnel[node])
            wait_port(http[node])
        # Each agent is given a different node; it learns the other two from the registry.
        for node, (country, bind) in zip(NODES, EXITS.items(), strict=True):
            stack.start_agent(
                f"agent-{country}", bind, country, "--allow-private", gateway=f"127.0.0.1:{tunnel[node]}"
            )
        for country, bind in EXITS.items():
            stack.wait_exit_on(stack.exit_id(f"agent-{country}", bind), set(NODES))
        yield Cluster(stack, http, tunnel, gateways, worker)


def _fetch(proxy: str, url: str) -> str:
    result = curl("-x", proxy, url, timeout=10)
    return result.stdout if result.returncode == 0 else f"error {result.returncode}"


def _wait_streams_metered(stack: Stack, count: int, timeout: float = 45.0) -> int:
    """Until PostgreSQL holds ``count`` usage events (or the timeout); how many it holds."""
    deadline = time.monotonic() + timeout
    while True:
        stored = stack.query("SELECT count(*) AS n FROM usage_events")[0]["n"]
        if stored >= count or time.monotonic() > deadline:
            return int(stored)
        time.sleep(0.2)


def test_requests_spread_over_every_node_and_exit(cluster: Cluster) -> None:
    stack = cluster.stack
    answers = {
        node: [_fetch(cluster.proxy(node), stack.origin.url("/ip")) for _ in range(9)] for node in NODES
    }
    for node, served in answers.items():
        assert set(served) <= set(EXITS.values()), (node, served)
        assert len(set(served)) >= 2, f"{node} rotated over {set(served)} only"
    rows = stack.wait_usage("node = ANY($1::text[])", list(NODES), count=27)
    assert {row["node"] for row in rows} == set(NODES)


def test_killing_a_node_fails_only_its_streams_in_flight_and_loses_no_usage(cluster: Cluster) -> None:
    stack = cluster.stack
    victim, survivors = "node-b", ("node-a", "node-c")
    slow_url = stack.origin.url(f"/slow/{SLOW}")
    downloads = [
        subprocess.Popen(
            [
                "curl",
                "-sS",
                *tunnel,
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                "-x",
                cluster.proxy(victim),
                slow_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for tunnel in ([], ["-p"])  # a plain-HTTP exchange and a CONNECT tunnel
    ]
    # Meanwhile a scraper keeps rotating through the other two nodes, before, during and after.
    stop = threading.Event()
    served: list[str] = []

    def scrape() -> None:
        turn = 0
        while not stop.is_set():
            served.append(_fetch(cluster.proxy(survivors[turn % 2]), stack.origin.url("/ip")))
            turn += 1

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        time.sleep(0.5)  # the downloads are under way
        cluster.gateways[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        cluster.gateways[victim].wait(timeout=10)
        sizes = [download.communicate(timeout=20)[0] for download in downloads]
        # The node leaves the registry within its heartbeat TTL, and the agents let it go.
        while victim in cluster.registered() and time.monotonic() - killed_at < 20:
            time.sleep(0.2)
        left_after = time.monotonic() - killed_at
        time.sleep(1.0)
    finally:
        stop.set()
        scraper.join(timeout=30)

    # Only the streams in flight on the dead node failed.
    assert all(int(size or 0) < SLOW for size in sizes), sizes
    assert len(served) >= 10
    assert set(served) <= set(EXITS.values()), [answer for answer in served if answer not in EXITS.values()]
    assert left_after <= 15, f"the dead node stayed in the registry {left_after:.1f}s"
    for country, bind in EXITS.items():
        exit_id = stack.exit_id(f"agent-{country}", bind)
        deadline = time.monotonic() + 15
        while victim in stack.nodes_of(exit_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stack.nodes_of(exit_id) == set(survivors)
        assert f"gateway node {victim} left" in (stack.tmp / f"agent-{country}.log").read_text()

    # Every stream an exit relayed is metered exactly once: one usage event and one agent report
    # per connection the origin accepted, the dead node's included.
    relayed = stack.origin.connections
    assert _wait_streams_metered(stack, relayed) == relayed
    counts = stack.query(
        "SELECT count(*) AS events, count(agent_bytes_down) AS reported FROM metered_streams"
    )[0]
    assert dict(counts) == {"events": relayed, "reported": relayed}
    assert stack.query("SELECT count(*) AS n FROM agent_reports")[0]["n"] == relayed
    # The two downloads cut by the kill were metered from their agents' counts, as the dead node's.
    lost = stack.query(
        "SELECT * FROM metered_streams WHERE outcome = 'node_lost' AND target = $1",
        f"127.0.0.1:{stack.origin.port}",
    )
    assert len(lost) >= 2
    assert {row["node"] for row in lost} == {victim}
    for row in lost:
        assert row["requester"] == stack.account
        assert row["gateway_bytes_down"] == row["agent_bytes_down"]
        assert 0 < row["gateway_bytes_down"] < SLOW + 4096
    assert stack.query(
        "SELECT count(*) AS n FROM usage_events WHERE node = $1 AND outcome = 'node_lost'", victim
    )[0]["n"] == len(lost)


class _TableLock:
    """Holds an exclusive lock on ``usage_events`` from a thread of its own until released, so a
    worker that read a batch blocks before committing it."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._locked = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._hold()))

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self._database_url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE usage_events IN EXCLUSIVE MODE")
                self._locked.set()
                await asyncio.to_thread(self._release.wait)
        finally:
            await conn.close()

    def __enter__(self) -> _TableLock:
        self._thread.start()
        if not self._locked.wait(10):
            raise TimeoutError("could not lock usage_events")
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._thread.join(timeout=10)


def _pending(consumer: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for entry in client.xinfo_consumers(USAGE_STREAM, USAGE_GROUP):
            if entry["name"].decode() == consumer:
                return int(entry["pending"])
        return 0
    finally:
        client.close()


def test_a_killed_worker_s_pending_entries_are_ingested_once_by_another(cluster: Cluster) -> None:
    stack = cluster.stack
    before = stack.origin.connections
    assert _wait_streams_metered(stack, before) == before
    with _TableLock(stack.database_url):
        answers = [_fetch(cluster.proxy("node-a"), stack.origin.url("/ip")) for _ in range(12)]
        assert set(answers) <= set(EXITS.values())
        deadline = time.monotonic() + 15
        while _pending("worker-1") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pending("worker-1") > 0  # read, blocked before its commit
        cluster.worker.send_signal(signal.SIGKILL)
        cluster.worker.wait(timeout=10)
    assert stack.query("SELECT count(*) AS n FROM usage_events")[0]["n"] == before  # nothing committed
    successor = stack.spawn("worker", "--consumer", "worker-2", "--claim-idle", "1", log="worker-2.log")
    try:
        relayed = stack.origin.connections
        assert relayed == before + 12
        assert _wait_streams_metered(stack, relayed) == relayed
        deadline = time.monotonic() + 10
        while _pending("worker-1") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pending("worker-1") == 0
        assert stack.query("SELECT count(*) AS n FROM agent_reports")[0]["n"] == relayed
    finally:
        successor.send_signal(signal.SIGTERM)
        successor.wait(timeout=10)


def test_an_agent_with_a_region_keeps_tunnels_to_that_region_s_nodes_only(cluster: Cluster) -> None:
    stack = cluster.stack
    http_port, tunnel_port = free_port(), free_port()
    regional = stack.spawn_gateway("node-eu", http_port, tunnel_port, "--region", "eu")
    try:
        wait_port(tunnel_port)
        # Given node-a (of no region) to log in to, the agent learns node-eu and keeps to it.
        stack.start_agent(
            "agent-eu",
            "127.0.0.9",
            "nl",
            "--allow-private",
            "--gateway-region",
            "eu",
            gateway=f"127.0.0.1:{cluster.tunnel['node-a']}",
        )
        exit_id = stack.exit_id("agent-eu", "127.0.0.9")
        stack.wait_exit_on(exit_id, {"node-a", "node-eu"})
        time.sleep(4)  # more than a registry round: it would have reached node-c by now
        assert stack.nodes_of(exit_id) == {"node-a", "node-eu"}
        # An agent of no region reaches the new node like any other.
        fr = stack.exit_id("agent-fr", EXITS["fr"])
        stack.wait_exit_on(fr, {"node-eu"})
        proxy = f"http://{stack.account}-country-nl:{stack.secret}@127.0.0.1:{http_port}"
        assert stack.wait_served(proxy, "127.0.0.9") == "127.0.0.9"
    finally:
        if "agent-eu" in stack.agents:
            stack.stop_agent("agent-eu")
        regional.send_signal(signal.SIGTERM)
        regional.wait(timeout=40)
