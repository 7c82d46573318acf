"""``ipsx gateway --workers N``: N gateway processes on one host, kept running by a parent.

The workers share the requester ports through SO_REUSEPORT, so the kernel spreads new client
connections over them and the node uses every core; each worker is its own gateway node (own
tunnel port, own entry in the node registry), and agents keep a tunnel to each one. The parent
only supervises: it restarts a worker that dies (backing off, and giving up with a non-zero
status when one keeps failing at startup) and stops them all on SIGINT/SIGTERM. A worker stops
by itself when the parent dies, even by SIGKILL, rather than live on as an unsupervised orphan.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from types import FrameType

from gateway.server import run_gateway
from gateway.settings import SECONDS, GatewaySettings
from ipsx import runtime

log = logging.getLogger("ipsx.supervisor")

STOP_GRACE = 10 * SECONDS  # beyond the workers' own drain timeout before they are killed


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


WorkerMain = Callable[[GatewaySettings], None]


def serve_gateway(settings: GatewaySettings) -> None:
    """What a worker process runs: one gateway node until SIGINT/SIGTERM."""
    runtime.run(lambda stop: run_gateway(settings, stop))


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a dead worker is started again, and when the supervisor stops trying.

    A worker that dies within ``quick_exit`` of its start failed at startup (a missing service, a
    taken port): such failures in a row double the delay before the next start, up to
    ``max_delay``, and the ``give_up_after``-th ends the supervisor with a non-zero status.
    """

    delay: float = 1 * SECONDS
    max_delay: float = 30 * SECONDS
    quick_exit: float = 10 * SECONDS
    give_up_after: int = 5

    def next_delay(self, quick_failures: int) -> float:
        return float(min(self.delay * 2 ** max(0, quick_failures - 1), self.max_delay))


def _exit_with_parent(grace: float) -> None:
    """Stop this worker when its supervisor dies, however it dies (SIGKILL included): SIGTERM,
    so that the node drains and withdraws, then SIGKILL if it is still there ``grace`` seconds
    later. Otherwise an orphan would keep serving, and holding the shared ports, unsupervised."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        # The sentinel is a pipe the parent holds open: it reads EOF once the parent is gone,
        # including when it died before this thread started.
        multiprocessing.connection.wait([parent.sentinel])
        log.warning("the supervisor (pid %s) is gone; stopping", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ipsx-parent-watch", daemon=True).start()


def _worker_process(main: WorkerMain, settings: GatewaySettings, verbose: bool) -> None:
    runtime.setup_logging(verbose)
    _exit_with_parent(settings.drain_timeout + STOP_GRACE)
    main(settings)


class _Worker:
    """One worker slot: its settings, its current process and its run of quick failures."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.process: BaseProcess | None = None
        self.started = 0.0
        self.quick_failures = 0
        self.restart_at: float | None = None  # monotonic time of the next start, while it is dead


def run_workers(
    all_settings: list[GatewaySettings],
    *,
    verbose: bool = False,
    restarts: RestartPolicy = RestartPolicy(),
    main: WorkerMain = serve_gateway,
) -> int:
    """Run ``main(settings)`` in one process per settings until SIGINT/SIGTERM, restarting the
    ones that die. Returns the exit status: 0 once stopped by a signal, 1 when a worker failed
    ``restarts.give_up_after`` times in a row at startup. ``main`` must be importable by name
    (the workers are spawned)."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(worker: _Worker) -> None:
        settings = worker.settings
        process = context.Process(
            target=_worker_process, args=(main, settings, verbose), name=f"ipsx-gateway-{settings.node_id}"
        )
        process.start()
        worker.process, worker.started, worker.restart_at = process, time.monotonic(), None
        log.info(
            "worker %s started (pid %s, tunnel port %d)", settings.node_id, process.pid, settings.tunnel_port
        )

    def died(worker: _Worker, exitcode: int | None) -> bool:
        """Schedules the worker's restart; False when it failed too often to try again."""
        now = time.monotonic()
        quick = now - worker.started < restarts.quick_exit
        worker.quick_failures = worker.quick_failures + 1 if quick else 0
        name = worker.settings.node_id
        if worker.quick_failures >= restarts.give_up_after:
            log.error(
                "worker %s exited with status %s: %d failures in a row within %.0f s of starting; "
                "giving up, stopping all workers",
                name,
                exitcode,
                worker.quick_failures,
                restarts.quick_exit,
            )
            return False
        delay = restarts.next_delay(worker.quick_failures)
        log.error("worker %s exited with status %s; restarting it in %.1f s", name, exitcode, delay)
        worker.restart_at = now + delay
        return True

    workers = [_Worker(settings) for settings in all_settings]
    status = 0
    try:
        for worker in workers:
            start(worker)
        while not stopping:
            pending = [w.restart_at for w in workers if w.restart_at is not None]
            timeout = max(0.0, min([0.5, *(at - time.monotonic() for at in pending)]))
            multiprocessing.connection.wait(
                [w.process.sentinel for w in workers if w.process is not None], timeout=timeout
            )
            for worker in workers:
                if stopping:
                    break
                if worker.process is not None and not worker.process.is_alive():
                    exitcode, worker.process = worker.process.exitcode, None
                    if not died(worker, exitcode):
                        status, stopping = 1, True
                elif worker.restart_at is not None and worker.restart_at <= time.monotonic():
                    start(worker)
    finally:
        processes = [w.process for w in workers if w.process is not None]
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
    return status
