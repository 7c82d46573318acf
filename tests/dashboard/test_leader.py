"""Two API nodes on one database and one Redis: one runs the market, the other forwards market
calls to it; when the market's node is killed outright, the other takes over with the book as
the database holds it.

Both are ``ipsx api`` processes of their own (database and Redis db 10 of this module's own).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from dashboard.leader import LEADER_KEY
from tests.billing.conftest import create_database, drop_database
from tests.e2e.conftest import free_port

REDIS_URL = os.environ.get("IPSX_TEST_LEADER_REDIS_URL", "redis://127.0.0.1:6379/10")
BOB = "0x" + "b0" * 20
REQUEST = {
    "filters": {"country": "fr"},
    "ips": 2,
    "duration_s": 600,
    "traffic_bytes": 10**6,
    "max_price_per_gb": "1000",
}


@dataclass
class Nodes:
    env: dict[str, str]
    tmp: Path
    key: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def ipsx(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ipsx", *args], env=self.env, capture_output=True, text=True, check=True
        )
        return done.stdout

    def start(self, name: str) -> None:
        port = free_port()
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "ipsx", "api", "--port", str(port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.ports[name] = port
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} did not start: {self.log(name)[-2000:]}")
            time.sleep(0.1)

    def client(self, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.ports[name]}",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=20,
        )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    name = f"ipsx_test_leader_{os.getpid()}"
    database_url = asyncio.run(create_database(name))
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        **os.environ,
        "IPSX_DATABASE_URL": database_url,
        "IPSX_REDIS_URL": REDIS_URL,
        "IPSX_JWT_SECRET": secrets.token_urlsafe(32),
    }
    found = Nodes(env, tmp_path_factory.mktemp("leader"))
    try:
        found.ipsx("migrate")
        found.ipsx("account", "create", "--address", BOB, "--name", "bob")
        secret = re.search(r"secret: (\S+)", found.ipsx("key", "create", "bob"))
        assert secret is not None
        found.key = secret.group(1)
        found.ipsx("account", "credit", "bob", "10")
        found.start("api-1")  # first up: it takes the market
        found.start("api-2")
        yield found
    finally:
        for process in found.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in found.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        asyncio.run(drop_database(name))


def _leader() -> str | None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        url = client.get(LEADER_KEY)
        return None if url is None else url.decode()
    finally:
        client.close()


def test_the_other_node_forwards_market_calls_to_the_market_s_node(nodes: Nodes) -> None:
    assert _leader() == f"http://127.0.0.1:{nodes.ports['api-1']}"
    assert "this API node runs the market" in nodes.log("api-1")
    assert "market calls are forwarded" in nodes.log("api-2")
    with nodes.client("api-2") as follower, nodes.client("api-1") as leader:
        placed = follower.post("/v1/requests", json=REQUEST, headers={"Idempotency-Key": "order-1"})
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["order_id"]
        assert placed.json()["resting"] is True
        # A retry through the other node is the same order, answered from the database.
        again = leader.post("/v1/requests", json=REQUEST, headers={"Idempotency-Key": "order-1"})
        assert (again.status_code, again.json()["order_id"], again.json()["replayed"]) == (
            200,
            order_id,
            True,
        )
        # The market's refusals come back as they are, problem details included.
        refused = follower.post("/v1/requests", json={**REQUEST, "ips": 0})
        assert refused.status_code == 422
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        assert refused.json()["field"] == "ips"
        amended = follower.patch(f"/v1/orders/{order_id}", json={"ips": 1})
        assert amended.status_code == 200, amended.text
        assert follower.get("/v1/market/depth", params={"country": "fr"}).status_code == 200
        listed = {o["order_id"]: o for o in follower.get("/v1/orders").json()["items"]}
        assert listed[order_id]["terms"]["ips"] == 1
        # Without credentials the follower answers itself: nothing is forwarded.
        assert httpx.post(f"{follower.base_url}/v1/requests", json=REQUEST).status_code == 401


def test_when_the_market_s_node_dies_the_other_takes_over(nodes: Nodes) -> None:
    with nodes.client("api-2") as follower:
        placed = follower.post("/v1/requests", json=REQUEST)
        assert placed.status_code == 201
        order_id = placed.json()["order_id"]

        nodes.processes["api-1"].send_signal(signal.SIGKILL)
        nodes.processes["api-1"].wait(timeout=10)
        # PostgreSQL ends the dead node's session and its lock; api-2 takes the market.
        deadline = time.monotonic() + 30
        while "this API node runs the market" not in nodes.log("api-2"):
            assert time.monotonic() < deadline, nodes.log("api-2")[-2000:]
            time.sleep(0.2)
        assert _leader() == f"http://127.0.0.1:{nodes.ports['api-2']}"
        # The book was loaded from the database: the order placed before is there to cancel.
        assert follower.delete(f"/v1/orders/{order_id}").status_code == 204
        states = {o["order_id"]: o["state"] for o in follower.get("/v1/orders").json()["items"]}
        assert states[order_id] == "cancelled"
        again = follower.post("/v1/requests", json=REQUEST)
        assert again.status_code == 201, again.text
