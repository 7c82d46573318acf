"""``pool.client.redis_from_url``: the URL forms, and Sentinel for real.

The Sentinel test starts its own Redis master and a Sentinel watching it on free loopback ports
(never the machine's Redis), reaches the master through ``redis+sentinel://``, and then has the
Sentinel fail over to a replica: the same client follows it to the new master.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from pool.client import redis_from_url
from pool.nodes import NodeInfo, NodeRegistry

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SERVICE = "ipsx-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(directory: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    home = directory / name
    home.mkdir()
    with open(home / "log", "wb") as log:
        return subprocess.Popen(
            [REDIS_SERVER, *args, "--dir", str(home)], stdout=log, stderr=subprocess.STDOUT
        )


def _until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, int]]:
    """(sentinel port, master port, replica port): a master, its replica, one Sentinel (quorum 1)."""
    directory = tmp_path_factory.mktemp("sentinel")
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n"
    )
    processes = [
        _start(directory, "master", "--port", str(master_port), *common),
        _start(
            directory,
            "replica",
            "--port",
            str(replica_port),
            "--replicaof",
            "127.0.0.1",
            str(master_port),
            *common,
        ),
    ]
    try:
        replica = redis.Redis(port=replica_port)
        _until(lambda: replica.info("replication")["master_link_status"] == "up", "the replica never synced")
        processes.append(_start(directory, "sentinel", str(conf), "--sentinel"))
        watcher = redis.Redis(port=sentinel_port)
        _until(lambda: watcher.sentinel_slaves(SERVICE), "the sentinel never found the replica")
        yield sentinel_port, master_port, replica_port
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


async def test_sentinel_url_reaches_the_master_and_follows_a_failover(sentinel: tuple[int, int, int]) -> None:
    sentinel_port, master_port, replica_port = sentinel
    client = redis_from_url(f"redis+sentinel://127.0.0.1:{sentinel_port}/{SERVICE}/0")
    try:
        nodes = NodeRegistry(client, ttl=300)  # the failover may take a while
        await nodes.announce(NodeInfo("gw-a", ":8443", "boot-1"))
        assert await nodes.live() == [NodeInfo("gw-a", ":8443", "boot-1")]
        # Written on the master the Sentinel named, not anywhere else.
        assert redis.Redis(port=master_port).exists("ipsx:{pool}:gwnodes") == 1

        # The Sentinel promotes the replica; the same client now writes there.
        watcher = redis.Redis(port=sentinel_port)
        # Until the Sentinel has heard from the replica itself, it has no replica it trusts.
        _until(lambda: watcher.sentinel_failover(SERVICE), "the sentinel would not fail over")
        _until(
            lambda: (
                redis.Redis(port=replica_port).info("replication")["role"] == "master"
                and redis.Redis(port=master_port).info("replication")["role"] == "slave"
            ),
            "the failover never completed",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                await nodes.announce(NodeInfo("gw-b", ":8444", "boot-2"))
                break
            except redis.RedisError:  # the old master turned replica: read-only until rediscovered
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert [info.node for info in await nodes.live()] == ["gw-a", "gw-b"]
        assert redis.Redis(port=replica_port).zscore("ipsx:{pool}:gwnodes", "gw-b") is not None
    finally:
        await client.aclose()


def test_a_plain_url_gives_a_plain_client() -> None:
    client = redis_from_url("redis://127.0.0.1:6379/3")
    assert type(client) is Redis
    assert client.connection_pool.connection_kwargs["db"] == 3


def test_a_cluster_url_gives_a_cluster_client_with_every_seed() -> None:
    client: Any = redis_from_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001")
    assert isinstance(client, RedisCluster)
    seeds = client.nodes_manager.startup_nodes.values()
    assert sorted((node.host, node.port) for node in seeds) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert client.connection_kwargs["password"] == "s3cret"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://10.0.0.1/", "expected HOST:PORT"),
        ("redis+cluster://10.0.0.1:99999", "expected HOST:PORT"),
        ("redis+cluster://10.0.0.1:7000/3", "only database 0"),
        ("redis+sentinel://10.0.0.1:26379", "expected redis+sentinel://HOSTS/SERVICE"),
        ("redis+sentinel://10.0.0.1:26379/svc/x", "expected redis+sentinel://HOSTS/SERVICE"),
        ("redis+sentinel://:hunter2@10.0.0.1:26379", "expected redis+sentinel://HOSTS/SERVICE"),
    ],
)
def test_malformed_urls_are_refused_without_their_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        redis_from_url(url)
    assert "hunter2" not in str(refused.value)
