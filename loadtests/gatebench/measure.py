"""What the benchmark measures about processes and the machine, read from psutil and /proc:
CPU time (utime+stime, with reaped children) and RSS and file descriptors of process trees, CPU
used by processes this benchmark did not start, the machine's CPU split from /proc/stat, TCP
sockets in TIME_WAIT, the IPSX agent's data connections; and the waits for a quiet machine and
for TIME_WAIT sockets to drain.
"""

from __future__ import annotations

import contextlib
import resource
import time
from typing import Any

import psutil

from .constants import IPSX_TUNNEL


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants; empty if it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes and their live descendants, plus their reaped children."""
    total = 0.0
    for pid in pids:
        for proc in process_tree(pid):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_system_seconds(pids: list[int]) -> float:
    """The stime part of :func:`cpu_seconds` (time in the kernel on the processes' behalf)."""
    total = 0.0
    for pid in pids:
        for proc in process_tree(pid):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.system + t.children_system
    return total


def other_processes_cpu(exclude: set[int]) -> dict[tuple[int, float], float]:
    """CPU seconds of every user-space process not in ``exclude``, keyed by (pid, start time).

    Kernel threads are left out (they do this benchmark's softirq work too); the processes this
    benchmark started and their descendants are in ``exclude``.
    """
    out: dict[tuple[int, float], float] = {}
    for proc in psutil.process_iter(["ppid", "create_time"]):
        if proc.pid in exclude or proc.pid == 2 or proc.info["ppid"] == 2:
            continue
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[(proc.pid, proc.info["create_time"])] = (
                t.user + t.system + t.children_user + t.children_system
            )
    return out


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_jiffies() -> dict[str, int]:
    """The machine's CPU time by kind from /proc/stat, all cores summed, in clock ticks."""
    with open("/proc/stat") as stat:
        values = stat.readline().split()[1 : 1 + len(_STAT_FIELDS)]
    return dict(zip(_STAT_FIELDS, map(int, values), strict=True))


def machine_shares(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """How the machine's CPU time between two snapshots split, in % of all cores: ``busy``
    (everything but idle and iowait), ``softirq`` (network work; with tick-based accounting it
    is also in the stime of the process it interrupted) and ``steal`` (taken by the hypervisor)."""
    delta = {kind: after[kind] - before[kind] for kind in _STAT_FIELDS}
    total = sum(delta.values()) or 1
    busy = total - delta["idle"] - delta["iowait"]
    return {
        "busy": busy / total * 100,
        "softirq": delta["softirq"] / total * 100,
        "steal": delta["steal"] / total * 100,
    }


def children_cpu_seconds() -> float:
    """CPU time of this script's reaped children: the load generators (wrk, tunnel_load.py)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_wait_sockets() -> dict[str, int]:
    """TCP sockets in TIME_WAIT (IPv4), in total and those whose local address is 127.0.0.2."""
    total = exit_side = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as handle:
        next(handle, None)
        for line in handle:
            fields = line.split(None, 4)
            if len(fields) > 3 and fields[3] == "06":
                total += 1
                if fields[1].startswith("0200007F:"):
                    exit_side += 1
    return {"total": total, "from_127.0.0.2": exit_side}


def wait_quiet(threshold_pct: float, timeout: float) -> dict[str, Any]:
    """Wait (at most ``timeout`` s) until the machine's CPU use over 2 s is below ``threshold_pct``.

    Called between targets, when only the idle origin of this benchmark is running: whatever
    is busy then is someone else, whose load would skew the next target's figures.
    """
    started = time.monotonic()
    busy = psutil.cpu_percent(interval=2.0)
    first = busy
    while busy >= threshold_pct and time.monotonic() - started < timeout:
        busy = psutil.cpu_percent(interval=2.0)
    return {"first_pct": first, "last_pct": busy, "waited_s": round(time.monotonic() - started, 1)}


def drain_time_wait(threshold: int, timeout: float) -> dict[str, Any]:
    """Wait (at most ``timeout`` s) until fewer than ``threshold`` sockets are in TIME_WAIT."""
    started = time.monotonic()
    counts = time_wait_sockets()
    first = counts["total"]
    while counts["total"] >= threshold and time.monotonic() - started < timeout:
        time.sleep(1.0)
        counts = time_wait_sockets()
    return {"before": first, "after": counts["total"], "waited_s": round(time.monotonic() - started, 1)}


def rss_bytes(pid: int) -> int:
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def agent_data_connections(pid: int, workers: int = 1) -> int:
    """Established connections from the IPSX agent to the gateway's tunnel ports, minus the control
    ones (one per gateway worker), summed over the workers.

    The agent's pool of data connections after a phase: it starts at --pool-size per worker and,
    if the agent opened more under load, shows how many it keeps.
    """
    ports = range(IPSX_TUNNEL, IPSX_TUNNEL + workers)
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return -1
    count = sum(1 for c in conns if c.raddr and c.raddr.port in ports and c.status == "ESTABLISHED")
    return max(0, count - workers)


def fd_count(pid: int) -> int:
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.num_fds()
    return total


def service_pids() -> list[int]:
    """redis-server and postgres processes (shared services IPSX uses; informational)."""
    pids = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("redis-server", "postgres"):
            pids.append(proc.pid)
    return pids
