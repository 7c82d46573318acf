"""``ipsx.supervisor``: workers that fail at startup, a supervisor stopped or killed outright.

Each test runs a real supervisor in a child process (``python -c``) over real worker processes;
the workers run one of the small ``main``s below instead of a gateway, so no service is needed.
Worker pids come from the supervisor's log. The timeouts only keep a failing test from hanging.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from ipsx import runtime, supervisor

ROOT = Path(__file__).resolve().parent.parent

_SUPERVISOR = """
import sys
from gateway.settings import GatewaySettings
from ipsx import runtime, supervisor
from tests import test_supervisor

runtime.setup_logging()
main, delay, give_up_after = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
base = GatewaySettings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://127.0.0.1:1/x",
                       http_port=1, socks_port=2, tunnel_port=3, node_id="sv", drain_timeout=1)
policy = supervisor.RestartPolicy(delay=delay, max_delay=delay * 4, give_up_after=give_up_after)
sys.exit(supervisor.run_workers(supervisor.worker_settings(base, 2), restarts=policy,
                                main=getattr(test_supervisor, main)))
"""


def fail_at_startup(settings: GatewaySettings) -> None:
    raise SystemExit(3)  # as a worker that cannot reach Redis


def serve_until_stopped(settings: GatewaySettings) -> None:
    async def serve(stop: asyncio.Event) -> None:
        await stop.wait()

    runtime.run(serve)


class Supervisor:
    def __init__(self, main: str, *, delay: float = 0.2, give_up_after: int = 3) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SUPERVISOR, main, str(delay), str(give_up_after)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.workers: list[int] = []

    def read_until(self, text: str) -> str:
        """Reads the supervisor's log up to the first line holding ``text``; returns that line."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            started = re.search(r"worker \S+ started \(pid (\d+)", line)
            if started:
                self.workers.append(int(started.group(1)))
            if text in line:
                return line
        raise AssertionError(f"the supervisor ended without logging {text!r}:\n{''.join(self.log)}")

    def finish(self, timeout: float = 60) -> int:
        assert self.process.stderr is not None
        _, rest = self.process.communicate(timeout=timeout)
        self.log.extend(rest.splitlines(keepends=True))
        return self.process.wait()


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for one in started:  # a failed test leaves nothing running
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait()
        for pid in one.workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for init to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _running(pid)]


def test_run_workers_gives_up_on_workers_failing_at_startup(supervisors: list[Supervisor]) -> None:
    sup = Supervisor("fail_at_startup", delay=0.2, give_up_after=3)
    supervisors.append(sup)
    assert sup.finish() == 1
    log = "".join(sup.log)
    assert "exited with status 3; restarting it in 0.2 s" in log
    assert "exited with status 3; restarting it in 0.4 s" in log  # the delay doubled
    assert re.search(r"worker sv-\d exited with status 3: 3 failures in a row within 10 s .* giving up", log)
    # two workers, each started at most give_up_after times: the storm ended
    assert 3 < log.count(" started (pid ") <= 6


def test_run_workers_restarts_nothing_once_stopped(supervisors: list[Supervisor]) -> None:
    # The workers fail; their restart is an hour away when SIGTERM comes.
    sup = Supervisor("fail_at_startup", delay=3600)
    supervisors.append(sup)
    sup.read_until("restarting it in 3600.0 s")
    sup.process.send_signal(signal.SIGTERM)
    assert sup.finish() == 0
    assert len(sup.workers) == 2  # the first two, never again


def test_workers_stop_when_the_supervisor_is_killed(supervisors: list[Supervisor]) -> None:
    sup = Supervisor("serve_until_stopped")
    supervisors.append(sup)
    sup.read_until("worker sv-0 started")
    sup.read_until("worker sv-1 started")
    assert all(_running(pid) for pid in sup.workers)
    sup.process.kill()
    sup.process.wait()
    assert _wait_gone(sup.workers) == []
    assert sup.finish() == -signal.SIGKILL
    assert "the supervisor (pid " in "".join(sup.log)  # each worker said why it stopped


def test_restart_policy_backs_off_to_its_ceiling() -> None:
    policy = supervisor.RestartPolicy(delay=1, max_delay=5)
    assert [policy.next_delay(n) for n in range(6)] == [1, 1, 2, 4, 5, 5]


def test_gateway_command_exits_with_the_supervisors_status() -> None:
    # Nothing listens at the services' ports: every worker fails at startup, and after the
    # default policy's failures in a row (about 15 s of backing off) the command gives up.
    env = {
        **os.environ,
        "IPSX_REDIS_URL": f"redis://127.0.0.1:{_unused_port()}/0",
        "IPSX_DATABASE_URL": f"postgresql://ipsx:s3cr3t@127.0.0.1:{_unused_port()}/ipsx",
    }
    http, socks, tunnel = (str(_unused_port()) for _ in range(3))
    ports = ["--http-port", http, "--socks-port", socks, "--tunnel-port", tunnel]
    result = subprocess.run(
        [sys.executable, "-m", "ipsx", "gateway", "--workers", "2", "--node-id", "sv", *ports],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "failures in a row within 10 s of starting; giving up, stopping all workers" in result.stderr


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
