"""The processes this benchmark starts: each one started in its own session with a log file and
stopped by its PID (children included), the ports they listen on, :class:`StartError` for a
target that does not come up, and the timestamped console log.

:data:`PROCS` holds every live process, so that whatever happens all of them are stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from .constants import REPO


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
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
                env=child_env(env),
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
