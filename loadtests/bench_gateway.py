"""Side-by-side benchmark of the IPSX gateway against squid, proxy.py and a direct baseline.

Everything runs on this machine over 127.0.0.0/8, with the real processes: an nginx origin
(started here, own config in a temp dir), squid and proxy.py as references, and IPSX as it runs
in production (``ipsx gateway`` + ``ipsx worker`` + ``ipsx provide``, on PostgreSQL and Redis).
Each target is started alone, measured, and stopped by its PID; runs are interleaved across
targets and the table shows medians over the runs.

Phases, per target and run (see loadtests/README.md for what each figure means; --phases picks some):

1. idle       1,000 idle CONNECT tunnels held open; RSS growth per tunnel of each proxy process;
2. tunnels    64 clients, each CONNECT → GET /1k → close in a loop (loadtests/tunnel_load.py);
3. keepalive  wrk -t1 -c64 --latency with shared/bench/wrk_abs.lua, absolute-URI GET /1k;
4. bulk       8 CONNECT tunnels each downloading /10m in a loop.

Before each target the script lets the loopback TIME_WAIT sockets of the previous one expire
(--drain), so that no target inherits another's.

Around every phase the CPU time (utime+stime, summed over the process and its children) of each
proxy process is read, which gives CPU µs per request / per tunnel and CPU-seconds per GB: on a
2-core machine shared by load generator, origin and proxy, that is the steadier figure.

This script is the command line; the work is done by the modules of loadtests/gatebench/.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from gatebench.constants import ALL_TARGETS, DEFAULT_TARGETS, HERE, IPSX_DB, IPSX_REDIS, ORIGIN
from gatebench.ipsx_setup import IpsxSetup, describe_code
from gatebench.metrics import summarize
from gatebench.phases import Bench
from gatebench.procs import PROCS, StartError, log
from gatebench.report import machine, markdown
from gatebench.targets import Launcher, start_origin


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


PHASES = ("idle", "tunnels", "keepalive", "bulk")


def _phase_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0]
        + "\n\nStarts an nginx origin and each target in turn (direct, squid, proxy.py, IPSX with a "
        "pre-opened data-connection pool, IPSX with the agent at --pool-size 1), measures throughput, "
        "latency, each proxy process's own CPU time per unit of work and RSS per idle tunnel, and "
        "prints a Markdown table of medians over the runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs wrk, squid, nginx-light and curl (make bench-deps), PostgreSQL at 127.0.0.1:5432 "
        "and Redis at 127.0.0.1:6379 for IPSX. Example: make bench, or "
        ".venv/bin/python loadtests/bench_gateway.py --quick --targets direct,ipsx",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs, interleaved across targets (default: 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase (default: 10)")
    parser.add_argument(
        "--phases",
        type=_phase_list,
        default=PHASES,
        help=f"comma-separated phases to run, in their fixed order (default: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: one run of 3 s phases and 200 idle tunnels"
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="comma-separated, in the order run (default: %(default)s; 'ipsx-1w' is IPSX with "
        "gateway --workers 1, the baseline of the multi-process scaling figure; 'ipsx-ws' is IPSX "
        "with the agent tunnelling over WebSocket)",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: loadtests/results/bench-<date-time>.json)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--idle-tunnels", type=int, default=1000, help="idle CONNECT tunnels for RSS (default: 1000)"
    )
    parser.add_argument("--tunnel-clients", type=int, default=64, help="new-tunnel clients (default: 64)")
    parser.add_argument("--bulk-tunnels", type=int, default=8, help="bulk tunnels (default: 8)")
    parser.add_argument(
        "--ipsx-pool", type=int, default=64, help="agent --pool-size of the 'ipsx' target (default: 64)"
    )
    parser.add_argument(
        "--ipsx-workers",
        type=int,
        default=2,
        help="gateway --workers of the 'ipsx' and 'ipsx-ondemand' targets (default: %(default)s, "
        "one per core here)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=65.0,
        help="before each target, wait up to this many seconds for loopback TIME_WAIT sockets left by "
        "the previous one to expire, so no target inherits another's (0: don't; default: %(default)s)",
    )
    parser.add_argument(
        "--time-wait-threshold",
        type=int,
        default=2000,
        help="TIME_WAIT sockets tolerated when a target starts (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each target, wait up to this many seconds for the machine to be idle, i.e. "
        "other users' CPU below --quiet-threshold (0: don't; default: %(default)s)",
    )
    parser.add_argument(
        "--quiet-threshold", type=float, default=10.0, help="idle means below this CPU %% (default: 10)"
    )
    parser.add_argument(
        "--retry-busy",
        type=float,
        default=15.0,
        help="repeat a phase once if other processes used more than this %% of the machine's CPU "
        "during it (0: never; default: 15)",
    )
    parser.add_argument(
        "--ipsx-code",
        choices=["head", "worktree"],
        default="head",
        help="IPSX code measured: 'head' exports the committed HEAD once (git archive) and runs every "
        "IPSX process from that snapshot, so all runs measure the same commit even if others commit "
        "meanwhile; 'worktree' runs the installed working tree as it is (default: %(default)s)",
    )
    parser.add_argument("--settle", type=float, default=1.0, help="pause after each phase, s (default: 1)")
    parser.add_argument(
        "--refs",
        type=Path,
        default=Path("/work/shared/bench"),
        help="folder with squid.conf and wrk_abs.lua (default: %(default)s, else loadtests/refs)",
    )
    parser.add_argument("--database-url", default=IPSX_DB, help="IPSX database (default: %(default)s)")
    parser.add_argument(
        "--redis-url", default=IPSX_REDIS, help="IPSX Redis, flushed at each start (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.idle_tunnels = 1, 3.0, 200
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        print(
            f"unknown target(s): {', '.join(unknown)}; choose from {', '.join(ALL_TARGETS)}", file=sys.stderr
        )
        return 2
    refs = args.refs if (args.refs / "wrk_abs.lua").exists() else HERE / "refs"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = HERE / "results"
    out = args.out or results / f"bench-{stamp}.json"
    logs = results / f"logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ipsx-bench-"))

    atexit.register(PROCS.stop_all)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    ipsx = IpsxSetup(args, work, logs, targets=targets)
    bench = Bench(args, refs, Launcher(args, logs, refs, ipsx), ipsx)
    command = " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "refs": str(refs),
        "logs": str(logs),
    }
    # per target: three load phases, start + idle phase, and the TIME_WAIT drain (TIME_WAIT lasts
    # 60 s; the previous target's new-tunnel phase ended about two phases earlier)
    drain = min(args.drain, max(0.0, 60 - 2 * (args.duration + args.settle))) if args.drain > 0 else 0
    estimate = args.runs * len(targets) * (3 * (args.duration + args.settle) + 12 + drain)
    log(f"benchmark: {args.runs} run(s) of {targets}, {args.duration:g}s per phase, ~{estimate / 60:.0f} min")
    log(f"machine: {meta['machine']['nproc']} x {meta['machine']['cpu_model']}; logs in {logs}")
    records: list[dict[str, Any]] = []
    status = 0
    try:
        bench.origin_pid = start_origin(work, logs).pid
        log(f"origin: nginx on {ORIGIN} serving /1k and /10m")
        if any(t.startswith("ipsx") for t in targets):
            try:
                ipsx.pin_code()
            except (StartError, OSError, subprocess.SubprocessError) as error:
                ipsx.setup_error = f"cannot pin the IPSX code: {error}"
            meta["ipsx_code"] = ipsx.code
            code = ipsx.code
            log(f"IPSX code measured: {describe_code(code)}")
            ipsx.prepare()
            if ipsx.setup_error:
                log(f"IPSX set-up FAILED: {ipsx.setup_error}")
            else:
                log("IPSX: database migrated, account 'bench', API key and provider wallet ready")
        for run in range(1, args.runs + 1):
            for target in targets:
                log(f"[run {run}/{args.runs}] {target}: starting")
                try:
                    records.append(bench.run_target(target, run))
                except (StartError, RuntimeError, OSError, subprocess.SubprocessError) as error:
                    log(f"[run {run}] {target}: ERROR {error}")
                    records.append({"run": run, "target": target, "start_error": f"{error}"})
                _save(out, meta, records, None)
    except (KeyboardInterrupt, SystemExit):
        log("interrupted: stopping everything and reporting what was measured")
        status = 130
    except StartError as error:
        log(f"cannot run the benchmark: {error}")
        return 1
    except Exception:
        traceback.print_exc()
        log("unexpected error: stopping everything and reporting what was measured")
    finally:
        PROCS.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(records, targets)
    report = markdown(summary, targets, args.runs)
    _save(out, meta, records, summary)
    text = (
        f"# IPSX gateway benchmark\n\n- date: {meta['date']}\n- command: `{command}`\n"
        f"- machine: nproc {meta['machine']['nproc']}, {meta['machine']['cpu_model']}, "
        f"kernel {meta['machine']['kernel']}\n- IPSX code: {describe_code(meta.get('ipsx_code', {}))}\n"
        f"- JSON: `{out}`\n\n{report}"
    )
    out.with_suffix(".md").write_text(text)
    if args.markdown:
        args.markdown.write_text(text)
    print()
    print(report)
    log(f"results: {out} (and {out.with_suffix('.md').name}); process logs in {logs}")
    return status


def _save(
    out: Path, meta: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None
) -> None:
    out.write_text(json.dumps({"meta": meta, "records": records, "summary": summary}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
