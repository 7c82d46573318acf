"""``ipsx gateway --workers N``: N gateway processes on one host, kept running by a parent.

The workers share the requester ports through SO_REUSEPORT, so the kernel spreads new client
connections over them and the node uses every core; each worker is its own gateway node (own
tunnel port, own entry in the node registry), and agents keep a tunnel to each one. The parent
only supervises: it restarts a worker that dies and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from gateway.server import run_gateway
from gateway.settings import GatewaySettings
from ipsx import runtime

log = logging.getLogger("ipsx.supervisor")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again
STOP_GRACE = 10.0  # seconds beyond the workers' own drain timeout before they are killed


def worker_settings(settings: GatewaySettings, workers: int) -> list[GatewaySettings]:
    """One node's settings per worker: ``NODE-i`` with its tunnel port at ``tunnel_port + i`` (and
    its metrics port, if any, at ``metrics_port + i``)."""
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    if workers > 1 and 0 in (settings.http_port, settings.socks_port, settings.tunnel_port):
        raise ValueError("--workers above 1 needs fixed ports (port 0 cannot be shared)")
    if settings.tunnel_port + workers - 1 > 65535:
        raise ValueError("the workers' tunnel ports would pass 65535")
    metrics = settings.metrics_port
    if metrics is not None and ((metrics == 0 and workers > 1) or metrics + workers - 1 > 65535):
        raise ValueError("the workers' metrics ports need a fixed first port and must stay under 65536")
    return [
        replace(
            settings,
            node_id=f"{settings.node_id}-{index}",
            tunnel_port=settings.tunnel_port + index,
            metrics_port=None if metrics is None else metrics + index,
            reuse_port=True,
        )
        for index in range(workers)
    ]


def _worker_main(settings: GatewaySettings, verbose: bool) -> None:
    runtime.setup_logging(verbose)
    runtime.run(lambda stop: run_gateway(settings, stop))


def run_workers(all_settings: list[GatewaySettings], *, verbose: bool = False) -> int:
    """Run one process per settings until SIGINT/SIGTERM; returns the exit status."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(settings: GatewaySettings) -> BaseProcess:
        process = context.Process(
            target=_worker_main, args=(settings, verbose), name=f"ipsx-gateway-{settings.node_id}"
        )
        process.start()
        log.info(
            "worker %s started (pid %s, tunnel port %d)", settings.node_id, process.pid, settings.tunnel_port
        )
        return process

    processes = [start(settings) for settings in all_settings]
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in processes], timeout=0.5)
            for index, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                settings = all_settings[index]
                log.error(
                    "worker %s exited with status %s; restarting it", settings.node_id, process.exitcode
                )
                time.sleep(RESTART_DELAY)
                processes[index] = start(settings)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()
        deadline = time.monotonic() + max(s.drain_timeout for s in all_settings) + STOP_GRACE
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not stop in time; killing it", process.name)
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
