"""The measurement phases of one target in one run, and the run of a target around them.

Phases: ``idle`` (RSS and file descriptors before and after holding idle CONNECT tunnels),
``tunnels`` and ``bulk`` (loadtests/tunnel_load.py), ``keepalive`` (wrk). Each load phase is
wrapped in :meth:`Bench.measured`, which reads every process's CPU time before and after, and is
repeated once if other processes loaded the machine meanwhile.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import HERE, KIB, MARKET_TARGETS, ORIGIN
from .ipsx_setup import IpsxSetup
from .loadgen import LineReader, parse_wrk
from .measure import (
    agent_data_connections,
    children_cpu_seconds,
    cpu_seconds,
    cpu_system_seconds,
    drain_time_wait,
    fd_count,
    machine_jiffies,
    machine_shares,
    other_processes_cpu,
    process_tree,
    rss_bytes,
    service_pids,
    time_wait_sockets,
    wait_quiet,
)
from .procs import StartError, child_env, log
from .report import describe
from .targets import Launcher, Running


@dataclass
class Bench:
    """Runs each target's phases, one target and run at a time, and measures them."""

    args: argparse.Namespace
    refs: Path
    launcher: Launcher
    ipsx: IpsxSetup
    origin_pid: int | None = None

    def _cpu_snapshot(self, running: Running) -> tuple[dict[str, float], dict[int, float]]:
        snap = {role: cpu_seconds([pid]) for role, pid in running.roles.items()}
        snap.update({f"{role}:sys": cpu_system_seconds([pid]) for role, pid in running.roles.items()})
        for role, pids in running.info_roles.items():
            snap[role] = cpu_seconds(pids)
        snap["origin"] = cpu_seconds([self.origin_pid]) if self.origin_pid is not None else 0.0
        services = {pid: cpu_seconds([pid]) for pid in service_pids()}
        return snap, services

    def _ours(self, running: Running) -> set[int]:
        """Processes this benchmark accounts for: targets, origin, services, itself and children."""
        roots = [*running.roles.values(), *(p for ps in running.info_roles.values() for p in ps)]
        roots += [*service_pids(), os.getpid()]
        if self.origin_pid is not None:
            roots.append(self.origin_pid)
        return {proc.pid for root in roots for proc in process_tree(root)}

    def measured(self, running: Running, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``body()``'s result (or ``failed``) with the CPU each process used meanwhile (``cpu_s``,
        ``cpu_sys_s``), the machine's CPU split, other processes' CPU and the wall time."""
        before, services_before = self._cpu_snapshot(running)
        others_before = other_processes_cpu(self._ours(running))
        jiffies, loadgen = machine_jiffies(), children_cpu_seconds()
        wall = time.monotonic()
        try:
            result = body()
        except (subprocess.SubprocessError, OSError, ValueError, KeyError, RuntimeError) as error:
            result = {"failed": f"{type(error).__name__}: {error}"}
        wall_s = time.monotonic() - wall
        loadgen = children_cpu_seconds() - loadgen
        result["machine_pct"] = machine_shares(jiffies, machine_jiffies())
        others_after = other_processes_cpu(self._ours(running))
        after, services_after = self._cpu_snapshot(running)
        # CPU spent meanwhile by processes this benchmark did not start (another user of the
        # machine), in % of all cores; processes started during the phase count in full
        other = sum(cpu - others_before.get(key, 0.0) for key, cpu in others_after.items())
        result["other_cpu_s"] = other
        result["other_cpu_pct"] = max(0.0, other) / (wall_s * (os.cpu_count() or 1)) * 100
        result["cpu_s"] = {role: after[role] - before[role] for role in before if ":" not in role}
        result["cpu_sys_s"] = {role[:-4]: after[role] - before[role] for role in before if ":" in role}
        # services: per process, new processes (postgres backends) with all their CPU
        result["cpu_s"]["redis+postgres"] = sum(
            max(0.0, cpu - services_before.get(pid, 0.0)) for pid, cpu in services_after.items()
        )
        result["cpu_s"]["loadgen"] = loadgen
        result["wall_s"] = wall_s
        time.sleep(self.args.settle)
        return result

    def measured_quietly(
        self, running: Running, body: Callable[[], dict[str, Any]], run: int, target: str
    ) -> dict[str, Any]:
        """``measured``, done once more (after waiting for quiet) if someone else loaded the machine."""
        result = self.measured(running, body)
        limit = self.args.retry_busy
        if limit <= 0 or result.get("other_cpu_pct", 0.0) < limit:
            return result
        log(
            f"[run {run}] {target}: other processes used {result['other_cpu_pct']:.0f}% of the CPU "
            "during this phase; repeating it once the machine is quiet"
        )
        wait_quiet(self.args.quiet_threshold, max(self.args.quiet_wait, 10.0))
        again = self.measured(running, body)
        again["discarded_busy_attempt"] = {
            k: v for k, v in result.items() if k not in ("cpu_s", "cpu_sys_s", "error_samples")
        }
        return again

    def phase_keepalive(self, running: Running) -> dict[str, Any]:
        """wrk's parsed report for keep-alive absolute-URI GET /1k through the target."""
        duration = self.args.duration
        env = child_env({"TARGET": f"http://{ORIGIN}/1k"})
        argv = ["wrk", "-t1", "-c64", f"-d{duration:g}s", "--latency", "-s", str(self.refs / "wrk_abs.lua")]
        if running.proxy is None:
            env["DIRECT"] = "1"
            url = f"http://{ORIGIN}/"
        else:
            url = f"http://{running.proxy[0]}:{running.proxy[1]}/"
            if running.auth:
                token = base64.b64encode(running.auth.encode()).decode()
                argv += ["-H", f"Proxy-Authorization: Basic {token}"]
        argv.append(url)
        done = subprocess.run(argv, capture_output=True, timeout=duration + 60, env=env, check=False)
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.decode()[-300:]}")
        return parse_wrk(output)

    def _load(self, running: Running, mode: str) -> dict[str, Any]:
        """tunnel_load.py's result line for the 'tunnels' or 'bulk' phase."""
        argv = [
            sys.executable,
            str(HERE / "tunnel_load.py"),
            "--mode",
            mode,
            "--duration",
            f"{self.args.duration:g}",
            "--concurrency",
            str(self.args.tunnel_clients if mode == "tunnels" else self.args.bulk_tunnels),
            "--origin",
            ORIGIN,
        ]
        argv += self._where(running)
        done = subprocess.run(
            argv, capture_output=True, timeout=self.args.duration + 90, env=child_env(), check=False
        )
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"tunnel_load exited {done.returncode}: {done.stderr.decode()[-400:]}")
        return dict(json.loads(lines[-1]))

    def _where(self, running: Running) -> list[str]:
        if running.proxy is None:
            return ["--direct"]
        where = ["--proxy", f"{running.proxy[0]}:{running.proxy[1]}"]
        return where + (["--auth", running.auth] if running.auth else [])

    def phase_idle(self, running: Running) -> dict[str, Any]:
        """RSS of each proxy process before and after opening --idle-tunnels idle CONNECT tunnels."""
        count = self.args.idle_tunnels
        argv = [
            sys.executable,
            str(HERE / "tunnel_load.py"),
            "--mode",
            "idle",
            "--count",
            str(count),
            "--origin",
            ORIGIN,
            "--hold",
            "180",
            *self._where(running),
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
        )
        assert proc.stdin is not None and proc.stdout is not None
        lines = LineReader(proc.stdout.fileno())
        result: dict[str, Any] = {}
        try:
            warm = lines.expect("WARM", 60)
            result["warm"] = warm
            time.sleep(self.args.settle)
            result["rss_before"] = {role: rss_bytes(pid) for role, pid in running.roles.items()}
            result["fds_before"] = {role: fd_count(pid) for role, pid in running.roles.items()}
            proc.stdin.write(b"open\n")
            proc.stdin.flush()
            result["ready"] = lines.expect("READY", 150)
            time.sleep(max(1.0, self.args.settle))
            result["rss_after"] = {role: rss_bytes(pid) for role, pid in running.roles.items()}
            result["fds_after"] = {role: fd_count(pid) for role, pid in running.roles.items()}
            proc.stdin.write(b"close\n")
            proc.stdin.flush()
            final = lines.last_json(60)
            result.update(final)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr is not None:
                err = proc.stderr.read().decode(errors="replace").strip()
                if err:
                    result["stderr"] = err[-500:]
                proc.stderr.close()
            proc.stdout.close()
        opened = int(result.get("ready", {}).get("ok", 0))
        if opened > 0:
            result["kib_per_tunnel"] = {
                role: (result["rss_after"][role] - result["rss_before"][role]) / KIB / opened
                for role in running.roles
            }
        return result

    def run_target(self, target: str, run: int) -> dict[str, Any]:
        """One target in one run: wait for TIME_WAIT to drain and the machine to be quiet, start
        it, run the phases asked for, stop it. The record has the phases' figures, or
        ``start_error`` if the target did not start."""
        record: dict[str, Any] = {"run": run, "target": target}
        if self.args.drain > 0:
            drained = drain_time_wait(self.args.time_wait_threshold, self.args.drain)
            record["time_wait_drain"] = drained
            if drained["waited_s"] >= 1:
                log(
                    f"[run {run}] {target}: waited {drained['waited_s']:.0f}s for TIME_WAIT sockets "
                    f"to drain ({drained['before']:,} -> {drained['after']:,})"
                )
        if self.args.quiet_wait > 0:
            quiet = wait_quiet(self.args.quiet_threshold, self.args.quiet_wait)
            record["quiet_wait"] = quiet
            if quiet["waited_s"] >= 3:
                log(
                    f"[run {run}] {target}: machine busy with other work ({quiet['first_pct']:.0f}% CPU); "
                    f"waited {quiet['waited_s']:.0f}s, now {quiet['last_pct']:.0f}%"
                )
        started = time.monotonic()
        try:
            running = self.launcher.start(target, run)
        except (StartError, OSError, subprocess.SubprocessError) as error:
            record["start_error"] = str(error)
            log(f"[run {run}] {target}: FAILED TO START: {error}")
            return record
        except Exception as error:  # redis unreachable and the like: report, do not crash the run
            record["start_error"] = f"{type(error).__name__}: {error}"
            log(f"[run {run}] {target}: FAILED TO START: {record['start_error']}")
            return record
        record["start_seconds"] = round(time.monotonic() - started, 2)
        record["pids"] = dict(running.roles)
        agent = running.roles.get("agent")
        if agent is not None:
            record["agent_data_conns_at_start"] = agent_data_connections(agent, running.workers)
        phases: dict[str, Any] = {}
        record["phases"] = phases
        try:
            wanted = self.args.phases
            if running.proxy is not None and self.args.idle_tunnels > 0 and "idle" in wanted:
                phases["idle"] = self.measured_quietly(running, lambda: self.phase_idle(running), run, target)
                if agent is not None:
                    phases["idle"]["agent_data_conns_after"] = agent_data_connections(agent, running.workers)
                log(f"[run {run}] {target}: {describe('idle', phases['idle'])}")
            plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("tunnels", lambda: self._load(running, "tunnels")),
                ("keepalive", lambda: self.phase_keepalive(running)),
                ("bulk", lambda: self._load(running, "bulk")),
            ]
            for name, body in plan:
                if name not in wanted:
                    continue
                phases[name] = self.measured_quietly(running, body, run, target)
                phases[name]["time_wait_after"] = time_wait_sockets()
                if agent is not None:
                    phases[name]["agent_data_conns_after"] = agent_data_connections(agent, running.workers)
                log(f"[run {run}] {target}: {describe(name, phases[name])}")
            for proc in running.procs:
                if proc.poll() is not None:
                    record.setdefault("died", []).append(f"{proc.args[1:2]} exited {proc.returncode}")
            if target in MARKET_TARGETS:
                record["market"] = self.ipsx.market_activity()
                log(f"[run {run}] {target}: so far {record['market']}")
        finally:
            self.launcher.stop(running)
        return record
