"""Ports a service cannot listen on: one error, in one line, for every listener of every command.

Each listener whose address a command line sets (the gateway's proxy, SOCKS5, tunnel, reseller
and metrics ports, the API's port, the worker's metrics port, the demo's ports, the devchain's
and the inspecting port) is bound inside :func:`listening`, which turns the OSError of a failed
bind (a port in use, one below 1024 without the right to it, an address this host does not have,
a host name that does not resolve) into a :class:`ListenError` naming the option that chose the
port. The commands print it as one line (``ipsx.commands.run_service``) instead of a traceback.

Plain process plumbing, like :mod:`ipsx.logs`: the service packages import it, it imports none
of them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
from collections.abc import Iterator

PRIVILEGED_BELOW = 1024  # Linux's default net.ipv4.ip_unprivileged_port_start

# What to do about the usual causes of a failed bind.
_HINTS = {
    errno.EADDRINUSE: "another process listens there (`ss -ltnp` shows which): stop it or pick another port",
    errno.EADDRNOTAVAIL: "this host has no such address (`ip addr` lists its addresses)",
}


class ListenError(OSError):
    """``host:port``, set by the command-line ``option`` (``--http-port``), cannot be listened on;
    ``os_error`` is what the bind raised, and the errno is its errno. ``str()`` is the line to
    show: the address, the option, the reason and, for the usual causes, what to do."""

    def __init__(self, option: str, host: str, port: int, os_error: OSError) -> None:
        super().__init__(os_error.errno, _reason(os_error))
        self.option = option
        self.host = host
        self.port = port
        self.os_error = os_error

    def __str__(self) -> str:
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        line = f"cannot listen on {address} ({self.option}): {self.strerror}"
        hint = _HINTS.get(self.errno or 0)
        if self.errno == errno.EACCES and 0 < self.port < PRIVILEGED_BELOW:
            hint = f"ports below {PRIVILEGED_BELOW} need root or the CAP_NET_BIND_SERVICE capability"
        return f"{line}; {hint}" if hint else line


def _reason(error: OSError) -> str:
    """The system's words for ``error``: asyncio's bind errors carry the address and errno in a
    message of their own, a resolver error (``gaierror``) a negative errno of its own."""
    if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


@contextlib.contextmanager
def listening(option: str, host: str, port: int) -> Iterator[None]:
    """Raises ListenError for ``option`` at ``host:port`` when the bind inside fails. Put only the
    bind inside: any OSError there is taken for the bind's (a certificate file read inside would
    be reported as the port)."""
    try:
        yield
    except ListenError:
        raise
    except OSError as error:
        raise ListenError(option, host, port, error) from error


def check_free(option: str, host: str, port: int) -> None:
    """Raises ListenError unless ``host:port`` could be listened on now (port 0 always can): a
    check before a slow start. The port may still be taken before the real bind, which then
    raises the same error."""
    if port == 0:
        return
    with listening(option, host, port):
        probe_bind(host, port)


def probe_bind(host: str, port: int) -> None:
    """Bind ``host:port`` as the servers do, then let it go; raises the bind's OSError. With
    SO_REUSEADDR, as theirs: a port whose old connections are in TIME_WAIT is free, one a
    socket listens on is not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535, or 0 for any free port."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text[:40]!r}")
    return value
