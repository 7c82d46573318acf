"""Tunnel load generator for the side-by-side proxy benchmark (asyncio + uvloop, raw sockets).

The same generator drives every target, so the figures differ only by the proxy in between.

Modes:

``tunnels``
    ``--concurrency`` clients (default 64), each in a loop: connect to the proxy, ``CONNECT`` to the
    origin, one ``GET`` of ``--path`` (default /1k) through the tunnel, read the whole response,
    close. With ``--direct`` the client connects straight to the origin (connect → GET → close),
    the baseline. Reports tunnels/s and the p50/p99 of the per-tunnel time (connect to last byte).
``bulk``
    ``--concurrency`` tunnels (default 8 here) each downloading ``--path`` (default /10m) again and
    again with keep-alive through the tunnel. Reports MB/s summed (1 MB = 10^6 bytes).
``idle``
    Opens ``--concurrency`` tunnels and closes them (warm-up), prints ``WARM``, waits for a line on
    stdin, opens ``--count`` tunnels and keeps them open without sending a byte, prints
    ``READY <json>``, waits for another line on stdin (or ``--hold`` seconds), closes everything.
    The benchmark reads the proxy's RSS at ``WARM`` and at ``READY``.

Every mode prints one JSON object on its last stdout line. Every wait is bounded: each tunnel has
``--timeout``, each load mode stops starting new work after ``--duration`` and gives up on
whatever is still running ``--grace`` seconds later.

Example::

    python loadtests/tunnel_load.py --mode tunnels --proxy 127.0.0.1:13128 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import json
import math
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_ERROR_PAUSE = 0.005  # after a failed tunnel, so a refusing target does not turn into a busy loop


class LoadError(Exception):
    """A tunnel that did not go as expected; ``kind`` is the counter it is reported under."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Config:
    address: tuple[str, int]  # where the client connects: the proxy, or the origin with --direct
    origin: str  # host:port of the origin, for CONNECT and Host
    path: str
    direct: bool
    auth: str | None  # "user:password" for Proxy-Authorization: Basic
    timeout: float

    @property
    def connect_request(self) -> bytes:
        lines = [f"CONNECT {self.origin} HTTP/1.1", f"Host: {self.origin}"]
        if self.auth:
            token = base64.b64encode(self.auth.encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @property
    def get_request(self) -> bytes:
        head = f"GET {self.path} HTTP/1.1\r\nHost: {self.origin}\r\nUser-Agent: ipsx-tunnel-load\r\n\r\n"
        return head.encode()


@dataclass(slots=True)
class Stats:
    ok: int = 0
    bytes: int = 0
    durations: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def fail(self, error: BaseException) -> None:
        kind, detail = classify(error)
        self.errors[kind] += 1
        self.samples.setdefault(kind, detail[:200])


def classify(error: BaseException) -> tuple[str, str]:
    if isinstance(error, LoadError):
        return error.kind, str(error)
    if isinstance(error, TimeoutError):
        return "timeout", "no answer within --timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused", str(error)
    if isinstance(error, ConnectionResetError):
        return "reset", str(error)
    if isinstance(error, BrokenPipeError):
        return "broken_pipe", str(error)
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, f"errno_{error.errno}"), str(error)
    return type(error).__name__, str(error)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


# socket helpers
async def open_socket(loop: asyncio.AbstractEventLoop, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def read_head(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and the bytes read past the head."""
    data = b""
    while True:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise LoadError("closed_early", f"connection closed after {len(data)} bytes of response head")
        data += chunk
        end = data.find(_HEAD_END)
        if end >= 0:
            break
        if len(data) > _MAX_HEAD:
            raise LoadError("bad_response", "response head too long")
    head, rest = data[:end].decode("latin-1"), data[end + 4 :]
    status_line, *lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise LoadError("bad_response", f"bad status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


async def establish(loop: asyncio.AbstractEventLoop, cfg: Config) -> socket.socket:
    """A connected socket ready for the origin's HTTP: through a CONNECT tunnel unless direct."""
    sock = await open_socket(loop, cfg.address)
    if cfg.direct:
        return sock
    try:
        await loop.sock_sendall(sock, cfg.connect_request)
        status, _, rest = await read_head(loop, sock)
        if status != 200:
            raise LoadError(f"connect_{status}", f"CONNECT answered {status}")
        if rest:
            raise LoadError("bad_response", "bytes after the CONNECT answer before any request")
    except BaseException:
        sock.close()
        raise
    return sock


async def get(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    cfg: Config,
    buffer: memoryview,
    deadline: float = 0.0,
) -> tuple[int, bool]:
    """One GET on ``sock``; returns (bytes received, whether the server keeps the connection).

    With ``deadline`` > 0, stops reading the body once the deadline has passed (bulk mode) and
    returns the bytes received so far with keep-alive False.
    """
    await loop.sock_sendall(sock, cfg.get_request)
    status, headers, rest = await read_head(loop, sock)
    if status != 200:
        raise LoadError(f"http_{status}", f"GET answered {status}")
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        raise LoadError("bad_response", "no Content-Length in the origin's answer")
    received = len(rest)
    remaining = int(length) - received
    while remaining > 0:
        n = await loop.sock_recv_into(sock, buffer)
        if n == 0:
            raise LoadError("closed_early", f"connection closed with {remaining} body bytes missing")
        received += n
        remaining -= n
        if deadline and time.monotonic() >= deadline:
            return received, False
    if remaining < 0:
        raise LoadError("bad_response", "more body bytes than Content-Length")
    return received, headers.get("connection", "").lower() != "close"


# modes
async def tunnel_worker(cfg: Config, stats: Stats, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    buffer = memoryview(bytearray(65536))
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.timeout):
                sock = await establish(loop, cfg)
                try:
                    received, _ = await get(loop, sock, cfg, buffer)
                finally:
                    sock.close()
        except (OSError, LoadError, TimeoutError, ValueError) as error:
            stats.fail(error)
            await asyncio.sleep(_ERROR_PAUSE)
            continue
        stats.durations.append(time.perf_counter() - started)
        stats.ok += 1
        stats.bytes += received


async def bulk_worker(cfg: Config, stats: Stats, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    buffer = memoryview(bytearray(1024 * 1024))
    sock: socket.socket | None = None
    try:
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(cfg.timeout):
                    if sock is None:
                        sock = await establish(loop, cfg)
                    started = time.perf_counter()
                    received, keep = await get(loop, sock, cfg, buffer, deadline)
            except (OSError, LoadError, TimeoutError, ValueError) as error:
                stats.fail(error)
                if sock is not None:
                    sock.close()
                    sock = None
                await asyncio.sleep(_ERROR_PAUSE)
                continue
            stats.bytes += received
            if time.monotonic() < deadline:
                stats.ok += 1  # complete downloads
                stats.durations.append(time.perf_counter() - started)
            if not keep and sock is not None:
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


async def run_load(
    mode: str, cfg: Config, concurrency: int, duration: float, grace: float
) -> dict[str, object]:
    stats = Stats()
    worker = tunnel_worker if mode == "tunnels" else bulk_worker
    started = time.monotonic()
    deadline = started + duration
    tasks = [asyncio.create_task(worker(cfg, stats, deadline)) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=duration + grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        stats.errors["unfinished_at_grace"] += len(pending)
    elapsed = time.monotonic() - started
    p50, p99 = percentile(stats.durations, 0.50), percentile(stats.durations, 0.99)
    return {
        "mode": mode,
        "concurrency": concurrency,
        "duration": duration,
        "elapsed": round(elapsed, 3),
        "ok": stats.ok,
        "rate": stats.ok / elapsed if elapsed > 0 else 0.0,
        "bytes": stats.bytes,
        "mb_per_s": stats.bytes / elapsed / 1e6 if elapsed > 0 else 0.0,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "errors": dict(stats.errors),
        "error_samples": stats.samples,
    }


async def _read_stdin_line(wait: float) -> str | None:
    """The next line from the parent ("" at end of input), or None after ``wait`` seconds."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    done: asyncio.Future[str] = loop.create_future()
    data = bytearray()

    def readable() -> None:
        chunk = os.read(fd, 4096)
        data.extend(chunk)
        if (not chunk or b"\n" in data) and not done.done():
            done.set_result(data.decode(errors="replace"))

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(wait):
            return await done
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)


async def _open_many(cfg: Config, count: int, concurrency: int, stats: Stats) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            try:
                async with asyncio.timeout(cfg.timeout):
                    socks.append(await establish(loop, cfg))
            except (OSError, LoadError, TimeoutError, ValueError) as error:
                stats.fail(error)

    await asyncio.gather(*(one() for _ in range(count)))
    return socks


async def run_idle(cfg: Config, count: int, concurrency: int, hold: float) -> dict[str, object]:
    warm = Stats()
    for sock in await _open_many(cfg, concurrency, concurrency, warm):
        sock.close()
    print(
        f"WARM {json.dumps({'ok': concurrency - warm.errors.total(), 'errors': dict(warm.errors)})}",
        flush=True,
    )
    if await _read_stdin_line(hold) is None:
        return {"mode": "idle", "ok": 0, "errors": {"no_go_from_parent": 1}, "error_samples": {}}
    stats = Stats()
    started = time.monotonic()
    socks = await _open_many(cfg, count, concurrency, stats)
    opened_in = time.monotonic() - started
    stats.ok = len(socks)
    ready = {"ok": stats.ok, "errors": dict(stats.errors), "open_seconds": round(opened_in, 3)}
    print(f"READY {json.dumps(ready)}", flush=True)
    try:
        await _read_stdin_line(hold)
        # Were the tunnels still open while held? A peer that closed shows up as readable EOF.
        closed = 0
        for sock in socks:
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
    finally:
        for sock in socks:
            sock.close()
    return {
        "mode": "idle",
        "count": count,
        "ok": stats.ok,
        "closed_while_held": closed,
        "open_seconds": round(opened_in, 3),
        "errors": dict(stats.errors),
        "error_samples": stats.samples,
    }


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog="See the module docstring (or loadtests/README.md) for what each mode measures.",
    )
    parser.add_argument("--mode", choices=["tunnels", "bulk", "idle"], default="tunnels")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--proxy", type=parse_address, help="HTTP proxy HOST:PORT to CONNECT through")
    where.add_argument("--direct", action="store_true", help="connect straight to the origin (baseline)")
    parser.add_argument("--origin", default="127.0.0.1:18080", help="origin HOST:PORT (default: %(default)s)")
    parser.add_argument("--path", help="path to GET (default: /1k, or /10m in bulk mode)")
    parser.add_argument("--auth", help="USER:PASSWORD sent as Proxy-Authorization: Basic")
    parser.add_argument("--concurrency", type=int, help="concurrent clients (default: 64, or 8 in bulk mode)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="per tunnel / per download (default: %(default)s)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="seconds after --duration before giving up (default: %(default)s)",
    )
    parser.add_argument(
        "--count", type=int, default=1000, help="idle mode: tunnels held (default: %(default)s)"
    )
    parser.add_argument("--hold", type=float, default=120.0, help="idle mode: longest wait for the parent")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    bulk = args.mode == "bulk"
    path = args.path or ("/10m" if bulk else "/1k")
    concurrency = args.concurrency or (8 if bulk else 64)
    origin_address = parse_address(args.origin)
    cfg = Config(
        address=origin_address if args.direct else args.proxy,
        origin=args.origin,
        path=path,
        direct=args.direct,
        auth=args.auth,
        timeout=args.timeout,
    )
    if args.mode == "idle":
        coro = run_idle(cfg, args.count, concurrency, args.hold)
    else:
        coro = run_load(args.mode, cfg, concurrency, args.duration, args.grace)
    runner = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    result = runner(coro)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
