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
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
ALL_TARGETS = (
    "direct", "squid", "proxypy", "ipsx", "ipsx-ondemand", "ipsx-1w", "ipsx-market", "ipsx-market-paid",
)  # fmt: skip
MARKET_TARGETS = ("ipsx-market", "ipsx-market-paid")
DEFAULT_TARGETS = ALL_TARGETS[:5]
LABELS = {
    "direct": "direct",
    "squid": "squid",
    "proxypy": "proxy.py",
    "ipsx": "IPSX (pool 64)",
    "ipsx-ondemand": "IPSX on-demand (pool 1)",
    "ipsx-1w": "IPSX --workers 1 (pool 64)",
    "ipsx-market": "IPSX --market, payments off",
    "ipsx-market-paid": "IPSX --market, paying over a channel",
}
ORIGIN_HOST, ORIGIN_PORT = "127.0.0.1", 18080
ORIGIN = f"{ORIGIN_HOST}:{ORIGIN_PORT}"
SQUID_PORT = 13128
PROXYPY_PORT = 18899
IPSX_HTTP, IPSX_SOCKS, IPSX_TUNNEL = 18180, 18181, 18182
IPSX_API, ANVIL_PORT = 18190, 18545
ANVIL = REPO / "contracts" / "node_modules" / ".bin" / "anvil"
# The market targets: spot deals of 5 s (so usage settles and is invoiced while a phase runs) at
# a small price, with an allowance no phase reaches; the paying requester's limits never bind.
MARKET_API_ARGS = ("--spot-duration", "5", "--spot-traffic-gb", "1000", "--invoice-interval", "1")
OFFER_PRICE_PER_GB = str(10**15)  # 0.001 IPSX
PAYER_FUNDS = 10**6  # IPSX
IPSX_DB = "postgresql://postgres@127.0.0.1:5432/ipsx_bench"
IPSX_REDIS = "redis://127.0.0.1:6379/14"
KIB = 1024
ONE_K, TEN_M = 1024, 10 * 1024 * 1024


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# processes
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra or {})
    return env


class Processes:
    """Every server this script starts, so that all of them are stopped whatever happens."""

    def __init__(self) -> None:
        self._live: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._files: dict[int, Any] = {}

    def start(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ) -> subprocess.Popen[bytes]:
        handle = log_path.open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=_child_env(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # no threads in this script
            )
        except BaseException:
            handle.close()
            raise
        self._live.append((name, proc))
        self._files[proc.pid] = handle
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; then the same for children left behind."""
        try:
            leftovers = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            leftovers = []
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for child in leftovers:  # e.g. squid's pinger outlives squid
            with contextlib.suppress(psutil.Error):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=3)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self._live = [(n, p) for n, p in self._live if p is not proc]
        handle = self._files.pop(proc.pid, None)
        if handle is not None:
            handle.close()

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._live)):
            self.stop(proc)


PROCS = Processes()


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# measurements of a process tree
def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes and their live descendants, plus their reaped children."""
    total = 0.0
    for pid in pids:
        for proc in _tree(pid):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_system_seconds(pids: list[int]) -> float:
    """The stime part of :func:`cpu_seconds` (time in the kernel on the processes' behalf)."""
    total = 0.0
    for pid in pids:
        for proc in _tree(pid):
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
    for proc in _tree(pid):
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
    for proc in _tree(pid):
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


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_port(port: int, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise StartError(f"{proc.args[0]} exited with status {proc.returncode} before listening")
        if port_open(port):
            return
        time.sleep(0.1)
    raise StartError(f"nothing listening on port {port} after {timeout:.0f}s")


class StartError(Exception):
    """A target could not be started; the run records it and goes on with the others."""


# the origin
def start_origin(work: Path, logs: Path) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    root = work / "nginx"
    www = root / "www"
    www.mkdir(parents=True)
    (www / "1k").write_bytes(os.urandom(ONE_K))
    with (www / "10m").open("wb") as handle:
        block = os.urandom(1024 * 1024)
        for _ in range(10):
            handle.write(block)
    conf = f"""\
worker_processes 1;
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {logs}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    default_type application/octet-stream;
    server {{
        listen {ORIGIN} backlog=4096;
        root {www};
        location / {{ }}
    }}
}}
"""
    (root / "nginx.conf").write_text(conf)
    for path in (work, root, www):  # the worker runs as nobody
        path.chmod(0o755)
    for path in www.iterdir():
        path.chmod(0o644)
    if port_open(ORIGIN_PORT):
        raise StartError(f"port {ORIGIN_PORT} is already in use; is another origin running?")
    proc = PROCS.start("nginx", [nginx, "-p", f"{root}/", "-c", f"{root}/nginx.conf"], logs / "nginx.log")
    wait_port(ORIGIN_PORT, [proc], 15)
    for path, size in (("/1k", ONE_K), ("/10m", TEN_M)):
        conn = http.client.HTTPConnection(ORIGIN_HOST, ORIGIN_PORT, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200 or len(body) != size:
            raise StartError(f"origin answered {response.status} with {len(body)} bytes for {path}")
    return proc


# targets
@dataclass
class Running:
    """A started target: where to send requests and which processes to measure."""

    name: str
    proxy: tuple[str, int] | None  # None: direct to the origin
    auth: str | None = None  # "user:password"
    roles: dict[str, int] = field(default_factory=dict)  # proxy processes measured, by role
    info_roles: dict[str, list[int]] = field(default_factory=dict)  # measured, not the proxy itself
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)  # stopped in this order
    workers: int = 1  # gateway worker processes (IPSX)

    @property
    def proxy_url(self) -> str | None:
        if self.proxy is None:
            return None
        host, port = self.proxy
        return f"http://{self.auth}@{host}:{port}" if self.auth else f"http://{host}:{port}"


def curl_ok(proxy_url: str | None, tunnel: bool) -> tuple[bool, str]:
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
    if proxy_url is None:
        argv += ["--noproxy", "*"]
    else:
        argv += ["-x", proxy_url] + (["-p"] if tunnel else [])
    argv.append(f"http://{ORIGIN}/1k")
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, env=_child_env(), check=False)
    except subprocess.TimeoutExpired:
        return False, "curl timed out"
    code = done.stdout.decode().strip()
    return code == "200", f"HTTP {code or '-'} {done.stderr.decode().strip()[:200]}"


def wait_agent_on_every_worker(agent_pid: int, workers: int, timeout: float) -> None:
    """Until the agent has a connection to the tunnel port of each gateway worker (it learns the
    ones past the first from the node registry), so every worker can serve from the start."""
    wanted = set(range(IPSX_TUNNEL, IPSX_TUNNEL + workers))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            conns = psutil.Process(agent_pid).net_connections(kind="tcp")
            if wanted <= {c.raddr.port for c in conns if c.raddr and c.status == "ESTABLISHED"}:
                return
        time.sleep(0.2)
    raise StartError(f"the agent did not reach all {workers} gateway workers within {timeout:.0f}s")


def wait_live(running: Running, timeout: float) -> None:
    """Until both an absolute-URI request and a CONNECT tunnel through the target succeed."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for proc in running.procs:
            if proc.poll() is not None:
                raise StartError(f"{Path(str(proc.args[0])).name} exited with status {proc.returncode}")
        plain, last = curl_ok(running.proxy_url, tunnel=False)
        if plain:
            tunnel, last = curl_ok(running.proxy_url, tunnel=True)
            if tunnel:
                return
        time.sleep(0.25)
    raise StartError(f"no successful request through {running.name} after {timeout:.0f}s (last: {last})")


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    logs: Path
    refs: Path
    ipsx_secret: str | None = None
    ipsx_setup_error: str | None = None
    wallet: Path | None = None
    origin_pid: int | None = None
    ipsx_src: Path | None = None  # a snapshot of the code measured (None: the installed tree)
    ipsx_code: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    # the market targets: the provider's offer (placed once), and the paying requester's chain
    offered: bool = False
    anvil: subprocess.Popen[bytes] | None = None
    rpc: str = ""
    operator_key: str = field(default="", repr=False)
    deployment: Path | None = None
    payer_wallet: Path | None = None
    payer_name: str = ""
    payer_secret: str = field(default="", repr=False)

    @property
    def ipsx_env(self) -> dict[str, str]:
        env = {"IPSX_DATABASE_URL": self.args.database_url, "IPSX_REDIS_URL": self.args.redis_url}
        if self.ipsx_src is not None:
            env["PYTHONPATH"] = str(self.ipsx_src)
        return env

    @property
    def ipsx_command(self) -> list[str]:
        if self.ipsx_src is not None:
            return [sys.executable, "-m", "ipsx"]
        return [str(VENV_BIN / "ipsx")]

    def pin_ipsx_code(self) -> None:
        """Decide which IPSX code every run measures, and record it.

        Others commit to the repository while a benchmark runs; with ``--ipsx-code head`` (the
        default) the committed HEAD is exported once with ``git archive`` (read-only for the
        repository) and every IPSX process of every run imports that snapshot.
        """
        git = ["git", "-C", str(REPO)]

        def out(*argv: str) -> str:
            done = subprocess.run([*git, *argv], capture_output=True, timeout=30, check=False)
            return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else ""

        commit = out("rev-parse", "HEAD")
        self.ipsx_code = {
            "mode": self.args.ipsx_code,
            "commit": commit,
            "subject": out("log", "-1", "--format=%s", "HEAD"),
            "commit_date": out("log", "-1", "--format=%cI", "HEAD"),
        }
        if self.args.ipsx_code == "worktree" or not commit:
            changed = out("status", "--porcelain", "--", "gateway", "ipsx", "billing", "pool")
            self.ipsx_code["mode"] = "worktree"
            self.ipsx_code["uncommitted"] = changed.splitlines()
            return
        src = self.work / "ipsx-src"
        src.mkdir()
        archive = subprocess.run([*git, "archive", "--format=tar", commit], capture_output=True, timeout=60)
        if archive.returncode != 0:
            raise StartError(f"git archive failed: {archive.stderr.decode()[-300:]}")
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True, timeout=60)
        self.ipsx_src = src
        probe = subprocess.run(
            [sys.executable, "-c", "import gateway, ipsx; print(gateway.__file__)"],
            capture_output=True,
            timeout=30,
            env=_child_env(self.ipsx_env),
            cwd=self.work,
            check=False,
        )
        where = probe.stdout.decode().strip()
        if not where.startswith(str(src)):
            raise StartError(
                f"the snapshot is not what gets imported ({where or probe.stderr.decode()[-200:]})"
            )

    def log_path(self, run: int, target: str, role: str) -> Path:
        return self.logs / f"run{run}-{target}-{role}.log"

    # IPSX set-up, once per benchmark
    def ipsx_cli(self, *argv: str, timeout: float = 60, extra_env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [*self.ipsx_command, *argv],
            capture_output=True,
            timeout=timeout,
            env=_child_env({**self.ipsx_env, **(extra_env or {})}),
            cwd=self.work,
            check=False,
        )
        if done.returncode != 0:
            raise StartError(f"ipsx {' '.join(argv[:2])} failed: {done.stderr.decode().strip()[-400:]}")
        return done.stdout.decode()

    def setup_ipsx(self) -> None:
        try:
            self.ipsx_cli("migrate")
            names = {
                line.split()[0] for line in self.ipsx_cli("account", "list").splitlines() if line.strip()
            }
            if "bench" not in names:
                address = "0x" + secrets.token_hex(20)
                self.ipsx_cli("account", "create", "--address", address, "--name", "bench")
            out = self.ipsx_cli("key", "create", "bench", "--label", "loadtests/bench_gateway.py")
            match = re.search(r"secret:\s*(\S+)", out)
            if match is None:
                raise StartError(f"no secret in the output of 'ipsx key create': {out[:200]!r}")
            self.ipsx_secret = match.group(1)
            self.wallet = self.work / "wallet.key"
            self.ipsx_cli("wallet", "new", "--out", str(self.wallet))
            if any(t in MARKET_TARGETS for t in self.targets):
                self.ipsx_cli(
                    "account", "credit", "bench", str(PAYER_FUNDS), "--reference", "bench-market-funds"
                )
            if "ipsx-market-paid" in self.targets:
                self.setup_chain()
        except (StartError, subprocess.TimeoutExpired, OSError) as error:
            self.ipsx_setup_error = str(error)

    def setup_chain(self) -> None:
        """For the paying target, once: anvil, the contracts, and a requester (``pay<hex>``) whose
        channel to the operator funds it, credited by the chain watcher of the first run."""
        from web3 import Web3

        if not ANVIL.exists():
            raise StartError(f"{ANVIL} is missing (make setup installs it)")
        self.forget_chain()  # a new anvil redeploys at the same addresses: the old chain's state must go
        config = self.work / "anvil.json"
        anvil = PROCS.start(
            "anvil",
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(ANVIL_PORT), "--config-out", str(config)],
            self.logs / "anvil.log",
        )
        wait_port(ANVIL_PORT, [anvil], 30)
        self.anvil = anvil
        self.rpc = f"http://127.0.0.1:{ANVIL_PORT}"
        self.operator_key = json.loads(config.read_text())["private_keys"][0]
        self.deployment = self.work / "chain.json"
        self.ipsx_cli(
            "chain", "deploy", "--rpc", self.rpc, "--out", str(self.deployment), "--sale-duration", "60",
            timeout=180, extra_env={"IPSX_OPERATOR_KEY": self.operator_key},
        )  # fmt: skip
        record = json.loads(self.deployment.read_text())
        w3 = Web3(Web3.HTTPProvider(self.rpc))
        operator = w3.eth.accounts[0]  # anvil holds its key: it is the deployment's operator
        w3.provider.make_request("evm_increaseTime", [61])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        abi = {name: json.loads((REPO / "contracts" / "artifacts" / f"{name}.json").read_text())["abi"]
               for name in ("TokenSale", "IPSXToken")}  # fmt: skip
        sale = w3.eth.contract(address=record["contracts"]["TokenSale"], abi=abi["TokenSale"])
        token = w3.eth.contract(address=record["contracts"]["IPSXToken"], abi=abi["IPSXToken"])
        w3.eth.wait_for_transaction_receipt(sale.functions.finalize().transact({"from": operator}))
        self.payer_wallet = self.work / "payer.key"
        payer = self.ipsx_cli("wallet", "new", "--out", str(self.payer_wallet)).split()[1]
        self.payer_name = f"pay{secrets.token_hex(4)}"  # a new wallet each benchmark: a new account
        self.ipsx_cli("account", "create", "--address", payer, "--name", self.payer_name)
        match = re.search(r"secret:\s*(\S+)", self.ipsx_cli("key", "create", self.payer_name))
        if match is None:
            raise StartError(f"no secret for {self.payer_name}")
        self.payer_secret = match.group(1)
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_transaction({"from": operator, "to": payer, "value": 10**19})
        )
        w3.eth.wait_for_transaction_receipt(
            token.functions.transfer(payer, PAYER_FUNDS * 10**18).transact({"from": operator})
        )
        self.ipsx_cli(
            "channel", "open", "--key", str(self.payer_wallet), "--rpc", self.rpc,
            "--deployment", str(self.deployment), "--deposit", str(PAYER_FUNDS), timeout=120,
        )  # fmt: skip
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]  # its one confirmation

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.args.redis_url, socket_timeout=10)
        try:
            client.flushdb()
        finally:
            client.close()

    # starting targets
    def start(self, target: str, run: int) -> Running:
        if target == "direct":
            return Running("direct", None)
        if target == "squid":
            return self._start_simple(
                target,
                run,
                ["squid", "-N", "-d", "0", "-f", str(self.refs / "squid.conf")],
                SQUID_PORT,
                "squid",
            )
        if target == "proxypy":
            argv = [str(VENV_BIN / "proxy"), "--hostname", "127.0.0.1", "--port", str(PROXYPY_PORT)]
            return self._start_simple(target, run, argv, PROXYPY_PORT, "proxy.py")
        if target in ("ipsx", "ipsx-ondemand", "ipsx-1w", *MARKET_TARGETS):
            pool = 1 if target == "ipsx-ondemand" else self.args.ipsx_pool
            workers = 1 if target == "ipsx-1w" else self.args.ipsx_workers
            return self._start_ipsx(target, run, pool, workers)
        raise StartError(f"unknown target {target!r}")

    def _start_simple(self, target: str, run: int, argv: list[str], port: int, role: str) -> Running:
        if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
            raise StartError(f"{argv[0]} is not installed (make bench-deps / make setup)")
        if port_open(port):
            raise StartError(f"port {port} is already in use")
        proc = PROCS.start(target, argv, self.log_path(run, target, role))
        running = Running(target, ("127.0.0.1", port), roles={role: proc.pid}, procs=[proc])
        try:
            wait_port(port, [proc], 30)
            wait_live(running, 30)
        except BaseException:
            self.stop(running)
            raise
        return running

    def _start_ipsx(self, target: str, run: int, pool: int, workers: int) -> Running:
        if self.ipsx_setup_error:
            raise StartError(f"IPSX set-up failed: {self.ipsx_setup_error}")
        assert self.ipsx_secret is not None and self.wallet is not None
        for port in (IPSX_HTTP, IPSX_SOCKS, *range(IPSX_TUNNEL, IPSX_TUNNEL + workers)):
            if port_open(port):
                raise StartError(f"port {port} is already in use")
        self.flush_redis()
        ipsx = self.ipsx_command
        env = self.ipsx_env
        market, paid = target in MARKET_TARGETS, target == "ipsx-market-paid"
        auth = f"{self.payer_name}:{self.payer_secret}" if paid else f"bench:{self.ipsx_secret}"
        running = Running(target, ("127.0.0.1", IPSX_HTTP), auth=auth, workers=workers)
        try:
            api = self._start_api(target, run, paid) if market else None
            if api is not None:
                running.procs.append(api)
            gateway = PROCS.start(
                f"{target}-gateway",
                [
                    *ipsx,
                    "gateway",
                    "--http-port",
                    str(IPSX_HTTP),
                    "--socks-port",
                    str(IPSX_SOCKS),
                    "--tunnel-port",
                    str(IPSX_TUNNEL),
                    "--node-id",
                    "bench",
                    "--workers",
                    str(workers),
                    *(["--market"] if market else []),
                ],
                self.log_path(run, target, "gateway"),
                env,
                cwd=self.work,  # not the repository: `python -m` puts the cwd first on sys.path
            )
            running.procs.append(gateway)
            wait_port(IPSX_HTTP, [gateway], 60)  # opened after the tunnel port
            worker = PROCS.start(
                f"{target}-worker", [*ipsx, "worker"], self.log_path(run, target, "worker"), env, self.work
            )
            running.procs.append(worker)
            agent = PROCS.start(
                f"{target}-agent",
                [
                    *ipsx,
                    "provide",
                    "--key",
                    str(self.wallet),
                    "--gateway",
                    f"127.0.0.1:{IPSX_TUNNEL}",
                    "--bind",
                    "127.0.0.2",
                    "--country",
                    "fr",
                    "--allow-private",
                    "--pool-size",
                    str(pool),
                ],
                self.log_path(run, target, "agent"),
                env,
                cwd=self.work,
            )
            # stop order: the agent first, then the gateway (flushes usage), then the worker
            running.procs = [agent, gateway, worker]
            running.roles = {"gateway": gateway.pid, "agent": agent.pid}
            running.info_roles = {"worker": [worker.pid]}
            wait_agent_on_every_worker(agent.pid, workers, 60)
            if api is not None:  # the market, its invoicer, and (paid) the chain side, measured apart
                running.procs.append(api)
                running.info_roles["api"] = [api.pid]
                self._offer_once()
            if paid:
                for role, proc in self._start_payments(target, run).items():
                    running.procs.append(proc)
                    running.info_roles[role] = [proc.pid]
            wait_live(running, 60)
        except BaseException:
            self.stop(running)
            raise
        return running

    def _start_api(self, target: str, run: int, paid: bool) -> subprocess.Popen[bytes]:
        if port_open(IPSX_API):
            raise StartError(f"port {IPSX_API} is already in use")
        argv = [*self.ipsx_command, "api", "--port", str(IPSX_API), *MARKET_API_ARGS]
        extra = {"IPSX_JWT_SECRET": "bench-jwt-secret-" + "0" * 32}
        if paid:
            assert self.deployment is not None
            record = json.loads(self.deployment.read_text())
            argv += ["--channels-address", record["contracts"]["PaymentChannels"],
                     "--chain-id", str(record["chain_id"]), "--unpaid-limit", str(PAYER_FUNDS)]  # fmt: skip
            extra["IPSX_OPERATOR_KEY"] = self.operator_key
        api = PROCS.start(
            f"{target}-api", argv, self.log_path(run, target, "api"), {**self.ipsx_env, **extra}, self.work
        )
        wait_port(IPSX_API, [api], 60)
        return api

    def _offer_once(self) -> None:
        """The provider offers its exit (the market keeps the order across runs)."""
        if self.offered:
            return
        from gateway.agent.settings import load_key
        from ipsx.sdk import Client

        assert self.wallet is not None
        provider = Client.sign_in(f"http://127.0.0.1:{IPSX_API}", load_key(self.wallet, None))
        for exit_info in provider.exits():
            provider.place_offer(
                exit_id=exit_info["exit_id"], price_per_gb=OFFER_PRICE_PER_GB, sharing="shared",
                shared_capacity=10_000,
            )  # fmt: skip
        self.offered = True

    def _start_payments(self, target: str, run: int) -> dict[str, subprocess.Popen[bytes]]:
        """The chain watcher and the paying requester's agent, for the paid target."""
        assert self.deployment is not None and self.payer_wallet is not None
        env = {**self.ipsx_env, "IPSX_OPERATOR_KEY": self.operator_key}
        chain = ["--rpc", self.rpc, "--deployment", str(self.deployment)]
        watch = PROCS.start(
            f"{target}-watch",
            [*self.ipsx_command, "chain", "watch", *chain, "--confirmations", "1", "--poll", "0.5"],
            self.log_path(run, target, "watch"), env, self.work,
        )  # fmt: skip
        pay = PROCS.start(
            f"{target}-pay",
            [*self.ipsx_command, "pay", "--api", f"http://127.0.0.1:{IPSX_API}",
             "--key", str(self.payer_wallet), "--interval", "1",
             "--max-invoice", str(PAYER_FUNDS), "--budget", str(PAYER_FUNDS)],
            self.log_path(run, target, "pay"), self.ipsx_env, self.work,
        )  # fmt: skip
        return {"watch": watch, "pay": pay}

    def stop(self, running: Running) -> None:
        for proc in running.procs:
            PROCS.stop(proc)

    # phases
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
        return {proc.pid for root in roots for proc in _tree(root)}

    def measured(self, running: Running, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
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
        duration = self.args.duration
        env = _child_env({"TARGET": f"http://{ORIGIN}/1k"})
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
            argv, capture_output=True, timeout=self.args.duration + 90, env=_child_env(), check=False
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
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env()
        )
        assert proc.stdin is not None and proc.stdout is not None
        lines = _LineReader(proc.stdout.fileno())
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
            running = self.start(target, run)
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
                record["market"] = self.market_activity()
                log(f"[run {run}] {target}: so far {record['market']}")
        finally:
            self.stop(running)
        return record

    def forget_chain(self) -> None:
        """Forget what an earlier benchmark's chain left in the benchmark's database."""
        import asyncpg

        async def truncate() -> None:
            conn = await asyncpg.connect(self.args.database_url)
            try:
                await conn.execute(
                    "TRUNCATE chain_cursors, chain_logs, invoiced_deals, invoices, channels CASCADE"
                )
            finally:
                await conn.close()

        asyncio.run(truncate())

    def market_activity(self) -> dict[str, int]:
        """Deals, invoices and paid invoices so far: the market and payments did run."""
        import asyncpg

        async def counts() -> dict[str, int]:
            conn = await asyncpg.connect(self.args.database_url)
            try:
                row = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM deals) AS deals,"
                    " (SELECT count(*) FROM deals WHERE state = 'settled') AS settled,"
                    " (SELECT count(*) FROM invoices) AS invoices,"
                    " (SELECT count(*) FROM invoices WHERE state = 'paid') AS paid"
                )
                return {key: int(row[key]) for key in ("deals", "settled", "invoices", "paid")}
            finally:
                await conn.close()

        return asyncio.run(counts())


class _LineReader:
    """Lines from a child's stdout, each wait bounded (no threads: select on the pipe)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False

    def _line(self, deadline: float) -> str | None:
        while b"\n" not in self._buffer:
            if self._eof:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode(errors="replace")
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("timed out waiting for the load generator")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                self._eof = not chunk
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def expect(self, word: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if line is None:
                raise RuntimeError(f"load generator ended before {word}")
            if line.startswith(word + " "):
                return dict(json.loads(line[len(word) + 1 :]))
            if line.startswith("{"):
                raise RuntimeError(f"load generator ended before {word}: {line[:300]}")

    def last_json(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while True:
            line = self._line(deadline)
            if line is None:
                return last
            if line.startswith("{"):
                last = dict(json.loads(line))


# parsing and reporting
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk time {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if m := re.search(r"Requests/sec:\s*([\d.]+)", output):
        result["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+),", output):
        result["requests"] = int(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE):
            result[f"p{pct}_ms"] = _ms(m.group(1))
    errors: dict[str, int] = {}
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        for name, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            if int(value):
                errors[name] = int(value)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors["non_2xx"] = int(m.group(1))
    result["errors"] = errors
    if "rps" not in result or "requests" not in result:
        raise ValueError(f"could not parse wrk output: {output[-300:]!r}")
    return result


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


def describe(name: str, phase: dict[str, Any]) -> str:
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


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(summary: dict[str, Any], targets: list[str], runs: int) -> str:
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


def describe_code(code: dict[str, Any]) -> str:
    if not code:
        return "n/a"
    text = f"{code.get('mode')}: commit {code.get('commit', '')[:10]} ({code.get('subject', '')})"
    if code.get("uncommitted"):
        text += f" + {len(code['uncommitted'])} uncommitted file(s)"
    return text


def machine() -> dict[str, Any]:
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
        "gateway --workers 1, the baseline of the multi-process scaling figure)",
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
    bench = Bench(args, work, logs, refs, targets=targets)
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
                bench.pin_ipsx_code()
            except (StartError, OSError, subprocess.SubprocessError) as error:
                bench.ipsx_setup_error = f"cannot pin the IPSX code: {error}"
            meta["ipsx_code"] = bench.ipsx_code
            code = bench.ipsx_code
            log(f"IPSX code measured: {describe_code(code)}")
            bench.setup_ipsx()
            if bench.ipsx_setup_error:
                log(f"IPSX set-up FAILED: {bench.ipsx_setup_error}")
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
