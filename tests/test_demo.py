"""``ipsx demo --once`` on the embedded services: the user's first command, run for real."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path


def _embedded_env() -> dict[str, str]:
    """The environment without service URLs: the demo then embeds PostgreSQL and Redis."""
    return {k: v for k, v in os.environ.items() if k not in ("IPSX_DATABASE_URL", "IPSX_REDIS_URL")}


def _demo_command(data_dir: Path, *extra: str) -> list[str]:
    """``ipsx demo`` in ``data_dir`` with every port chosen by the system."""
    ports = [arg for name in ("http", "socks", "tunnel", "origin", "api") for arg in (f"--{name}-port", "0")]
    return [sys.executable, "-m", "ipsx", "demo", *extra, "--data-dir", str(data_dir), *ports]


def test_demo_once_relays_through_demo_exits_and_meters_it(tmp_path: Path) -> None:
    env = _embedded_env()
    data_dir = tmp_path / "state"
    command = _demo_command(data_dir, "--once")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    via_http = re.search(r"via HTTP proxy: (\S+)", out)
    via_socks = re.search(r"via SOCKS5:\s+(\S+)", out)
    assert via_http is not None and via_http.group(1) in {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    assert via_socks is not None and via_socks.group(1) in {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    # Each stream was carried by a deal: the spot deals the demo market opened for the traffic.
    assert (
        len(re.findall(r"metered: (http|socks5)\s+exit \w+ deal (?!None)\w+ up \d+ B down \d+ B", out)) == 2
    )
    assert re.search(r"export http_proxy=http://demo:ipsx_\w+_\S+@127\.0\.0\.1:\d+", out)
    assert "SOCKS_PROXY=socks5h://demo:" in out

    state = json.loads((data_dir / "demo.json").read_text())
    assert state["account"] == "demo"
    assert state["http_proxy"].startswith("http://demo:" + state["secret"] + "@127.0.0.1:")
    assert (data_dir / "demo.json").stat().st_mode & 0o077 == 0  # the secret file is private
    assert state["secret"] not in result.stderr  # never in a log line

    assert "demo balance:   1000 IPSX" in out

    # A second run reuses the data dir: the same account and key, funded once only.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "demo balance:   1000 IPSX" in again.stdout
    assert json.loads((data_dir / "demo.json").read_text())["secret"] == state["secret"]


def test_demo_serves_until_ctrl_c_then_stops_everything(tmp_path: Path) -> None:
    env = _embedded_env()
    command = _demo_command(tmp_path / "state")
    demo = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        assert demo.stdout is not None
        for line in demo.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        proxy = re.search(r"export http_proxy=(\S+)", text)
        origin = re.search(r"curl (http://127\.0\.0\.1:\d+/ip)", text)
        assert proxy is not None and origin is not None, text
        seen = {
            subprocess.run(
                ["curl", "-sS", "--max-time", "10", "-x", proxy.group(1), origin.group(1)],
                capture_output=True,
                text=True,
                timeout=15,
            ).stdout
            for _ in range(6)
        }
        assert seen == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}  # the three demo exits, in rotation
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err[-2000:]
    assert "PostgreSQL stopped" in err and "Redis stopped" in err
    assert "Traceback" not in err
