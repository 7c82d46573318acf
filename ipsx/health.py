"""``ipsx health``: is a service up? For container health checks and load balancers' scripts.

tcp://HOST:PORT          something accepts connections there (the gateway's proxy ports)
http://HOST:PORT/PATH    a GET answers 2xx (the API's /readyz)
"""

from __future__ import annotations

import http.client
import socket
import sys
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 3.0


class HealthError(Exception):
    """The target is not healthy; the message says why."""


def check(target: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """A one-line report on ``target`` if it is healthy; raises HealthError otherwise, or
    ValueError when ``target`` is not a tcp:// or http:// URL with a host and port."""
    parts = urlsplit(target)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {target!r}") from None
    if parts.scheme not in ("tcp", "http") or not parts.hostname or port is None:
        raise ValueError(f"expected tcp://HOST:PORT or http://HOST:PORT/PATH, got {target!r}")
    host = parts.hostname
    if parts.scheme == "tcp":
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return f"{host}:{port} accepts connections"
        except OSError as exc:
            raise HealthError(f"{host}:{port}: {exc.strerror or type(exc).__name__}") from None
    path = parts.path or "/"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path + (f"?{parts.query}" if parts.query else ""))
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        raise HealthError(f"{host}:{port}{path}: {type(exc).__name__}") from None
    finally:
        conn.close()
    if not 200 <= status < 300:
        raise HealthError(f"{host}:{port}{path} answered {status}")
    return f"{host}:{port}{path} answered {status}"


def run(target: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """``ipsx health``: print the report; 0 if healthy, 1 if not, 2 if ``target`` is malformed."""
    try:
        print(check(target, timeout))
    except ValueError as error:
        print(f"ipsx health: {error}", file=sys.stderr)
        return 2
    except HealthError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    return 0
