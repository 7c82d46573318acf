"""Records turned into figures: each target's run record flattened into metrics (per request,
per tunnel, per GB, per idle tunnel), then medians, spreads, errors and same-run ratios over the
runs. The Markdown report (``report``) only formats what :func:`summarize` returns.
"""

from __future__ import annotations

import statistics
from typing import Any


def _proxy_cpu(phase: dict[str, Any], roles: list[str]) -> dict[str, float]:
    cpu = phase.get("cpu_s", {})
    out = {role: cpu[role] for role in roles if role in cpu}
    if out:
        out["proxy"] = sum(out.values())
    for role in ("worker", "redis+postgres"):
        if role in cpu:
            out[role] = cpu[role]
    if "loadgen" in cpu:
        out["loadgen+origin"] = cpu["loadgen"] + cpu.get("origin", 0.0)
    return out


def run_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Flat metrics of one target in one run; absent when the phase failed."""
    phases = record.get("phases") or {}
    roles = list((record.get("pids") or {}).keys())
    m: dict[str, float] = {}
    ka = phases.get("keepalive", {})
    if "rps" in ka:
        m["ka_rps"] = ka["rps"]
        for key in ("p50_ms", "p99_ms"):
            if key in ka:
                m[f"ka_{key}"] = ka[key]
        if ka["requests"]:
            for role, s in _proxy_cpu(ka, roles).items():
                m[f"cpu_req.{role}"] = s / ka["requests"] * 1e6
        for kind, pct in ka.get("machine_pct", {}).items():
            m[f"ka_machine.{kind}"] = pct
    tun = phases.get("tunnels", {})
    if "rate" in tun:
        m["tun_rate"] = tun["rate"]
        for key in ("p50_ms", "p99_ms"):
            if tun.get(key) is not None:
                m[f"tun_{key}"] = tun[key]
        if tun["ok"]:
            for role, s in _proxy_cpu(tun, roles).items():
                m[f"cpu_tun.{role}"] = s / tun["ok"] * 1e6
        cpu, sys_cpu = tun.get("cpu_s", {}), tun.get("cpu_sys_s", {})
        for role in roles:
            if cpu.get(role):
                m[f"sys_tun.{role}"] = sys_cpu.get(role, 0.0) / cpu[role] * 100
        if roles and sum(cpu.get(r, 0.0) for r in roles):
            total = sum(cpu.get(r, 0.0) for r in roles)
            m["sys_tun.proxy"] = sum(sys_cpu.get(r, 0.0) for r in roles) / total * 100
    bulk = phases.get("bulk", {})
    if "mb_per_s" in bulk:
        m["bulk_mbps"] = bulk["mb_per_s"]
        if bulk["bytes"]:
            for role, s in _proxy_cpu(bulk, roles).items():
                m[f"cpu_gb.{role}"] = s / (bulk["bytes"] / 1e9)
    idle = phases.get("idle", {})
    per = idle.get("kib_per_tunnel")
    if per:
        for role, value in per.items():
            m[f"rss.{role}"] = value
        m["rss.proxy"] = sum(per.values())
    others = [p["other_cpu_pct"] for p in phases.values() if "other_cpu_pct" in p]
    if others:
        m["other_cpu_pct"] = max(others)
    if "agent_data_conns_after" in tun:
        m["agent_pool.start"] = record.get("agent_data_conns_at_start", -1)
        m["agent_pool.tunnels"] = tun["agent_data_conns_after"]
    for name in ("keepalive", "tunnels", "bulk", "idle"):
        phase = phases.get(name)
        if phase is not None:
            failed = 1 if "failed" in phase else 0
            m[f"err.{name}"] = sum((phase.get("errors") or {}).values()) + failed
    return m


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ratio columns: (label, numerator target, denominator target); per-run ratios, then the median
RATIOS: list[tuple[str, str, str]] = [
    ("squid ÷ direct", "squid", "direct"),
    ("proxy.py ÷ direct", "proxypy", "direct"),
    ("IPSX ÷ direct", "ipsx", "direct"),
    ("IPSX on-demand ÷ direct", "ipsx-ondemand", "direct"),
    ("IPSX ÷ proxy.py", "ipsx", "proxypy"),
    ("IPSX ÷ squid", "ipsx", "squid"),
    ("IPSX on-demand ÷ IPSX", "ipsx-ondemand", "ipsx"),
    ("IPSX ÷ IPSX --workers 1", "ipsx", "ipsx-1w"),
    ("WebSocket tunnel ÷ native", "ipsx-ws", "ipsx"),
    ("data connections reused ÷ not", "ipsx", "ipsx-noreuse"),
    ("market ÷ no market", "ipsx-market", "ipsx"),
    ("payments on ÷ off", "ipsx-market-paid", "ipsx-market"),
]
RATIO_ROWS: list[tuple[str, str]] = [
    ("keep-alive req/s", "ka_rps"),
    ("keep-alive p50 latency", "ka_p50_ms"),
    ("new tunnels/s", "tun_rate"),
    ("per-tunnel p50", "tun_p50_ms"),
    ("bulk MB/s", "bulk_mbps"),
    ("CPU µs per request", "cpu_req.proxy"),
    ("CPU µs per tunnel", "cpu_tun.proxy"),
    ("CPU-s per GB", "cpu_gb.proxy"),
    ("RSS KiB per idle tunnel", "rss.proxy"),
]


def summarize(records: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    """Per target, the medians and spreads (min, max) of each metric over the runs, the errors
    summed by phase and the start errors; the ratios of :data:`RATIOS` between targets measured."""
    per_target: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
    by_run: dict[int, dict[str, dict[str, float]]] = {}
    start_errors: dict[str, list[str]] = {t: [] for t in targets}
    errors: dict[str, dict[str, int]] = {t: {} for t in targets}
    for record in records:
        target = record["target"]
        if "start_error" in record:
            start_errors[target].append(f"run {record['run']}: {record['start_error']}")
            continue
        metrics = run_metrics(record)
        by_run.setdefault(record["run"], {})[target] = metrics
        for key, value in metrics.items():
            if key.startswith("err."):
                phase = key[4:]
                errors[target][phase] = errors[target].get(phase, 0) + int(value)
            else:
                per_target[target].setdefault(key, []).append(value)
    medians = {t: {k: statistics.median(v) for k, v in ms.items()} for t, ms in per_target.items()}
    spreads = {t: {k: [min(v), max(v)] for k, v in ms.items()} for t, ms in per_target.items()}
    ratios: dict[str, dict[str, float | None]] = {}
    for label, num, den in RATIOS:
        if num not in targets or den not in targets:
            continue
        ratios[label] = {}
        for _, key in RATIO_ROWS:
            values = [
                runs[num][key] / runs[den][key]
                for runs in by_run.values()
                if num in runs and den in runs and runs[num].get(key) and runs[den].get(key)
            ]
            ratios[label][key] = median_or_none(values)
    return {
        "medians": medians,
        "spreads": spreads,
        "ratios": ratios,
        "errors": errors,
        "start_errors": start_errors,
    }
