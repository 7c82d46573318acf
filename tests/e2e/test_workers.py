"""End-to-end: ``ipsx gateway --workers 2`` — two node processes behind one pair of proxy ports.

The agent is given worker 0's tunnel port only; it learns worker 1 from the node registry and
opens a tunnel to it too, so whichever worker the kernel hands a client connection to can serve
it. A worker that dies is restarted by the parent and comes back into service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from ipsx.listen import probe_bind
from tests.e2e.conftest import REDIS_URL, Stack, free_port, wait_port
from tests.e2e.test_proxy import curl


def _children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (multiprocessing's resource tracker is not one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in command:
            found.append(int(entry.name))
    return found


def _registered_nodes() -> set[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return {member.decode() for member in client.zrange("ipsx:{pool}:gwnodes", 0, -1)}
    finally:
        client.close()


def _fetch_all(proxy: str, url: str, count: int) -> list[str]:
    """``count`` requests, each on a new connection; the origin's answer (the exit used) of each."""
    answers = []
    for _ in range(count):
        result = curl("-x", proxy, url, timeout=5)
        answers.append(result.stdout if result.returncode == 0 else f"error {result.returncode}")
    return answers


def _wait_for_nodes(
    stack: Stack, proxy: str, since: float, wanted: set[str], timeout: float = 30
) -> set[str]:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        _fetch_all(proxy, stack.origin.url("/ip"), 10)
        rows = stack.query(
            "SELECT DISTINCT node FROM usage_events WHERE node LIKE 'wk-%' AND closed_at >= to_timestamp($1)",
            since,
        )
        seen = {row["node"] for row in rows}
        if wanted <= seen:
            break
    return seen


def _bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` now (the connections a stopped worker closed,
    in TIME_WAIT, do not count; a socket still listening there does)."""
    try:
        probe_bind("127.0.0.1", port)
    except OSError:
        return False
    return True


def _two_workers(stack: Stack, node_id: str, log: str) -> tuple[subprocess.Popen[bytes], int, int, int]:
    """``ipsx gateway --workers 2`` on free ports: the parent, its HTTP, SOCKS and first tunnel port."""
    http_port, socks_port, tunnel_port = free_port(), free_port(), free_port()
    # the second worker's tunnel port is the next one: it must be free too
    while tunnel_port + 1 in (http_port, socks_port) or not _bindable(tunnel_port + 1):
        tunnel_port = free_port()
    parent = stack.spawn(
        "gateway",
        "--workers",
        "2",
        "--http-port",
        str(http_port),
        "--socks-port",
        str(socks_port),
        "--tunnel-port",
        str(tunnel_port),
        "--node-id",
        node_id,
        log=log,
    )
    return parent, http_port, socks_port, tunnel_port


def test_two_workers_share_the_ports_and_agents_reach_both(stack: Stack) -> None:
    parent, http_port, _, tunnel_port = _two_workers(stack, "wk", "workers-gateway.log")
    try:
        wait_port(tunnel_port)
        wait_port(tunnel_port + 1)
        # The agent is told about worker 0 only.
        stack.start_agent(
            "agent-workers", "127.0.0.8", "pt", "--allow-private", gateway=f"127.0.0.1:{tunnel_port}"
        )
        proxy = f"http://{stack.account}-country-pt:{stack.secret}@127.0.0.1:{http_port}"
        wait_port(http_port)
        assert stack.wait_served(proxy, "127.0.0.8") == "127.0.0.8"
        agent_log = stack.tmp / "agent-workers.log"
        deadline = time.monotonic() + 20
        while "node wk-1 announced" not in agent_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "gateway node wk-1 announced at 127.0.0.1:" in agent_log.read_text()
        assert {"wk-0", "wk-1"} <= _registered_nodes()
        stack.wait_exit_on(stack.exit_id("agent-workers", "127.0.0.8"), {"wk-0", "wk-1"})

        # Connections spread over both workers (the kernel picks by the client's port), and every
        # one of them is served through the agent: neither worker lacks the tunnel.
        started = time.time()
        answers = _fetch_all(proxy, stack.origin.url("/ip"), 40)
        assert answers == ["127.0.0.8"] * 40
        assert _wait_for_nodes(stack, proxy, started, {"wk-0", "wk-1"}) == {"wk-0", "wk-1"}

        # A worker killed outright is restarted by the parent and serves again.
        children = _children(parent.pid)
        assert len(children) == 2
        os.kill(children[1], signal.SIGKILL)
        deadline = time.monotonic() + 20
        log = stack.tmp / "workers-gateway.log"
        while "restarting it" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "exited with status -9; restarting it" in log.read_text()
        stack.wait_exit_on(stack.exit_id("agent-workers", "127.0.0.8"), {"wk-0", "wk-1"})
        restarted = time.time()
        assert _wait_for_nodes(stack, proxy, restarted, {"wk-0", "wk-1"}) == {"wk-0", "wk-1"}
        assert len(_children(parent.pid)) == 2
    finally:
        if "agent-workers" in stack.agents:
            stack.stop_agent("agent-workers")
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
    # Stopped cleanly: every worker withdrew its node.
    assert parent.returncode == 0
    assert not {"wk-0", "wk-1"} & _registered_nodes()
    assert _children(parent.pid) == []


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that init has not reaped yet does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_workers_stop_when_the_parent_is_killed(stack: Stack) -> None:
    parent, http_port, _, tunnel_port = _two_workers(stack, "wkk", "workers-killed-gateway.log")
    wait_port(tunnel_port)
    wait_port(tunnel_port + 1)
    children = _children(parent.pid)
    assert len(children) == 2
    parent.kill()
    parent.wait(timeout=30)
    # No orphan keeps serving, or holding the shared ports, without its supervisor.
    deadline = time.monotonic() + 40
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [pid for pid in children if _alive(pid)]
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert leftover == []
    assert _bindable(http_port) and _bindable(tunnel_port) and _bindable(tunnel_port + 1)
    # Each drained and withdrew its node on the way out.
    assert not {"wkk-0", "wkk-1"} & _registered_nodes()
