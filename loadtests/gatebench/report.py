"""What the benchmark prints and writes for people: a log line per phase, the Markdown tables of
:func:`metrics.summarize`'s figures (which rows, labels and number formats), and the description
of the machine and tools measured on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .constants import LABELS, VENV_BIN
from .metrics import RATIO_ROWS


def describe(name: str, phase: dict[str, Any]) -> str:
    """One log line on a phase's result (its failure, if it failed)."""
    if "failed" in phase:
        return f"{name} FAILED: {phase['failed']}"
    cpu = ", ".join(f"{role} {s:.2f}s" for role, s in phase.get("cpu_s", {}).items())
    sys_cpu = ", ".join(f"{role} {s:.2f}s" for role, s in phase.get("cpu_sys_s", {}).items())
    errs = phase.get("errors") or {}
    err = f", errors {errs}" if errs else ""
    other = phase.get("other_cpu_pct", 0.0)
    if other >= 5:  # someone else is using the machine: say so next to the figures it skews
        err += f" [other processes used {other:.0f}% of the machine's CPU during this phase]"
    if name == "keepalive":
        return (
            f"keep-alive {phase['rps']:,.0f} req/s ({phase['requests']:,} requests), "
            f"p50 {phase.get('p50_ms', 0):.2f} ms, p99 {phase.get('p99_ms', 0):.2f} ms{err}; CPU {cpu}"
        )
    if name == "tunnels":
        tw = phase.get("time_wait_after", {})
        return (
            f"tunnels {phase['rate']:,.0f}/s ({phase['ok']:,} ok), p50 {phase['p50_ms'] or 0:.2f} ms, "
            f"p99 {phase['p99_ms'] or 0:.2f} ms{err}; CPU {cpu} (of which stime {sys_cpu}); "
            f"TIME_WAIT after: {tw.get('total', 0):,} ({tw.get('from_127.0.0.2', 0):,} from 127.0.0.2)"
            + (
                f"; agent data connections after: {phase['agent_data_conns_after']}"
                if "agent_data_conns_after" in phase
                else ""
            )
        )
    if name == "bulk":
        return f"bulk {phase['mb_per_s']:,.0f} MB/s ({phase['bytes'] / 1e9:.2f} GB){err}; CPU {cpu}"
    if name == "idle":
        per = ", ".join(f"{r} {v:.1f} KiB" for r, v in phase.get("kib_per_tunnel", {}).items())
        ready = phase.get("ready", {})
        return (
            f"idle {ready.get('ok', 0)} tunnels open in {ready.get('open_seconds', 0):.1f}s, "
            f"RSS per tunnel: {per or 'n/a'}{err}, closed while held {phase.get('closed_while_held', '?')}"
        )
    return name


Row = tuple[str, str, str]  # label, metric key, number format
ROWS: list[Row] = [
    ("keep-alive 1 KiB absolute-URI req/s (wrk -t1 -c64)", "ka_rps", ",.0f"),
    ("  keep-alive p50 latency, ms", "ka_p50_ms", ".2f"),
    ("  keep-alive p99 latency, ms", "ka_p99_ms", ".2f"),
    ("new CONNECT tunnels/s (64 clients, CONNECT → GET /1k → close)", "tun_rate", ",.0f"),
    ("  per-tunnel time p50, ms", "tun_p50_ms", ".2f"),
    ("  per-tunnel time p99, ms", "tun_p99_ms", ".2f"),
    ("bulk MB/s (8 tunnels x /10m, summed)", "bulk_mbps", ",.0f"),
    ("proxy CPU µs per keep-alive request (IPSX: gateway+agent)", "cpu_req.proxy", ",.1f"),
    ("  IPSX gateway CPU µs per request", "cpu_req.gateway", ",.1f"),
    ("  IPSX agent CPU µs per request", "cpu_req.agent", ",.1f"),
    ("  load generator + origin CPU µs per request (wrk, nginx)", "cpu_req.loadgen+origin", ",.1f"),
    ("  machine CPU busy in the keep-alive phase, % of all cores", "ka_machine.busy", ".0f"),
    ("    of which softirq (network work, also in the processes' figures), %", "ka_machine.softirq", ".1f"),
    ("    steal (taken by the hypervisor), % of all cores", "ka_machine.steal", ".1f"),
    ("proxy CPU µs per new tunnel (IPSX: gateway+agent)", "cpu_tun.proxy", ",.1f"),
    ("  IPSX gateway CPU µs per tunnel", "cpu_tun.gateway", ",.1f"),
    ("  IPSX agent CPU µs per tunnel", "cpu_tun.agent", ",.1f"),
    ("proxy CPU-seconds per GB relayed (IPSX: gateway+agent)", "cpu_gb.proxy", ".2f"),
    ("  IPSX gateway CPU-s per GB", "cpu_gb.gateway", ".2f"),
    ("  IPSX agent CPU-s per GB", "cpu_gb.agent", ".2f"),
    ("kernel (stime) share of proxy CPU in the new-tunnel phase, %", "sys_tun.proxy", ".0f"),
    ("  IPSX gateway stime share, %", "sys_tun.gateway", ".0f"),
    ("  IPSX agent stime share, %", "sys_tun.agent", ".0f"),
    ("RSS growth KiB per idle CONNECT tunnel (IPSX: gateway+agent)", "rss.proxy", ",.1f"),
    ("  IPSX gateway KiB per idle tunnel", "rss.gateway", ",.1f"),
    ("  IPSX agent KiB per idle tunnel", "rss.agent", ",.1f"),
    ("IPSX agent idle data connections at start", "agent_pool.start", ".0f"),
    ("IPSX agent idle data connections after the new-tunnel phase", "agent_pool.tunnels", ".0f"),
    ("IPSX worker CPU µs per tunnel (usage ingestion, not in the sums)", "cpu_tun.worker", ",.1f"),
    (
        "background check: CPU of processes not started here, worst phase, % of machine",
        "other_cpu_pct",
        ".1f",
    ),
    ("redis+postgres CPU µs per tunnel (machine-wide, not in the sums)", "cpu_tun.redis+postgres", ",.1f"),
]
ERROR_PHASES = ("keepalive", "tunnels", "bulk", "idle")


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(summary: dict[str, Any], targets: list[str], runs: int) -> str:
    """The report's tables (medians, spreads, ratios) and the targets that failed to start."""
    medians, spreads = summary["medians"], summary["spreads"]
    failed_all = {t for t in targets if summary["start_errors"][t] and not medians[t]}
    head = "| | " + " | ".join(LABELS[t] for t in targets) + " |"
    out = [head, "|---|" + "---:|" * len(targets)]
    for label, key, fmt in ROWS:
        if not any(key in medians[t] for t in targets):
            continue
        cells = []
        for t in targets:
            if t in failed_all:
                cells.append("start failed")
            else:
                cells.append(_cell(medians[t].get(key), fmt))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    errs = []
    for t in targets:
        if t in failed_all:
            errs.append("start failed")
            continue
        counts = summary["errors"][t]
        errs.append(" / ".join(str(counts[p]) if p in counts else "—" for p in ERROR_PHASES))
    out.append("| errors, sum over runs (keep-alive / tunnels / bulk / idle) | " + " | ".join(errs) + " |")
    lines = [f"Medians over {runs} run(s).", "", *out, ""]
    # spread of the headline figures
    spread_rows = [("keep-alive req/s", "ka_rps"), ("tunnels/s", "tun_rate"), ("bulk MB/s", "bulk_mbps")]
    if runs > 1:
        lines += ["Spread over the runs (min to max):", "", head, "|---|" + "---:|" * len(targets)]
        for label, key in spread_rows:
            cells = []
            for t in targets:
                lo_hi = spreads[t].get(key)
                cells.append("—" if lo_hi is None else f"{lo_hi[0]:,.0f} to {lo_hi[1]:,.0f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    ratios = summary["ratios"]
    if ratios:
        labels = list(ratios)
        lines += [
            "Ratios (per run, same-run figures, then the median; IPSX CPU and RSS = gateway+agent):",
            "",
            "| | " + " | ".join(labels) + " |",
            "|---|" + "---:|" * len(labels),
        ]
        for label, key in RATIO_ROWS:
            cells = [_cell(ratios[c].get(key), ".2f") for c in labels]
            if all(c == "—" for c in cells):
                continue
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = [f"- {LABELS[t]}: {e}" for t in targets for e in summary["start_errors"][t]]
    if notes:
        lines += ["Targets that failed to start:", "", *notes, ""]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The machine and the tools' versions, for the report's header and the JSON's ``meta``."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for name, argv in {
        "nginx": ["nginx", "-v"],
        "squid": ["squid", "-v"],
        "wrk": ["wrk", "--version"],
        "proxy.py": [str(VENV_BIN / "proxy"), "--version"],
    }.items():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
            text = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
            versions[name] = text[0][:120] if text else ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }
