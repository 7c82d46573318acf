"""What a relay costs per keep-alive request: the provider agent's splice beside C relays.

On a keep-alive request through IPSX, the provider agent does nothing but relay: it reads the
request from the gateway's data connection, writes it to the origin, reads the response and
writes it back. This script puts exactly that between wrk and the nginx origin of
loadtests/bench_gateway.py and measures the CPU time per request of each relay, in the same run:

- ``direct``: no relay, wrk to nginx (what wrk and nginx cost on their own);
- ``splice``: ``gateway.relay.Splice`` on uvloop, the agent's data path without its control
  connection (one origin connection per client connection, as the agent keeps with reuse);
- ``haproxy``: HAProxy in TCP mode, one thread (C, epoll, ``recv``/``send``);
- ``haproxy-splice``: the same with ``option splice-auto`` (the kernel's ``splice(2)``).

The question it answers: how far below the agent's cost could any relay go on this machine? The
keep-alive bar of issue 7 needs the agent, wrk and nginx together under 0.54x the gateway's CPU
per request; the C relays here show the floor of the agent's part.

    .venv/bin/python loadtests/relay_floor.py --runs 3

HAProxy comes from Debian's ``haproxy`` package (``make bench-deps``); without it those rows are
left out. Results go to loadtests/results/relay-floor-*.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from gatebench.constants import HERE, ORIGIN, ORIGIN_HOST, ORIGIN_PORT
from gatebench.loadgen import parse_wrk
from gatebench.measure import children_cpu_seconds, cpu_seconds, drain_time_wait
from gatebench.procs import PROCS, StartError, child_env, log, port_open, wait_port
from gatebench.targets import start_origin

RELAY_PORT = 18300
RELAYS = ("direct", "splice", "haproxy", "haproxy-splice")

_HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{options}
frontend relay
    bind 127.0.0.1:{port}
    default_backend origin
backend origin
    server nginx {origin}
"""


def serve_splice(port: int) -> None:
    """Relay every connection accepted on ``port`` to the origin through ``Splice`` (uvloop)."""
    import uvloop

    from gateway.relay import Splice

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
            self.early: list[bytes] = []
            self.dialing = asyncio.get_running_loop().create_task(self.dial())  # held: not collected

        def data_received(self, data: bytes) -> None:  # before the origin connection is up
            self.early.append(data)

        async def dial(self) -> None:
            loop = asyncio.get_running_loop()
            try:
                origin, _ = await loop.create_connection(asyncio.Protocol, ORIGIN_HOST, ORIGIN_PORT)
            except OSError:
                self.transport.close()
                return
            Splice(self.transport, origin, on_done=lambda _: None, a_data=b"".join(self.early))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Accepted, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def start_relay(name: str, work: Path, logs: Path) -> subprocess.Popen[bytes] | None:
    """The relay ``name`` listening on :data:`RELAY_PORT`; None for ``direct``."""
    if name == "direct":
        return None
    if port_open(RELAY_PORT):
        raise StartError(f"port {RELAY_PORT} is already in use; is another relay running?")
    if name == "splice":
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-splice", str(RELAY_PORT)]
    else:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise StartError("haproxy is not installed (make bench-deps)")
        options = "    option splice-auto" if name == "haproxy-splice" else ""
        conf = work / f"{name}.cfg"
        conf.write_text(_HAPROXY_CONF.format(options=options, port=RELAY_PORT, origin=ORIGIN))
        argv = [haproxy, "-db", "-f", str(conf)]
    proc = PROCS.start(name, argv, logs / f"{name}.log")
    wait_port(RELAY_PORT, [proc], 15)
    return proc


def measure(
    name: str, relay: subprocess.Popen[bytes] | None, origin: int, refs: Path, duration: float
) -> dict[str, Any]:
    """One wrk run through ``relay`` (or straight to the origin): rate and CPU per request."""
    port = ORIGIN_PORT if relay is None else RELAY_PORT
    env = child_env({"TARGET": f"http://{ORIGIN}/1k", "DIRECT": "1"})
    argv = ["wrk", "-t1", "-c64", f"-d{duration:g}s", "--latency", "-s", str(refs / "wrk_abs.lua")]
    argv.append(f"http://{ORIGIN_HOST}:{port}/")
    relay_pids = [] if relay is None else [relay.pid]
    before = (cpu_seconds(relay_pids), cpu_seconds([origin]), children_cpu_seconds())
    done = subprocess.run(argv, capture_output=True, timeout=duration + 60, env=env, check=False)
    after = (cpu_seconds(relay_pids), cpu_seconds([origin]), children_cpu_seconds())
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.decode()[-300:]}")
    result = parse_wrk(done.stdout.decode(errors="replace"))
    if result["errors"]:
        raise RuntimeError(f"wrk reported errors through {name}: {result['errors']}")
    per_request = 1e6 / result["requests"]
    relay_cpu, nginx_cpu, wrk_cpu = (b - a for a, b in zip(before, after, strict=True))
    return {
        "rps": result["rps"],
        "requests": result["requests"],
        "relay_us": relay_cpu * per_request,
        "nginx_us": nginx_cpu * per_request,
        "wrk_us": wrk_cpu * per_request,
    }


def table(records: list[dict[str, Any]], relays: list[str]) -> str:
    lines = [
        "| relay | req/s | relay CPU µs/req | nginx µs/req | wrk µs/req | relay ÷ splice |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    medians: dict[str, dict[str, float]] = {}
    for name in relays:
        rows = [r["relays"][name] for r in records if "rps" in r["relays"].get(name, {})]
        if rows:
            medians[name] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    splice = medians.get("splice", {}).get("relay_us")
    for name, m in medians.items():
        ratio = f"{m['relay_us'] / splice:.2f}" if splice and name != "direct" else "—"
        relay = f"{m['relay_us']:.1f}" if name != "direct" else "—"
        lines.append(
            f"| {name} | {m['rps']:,.0f} | {relay} | {m['nginx_us']:.1f} | {m['wrk_us']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="CPU per keep-alive request of the agent's splice beside HAProxy, between wrk and nginx.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3, help="runs, interleaved across relays")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per relay and run")
    parser.add_argument(
        "--relays", default=",".join(RELAYS), help=f"comma-separated, from {', '.join(RELAYS)}"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON record")
    parser.add_argument("--serve-splice", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve_splice:
        serve_splice(args.serve_splice)
        return 0
    relays = [r for r in args.relays.split(",") if r]
    unknown = sorted(set(relays) - set(RELAYS))
    if unknown:
        print(
            f"relay_floor: unknown relays {', '.join(unknown)}; choose from {', '.join(RELAYS)}",
            file=sys.stderr,
        )
        return 2
    if shutil.which("wrk") is None:
        print("relay_floor: wrk is not installed (make bench-deps)", file=sys.stderr)
        return 2
    refs = HERE / "refs"
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ipsx-relay-floor-") as tmp:
        work, logs = Path(tmp), Path(tmp) / "logs"
        logs.mkdir()
        try:
            origin = start_origin(work, logs)
            for run in range(1, args.runs + 1):
                record: dict[str, Any] = {"run": run, "relays": {}}
                for name in relays:
                    drain_time_wait(2000, 60)
                    log(f"run {run}/{args.runs}: {name}")
                    try:
                        relay = start_relay(name, work, logs)
                    except StartError as exc:
                        log(f"  {name} not measured: {exc}")
                        record["relays"][name] = {"error": str(exc)}
                        continue
                    try:
                        figures = measure(name, relay, origin.pid, refs, args.duration)
                        record["relays"][name] = figures
                        log(
                            f"  {figures['rps']:,.0f} req/s, relay {figures['relay_us']:.1f} µs/req, "
                            f"nginx {figures['nginx_us']:.1f}, wrk {figures['wrk_us']:.1f}"
                        )
                    except RuntimeError as exc:
                        log(f"  {name} failed: {exc}")
                        record["relays"][name] = {"error": str(exc)}
                    finally:
                        if relay is not None:
                            PROCS.stop(relay)
                records.append(record)
        finally:
            PROCS.stop_all()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"relay-floor-{stamp}.json"
    path.write_text(json.dumps({"records": records, "duration": args.duration, "at": time.time()}, indent=1))
    print(table(records, relays))
    print(f"\nrecord: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
