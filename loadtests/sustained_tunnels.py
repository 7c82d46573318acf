"""Sustained new-tunnel load on IPSX, in slices, without letting TIME_WAIT sockets drain.

The benchmark's new-tunnel phase lasts 10 s. This runs the same load (loadtests/tunnel_load.py,
64 clients, CONNECT → GET /1k → close) for ``--slices`` consecutive slices of ``--slice``
seconds against one IPSX stack (nginx origin, gateway, worker, agent, started as in
bench_gateway.py). For each slice it prints the tunnels/s, the gateway's and the agent's CPU per
tunnel with their stime share, the loopback TIME_WAIT sockets, and the agent's idle data
connections to the gateway. This shows how the rate and the CPU per tunnel change when the load
lasts longer than TIME_WAIT does (60 s).

Example: .venv/bin/python loadtests/sustained_tunnels.py --slices 9 --pool-size 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_gateway as bg
from gatebench.constants import HERE, IPSX_HTTP
from gatebench.ipsx_setup import IpsxSetup, describe_code
from gatebench.measure import (
    agent_data_connections,
    cpu_seconds,
    cpu_system_seconds,
    drain_time_wait,
    time_wait_sockets,
)
from gatebench.procs import PROCS, log
from gatebench.targets import Launcher, start_origin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--slices", type=int, default=9, help="consecutive load slices (default: 9)")
    parser.add_argument("--slice", type=float, default=10.0, help="seconds per slice (default: 10)")
    parser.add_argument("--pool-size", type=int, default=64, help="agent --pool-size (default: 64)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default: 64)")
    parser.add_argument("--out", type=Path, help="also write the slices as JSON here")
    parser.add_argument(
        "--ipsx-code", choices=["head", "worktree"], default="head", help="as in bench_gateway.py"
    )
    args = parser.parse_args()
    bench_args = bg.build_parser().parse_args(
        ["--ipsx-pool", str(args.pool_size), "--ipsx-code", args.ipsx_code]
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = HERE / "results" / f"sustained-logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ipsx-sustained-"))
    refs = bench_args.refs if (bench_args.refs / "wrk_abs.lua").exists() else HERE / "refs"
    ipsx = IpsxSetup(bench_args, work, logs)
    launcher = Launcher(bench_args, logs, refs, ipsx)
    slices: list[dict[str, object]] = []
    try:
        start_origin(work, logs)
        ipsx.pin_code()
        log(f"IPSX code measured: {describe_code(ipsx.code)}")
        ipsx.prepare()
        if ipsx.setup_error:
            print(f"IPSX set-up failed: {ipsx.setup_error}", file=sys.stderr)
            return 1
        drained = drain_time_wait(500, 70)
        log(f"TIME_WAIT before start: {drained}")
        running = launcher.start("ipsx", 1)
        agent = running.roles["agent"]
        log(f"IPSX up, agent data connections: {agent_data_connections(agent)}")
        for index in range(1, args.slices + 1):
            before = {r: (cpu_seconds([p]), cpu_system_seconds([p])) for r, p in running.roles.items()}
            done = subprocess.run(
                [
                    sys.executable,
                    str(HERE / "tunnel_load.py"),
                    "--mode",
                    "tunnels",
                    "--proxy",
                    f"127.0.0.1:{IPSX_HTTP}",
                    "--auth",
                    str(running.auth),
                    "--duration",
                    f"{args.slice:g}",
                    "--concurrency",
                    str(args.clients),
                ],
                capture_output=True,
                timeout=args.slice + 90,
                check=False,
            )
            result = json.loads(done.stdout.decode().strip().splitlines()[-1])
            after = {r: (cpu_seconds([p]), cpu_system_seconds([p])) for r, p in running.roles.items()}
            ok = max(1, int(result["ok"]))
            cpu = {
                role: {
                    "us_per_tunnel": (after[role][0] - before[role][0]) / ok * 1e6,
                    "stime_pct": (after[role][1] - before[role][1])
                    / max(after[role][0] - before[role][0], 1e-9)
                    * 100,
                }
                for role in after
            }
            row = {
                "slice": index,
                "rate": result["rate"],
                "ok": result["ok"],
                "p50_ms": result["p50_ms"],
                "p99_ms": result["p99_ms"],
                "errors": result["errors"],
                "error_samples": result["error_samples"],
                "cpu": cpu,
                "time_wait": time_wait_sockets(),
                "agent_data_conns": agent_data_connections(agent),
            }
            slices.append(row)
            per = ", ".join(
                f"{role} {c['us_per_tunnel']:,.0f} µs/tunnel (stime {c['stime_pct']:.0f}%)"
                for role, c in cpu.items()
            )
            tw = row["time_wait"]
            assert isinstance(tw, dict)
            log(
                f"slice {index}: {result['rate']:,.0f} tunnels/s, p50 {result['p50_ms'] or 0:.0f} ms, "
                f"p99 {result['p99_ms'] or 0:.0f} ms, errors {result['errors'] or 0}; {per}; TIME_WAIT "
                f"{tw['total']:,} ({tw['from_127.0.0.2']:,} from 127.0.0.2); agent data connections "
                f"{row['agent_data_conns']}"
            )
    finally:
        PROCS.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        if args.out:
            args.out.write_text(json.dumps(slices, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
