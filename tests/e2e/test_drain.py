"""End-to-end: a gateway node stopped with SIGTERM drains. It refuses new clients at once and
leaves the node registry, lets the downloads in flight finish (metered as usual), then exits."""

from __future__ import annotations

import signal
import subprocess
import time

import redis

from tests.e2e.conftest import REDIS_URL, Stack, free_port, wait_port

SIZE = 3 * 1024 * 1024  # /slow/ sends 64 KiB every 20 ms: about a second for this much


def _registered(node: str) -> bool:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return client.zscore("ipsx:{pool}:gwnodes", node) is not None
    finally:
        client.close()


def test_sigterm_lets_streams_in_flight_finish_and_refuses_new_ones(stack: Stack) -> None:
    http_port, tunnel_port = free_port(), free_port()
    gateway = stack.spawn_gateway("drain-node", http_port, tunnel_port, "--drain-timeout", "20")
    try:
        wait_port(http_port)
        bind = "127.0.0.2"
        stack.wait_exit_on(stack.exit_id("agent-fr", bind), {"drain-node"})
        assert _registered("drain-node")
        proxy = f"http://{stack.account}-country-fr:{stack.secret}@127.0.0.1:{http_port}"
        url = stack.origin.url(f"/slow/{SIZE}")
        downloads = [
            subprocess.Popen(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-x", proxy, url],
                stdout=subprocess.PIPE,
                text=True,
            ),
            subprocess.Popen(  # the same through a CONNECT tunnel
                [
                    "curl",
                    "-sS",
                    "-p",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download}",
                    "-x",
                    proxy,
                    url,
                ],
                stdout=subprocess.PIPE,
                text=True,
            ),
        ]
        time.sleep(0.4)  # both downloads under way
        gateway.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New clients are refused at once, and the node has left the registry.
        refused = subprocess.run(
            ["curl", "-sS", "--max-time", "3", "-x", proxy, stack.origin.url("/ip")], capture_output=True
        )
        assert refused.returncode == 7  # connection refused
        assert not _registered("drain-node")
        # The downloads in flight complete, whole.
        results = [download.communicate(timeout=30)[0] for download in downloads]
        assert results == [f"200 {SIZE}", f"200 {SIZE}"]
        assert gateway.wait(timeout=30) == 0
        rows = stack.wait_usage(
            "node = 'drain-node' AND target LIKE '%' AND gateway_bytes_down >= $1", SIZE, count=2
        )
        assert {row["protocol"] for row in rows} == {"http", "connect"}
        log = (stack.tmp / "drain-node-gateway.log").read_text()
        assert "draining 2 stream(s)" in log and "cutting" not in log
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


def test_streams_still_open_at_the_drain_deadline_are_cut(stack: Stack) -> None:
    http_port, tunnel_port = free_port(), free_port()
    gateway = stack.spawn_gateway("cut-node", http_port, tunnel_port, "--drain-timeout", "0.5")
    try:
        wait_port(http_port)
        stack.wait_exit_on(stack.exit_id("agent-fr", "127.0.0.2"), {"cut-node"})
        proxy = f"http://{stack.account}-country-fr:{stack.secret}@127.0.0.1:{http_port}"
        download = subprocess.Popen(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                "-x",
                proxy,
                stack.origin.url(f"/slow/{8 * SIZE}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.4)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=15) == 0
        out, _ = download.communicate(timeout=15)
        assert download.returncode != 0 and int(out) < 8 * SIZE  # cut short, and curl knows it
        assert (
            "cutting 1 stream(s) still open after the drain"
            in (stack.tmp / "cut-node-gateway.log").read_text()
        )
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
