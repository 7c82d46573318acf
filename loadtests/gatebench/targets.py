"""What the load goes to: the nginx origin, and each target started and stopped in turn.

Targets are ``direct`` (no proxy), squid, proxy.py, and IPSX as in production: gateway, usage
worker and provider agent, plus for the market targets the API (whose market takes the
provider's offer) and, for the paying one, the chain watcher and the requester's ``ipsx pay``.
A started target is a :class:`Running`: where to send requests and which processes to measure.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .constants import (
    IPSX_API,
    IPSX_HTTP,
    IPSX_SOCKS,
    IPSX_TUNNEL,
    MARKET_API_ARGS,
    MARKET_TARGETS,
    OFFER_PRICE_PER_GB,
    ONE_K,
    ORIGIN,
    ORIGIN_HOST,
    ORIGIN_PORT,
    PAYER_FUNDS,
    PROXYPY_PORT,
    SQUID_PORT,
    TEN_M,
    VENV_BIN,
)
from .ipsx_setup import IpsxSetup
from .procs import PROCS, StartError, child_env, port_open, wait_port


def start_origin(work: Path, logs: Path) -> subprocess.Popen[bytes]:
    """nginx serving /1k and /10m (random bytes) on :data:`ORIGIN`, with its files and config in
    ``work``, checked by fetching both; raises :class:`StartError` if it does not come up."""
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
    open_file_cache max=16 inactive=1h;  # no open/fstat/close per request
    open_file_cache_valid 1h;
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
        location = /1k {{ sendfile off; }}  # one writev for head and body, no cork/uncork
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
        done = subprocess.run(argv, capture_output=True, timeout=10, env=child_env(), check=False)
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
class Launcher:
    """Starts each target in turn, by name, and stops it; the IPSX targets from ``ipsx``'s set-up."""

    args: argparse.Namespace
    logs: Path
    refs: Path
    ipsx: IpsxSetup
    offered: bool = False  # the provider's offer is placed once, on the first market run

    def log_path(self, run: int, target: str, role: str) -> Path:
        return self.logs / f"run{run}-{target}-{role}.log"

    def start(self, target: str, run: int) -> Running:
        """Start ``target`` and wait until requests and tunnels go through it; raises
        :class:`StartError` (after stopping what it started) if it does not come up."""
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
        if target in ("ipsx", "ipsx-ondemand", "ipsx-1w", "ipsx-ws", "ipsx-noreuse", *MARKET_TARGETS):
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
        if self.ipsx.setup_error:
            raise StartError(f"IPSX set-up failed: {self.ipsx.setup_error}")
        assert self.ipsx.secret is not None and self.ipsx.wallet is not None
        for port in (IPSX_HTTP, IPSX_SOCKS, *range(IPSX_TUNNEL, IPSX_TUNNEL + workers)):
            if port_open(port):
                raise StartError(f"port {port} is already in use")
        self.ipsx.flush_redis()
        cli = self.ipsx.command
        env = self.ipsx.env
        market, paid = target in MARKET_TARGETS, target == "ipsx-market-paid"
        auth = f"{self.ipsx.payer_name}:{self.ipsx.payer_secret}" if paid else f"bench:{self.ipsx.secret}"
        running = Running(target, ("127.0.0.1", IPSX_HTTP), auth=auth, workers=workers)
        try:
            api = self._start_api(target, run, paid) if market else None
            if api is not None:
                running.procs.append(api)
            gateway = PROCS.start(
                f"{target}-gateway",
                [
                    *cli,
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
                cwd=self.ipsx.work,  # not the repository: `python -m` puts the cwd first on sys.path
            )
            running.procs.append(gateway)
            wait_port(IPSX_HTTP, [gateway], 60)  # opened after the tunnel port
            worker = PROCS.start(
                f"{target}-worker",
                [*cli, "worker"],
                self.log_path(run, target, "worker"),
                env,
                self.ipsx.work,
            )
            running.procs.append(worker)
            agent = PROCS.start(
                f"{target}-agent",
                [
                    *cli,
                    "provide",
                    "--key",
                    str(self.ipsx.wallet),
                    "--gateway",
                    f"{'ws://' if target == 'ipsx-ws' else ''}127.0.0.1:{IPSX_TUNNEL}",
                    "--bind",
                    "127.0.0.2",
                    "--country",
                    "fr",
                    "--allow-private",
                    "--pool-size",
                    str(pool),
                    *(["--no-reuse"] if target == "ipsx-noreuse" else []),
                ],
                self.log_path(run, target, "agent"),
                env,
                cwd=self.ipsx.work,
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
        argv = [*self.ipsx.command, "api", "--port", str(IPSX_API), *MARKET_API_ARGS]
        extra = {"IPSX_JWT_SECRET": "bench-jwt-secret-" + "0" * 32}
        if paid:
            assert self.ipsx.deployment is not None
            record = json.loads(self.ipsx.deployment.read_text())
            argv += ["--channels-address", record["contracts"]["PaymentChannels"],
                     "--chain-id", str(record["chain_id"]), "--unpaid-limit", str(PAYER_FUNDS)]  # fmt: skip
            extra["IPSX_OPERATOR_KEY"] = self.ipsx.operator_key
        api = PROCS.start(
            f"{target}-api",
            argv,
            self.log_path(run, target, "api"),
            {**self.ipsx.env, **extra},
            self.ipsx.work,
        )
        wait_port(IPSX_API, [api], 60)
        return api

    def _offer_once(self) -> None:
        """The provider offers its exit (the market keeps the order across runs)."""
        if self.offered:
            return
        from gateway.agent.settings import load_key
        from ipsx.sdk import Client

        assert self.ipsx.wallet is not None
        provider = Client.sign_in(f"http://127.0.0.1:{IPSX_API}", load_key(self.ipsx.wallet, None))
        for exit_info in provider.exits():
            provider.place_offer(
                exit_id=exit_info["exit_id"], price_per_gb=OFFER_PRICE_PER_GB, sharing="shared",
                shared_capacity=10_000,
            )  # fmt: skip
        self.offered = True

    def _start_payments(self, target: str, run: int) -> dict[str, subprocess.Popen[bytes]]:
        """The chain watcher and the paying requester's agent, for the paid target."""
        assert self.ipsx.deployment is not None and self.ipsx.payer_wallet is not None
        env = {**self.ipsx.env, "IPSX_OPERATOR_KEY": self.ipsx.operator_key}
        chain = ["--rpc", self.ipsx.rpc, "--deployment", str(self.ipsx.deployment)]
        watch = PROCS.start(
            f"{target}-watch",
            [*self.ipsx.command, "chain", "watch", *chain, "--confirmations", "1", "--poll", "0.5"],
            self.log_path(run, target, "watch"), env, self.ipsx.work,
        )  # fmt: skip
        pay = PROCS.start(
            f"{target}-pay",
            [*self.ipsx.command, "pay", "--api", f"http://127.0.0.1:{IPSX_API}",
             "--key", str(self.ipsx.payer_wallet), "--interval", "1",
             "--max-invoice", str(PAYER_FUNDS), "--budget", str(PAYER_FUNDS)],
            self.log_path(run, target, "pay"), self.ipsx.env, self.ipsx.work,
        )  # fmt: skip
        return {"watch": watch, "pay": pay}

    def stop(self, running: Running) -> None:
        """Stop the target's processes by PID, in the order of ``running.procs``."""
        for proc in running.procs:
            PROCS.stop(proc)
