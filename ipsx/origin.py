"""A small web origin for the demo and the tests: it shows which exit a request came from.

Built on the standard library's ``http.server`` (not on the gateway's own HTTP code), so a test
that goes through the gateway to it checks our parser against an independent implementation.

    GET  /ip              the client's source address (the exit's bind address)
    GET  /bytes/N         N bytes, with Content-Length
    GET  /chunked/N       N bytes, chunked
    GET  /slow/N          N bytes in 64 KiB pieces, 20 ms apart (for mid-stream failures)
    GET  /status/NNN      an empty response with that status
    GET  /early           "ok" after a 103 Early Hints interim response
    GET  /deny/ADDR/…     403 to a client from ADDR, the client's address to any other
    GET  /guard/N/SITE/…  a site that bans each source address after N requests: the first N
                          from an address get 200 and the address, every later one 403
    GET  /headers         the request's headers, one per line
    POST /echo            the request body back (Content-Length or chunked request)
    PUT  /…               the same, but 403 on /deny/ADDR/… to a client from ADDR
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_MAX_BYTES = 1 << 31
_PIECE = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ipsx-origin"

    def setup(self) -> None:
        self.server.accepted.add()  # type: ignore[attr-defined]
        super().setup()
        # A response is written as head then body: without this, Nagle holds the body back
        # until the head is acknowledged, which a kept-alive peer delays by up to 40 ms.
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _size(self, prefix: str) -> int | None:
        text = self.path[len(prefix) :].split("?", 1)[0]
        if not text.isdigit() or int(text) > _MAX_BYTES:
            self._send(400, b"bad size\n")
            return None
        return int(text)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path
        if path.startswith("/ip"):
            self._send(200, self.client_address[0].encode())
        elif path.startswith("/bytes/"):
            size = self._size("/bytes/")
            if size is None:
                return
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                self._stream(size, delay=0.0)
        elif path.startswith("/chunked/"):
            size = self._size("/chunked/")
            if size is None:
                return
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < size:
                piece = min(_PIECE, size - sent)
                self.wfile.write(b"%x\r\n" % piece + b"x" * piece + b"\r\n")
                sent += piece
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/slow/"):
            size = self._size("/slow/")
            if size is None:
                return
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self._stream(size, delay=0.02)
        elif path.startswith("/status/") and path[8:11].isdigit():
            self._send(int(path[8:11]), b"")
        elif path.startswith("/early"):  # a 103 Early Hints head before the final response
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            self._send(200, b"ok")
        elif path.startswith("/deny/"):
            source = self.client_address[0]
            denied = path.split("/")[2]
            self._send(403 if source == denied else 200, source.encode())
        elif path.startswith("/guard/"):
            self._guard(path)
        elif path.startswith("/headers"):
            body = "".join(f"{name}: {value}\n" for name, value in self.headers.items()).encode()
            self._send(200, body)
        else:
            self._send(404, b"not found\n")

    def _guard(self, path: str) -> None:
        parts = path.split("/")
        if len(parts) < 4 or not parts[2].isascii() or not parts[2].isdigit():
            self._send(400, b"expected /guard/N/SITE\n")
            return
        source = self.client_address[0]
        seen = self.server.guard.count((parts[3], source))  # type: ignore[attr-defined]
        self._send(200 if seen <= int(parts[2]) else 403, source.encode())

    def _stream(self, size: int, *, delay: float) -> None:
        block = b"x" * _PIECE
        sent = 0
        while sent < size:
            piece = min(_PIECE, size - sent)
            self.wfile.write(block[:piece])
            self.wfile.flush()
            sent += piece
            if delay:
                time.sleep(delay)

    def do_POST(self) -> None:
        self._send(200, self._body(), "application/octet-stream")

    def do_PUT(self) -> None:
        body = self._body()
        if self.path.startswith("/deny/") and self.path.split("/")[2] == self.client_address[0]:
            self._send(403, b"")
        else:
            self._send(200, body, "application/octet-stream")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = bytearray(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        return bytes(body)


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1


class _Tally:
    """Requests counted per key, across the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def count(self, key: tuple[str, str]) -> int:
        """Count one more request for ``key``; returns how many there have been."""
        with self._lock:
            self._counts[key] = seen = self._counts.get(key, 0) + 1
            return seen


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # socketserver's 5 drops connections under load (1 s SYN retries)


class _V6Server(_Server):
    address_family = socket.AF_INET6


class Origin:
    """The origin on ``host:port`` (0 = any free port), served from a background thread.

    ``host`` may be an IPv6 address; with ``tls`` the origin speaks HTTPS and ``url()`` uses
    ``url_host`` (the name its certificate is for).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None, url_host: str = ""
    ) -> None:
        server_class = _V6Server if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._accepted = _Counter()
        self._server.accepted = self._accepted  # type: ignore[attr-defined]
        self._server.guard = _Tally()  # type: ignore[attr-defined]
        self.host = host
        self.port = int(self._server.server_address[1])
        self._scheme = "https" if tls is not None else "http"
        self._url_host = url_host or (f"[{host}]" if ":" in host else host)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ipsx-origin", daemon=True)

    def start(self) -> Origin:
        self._thread.start()
        return self

    @property
    def connections(self) -> int:
        """Connections accepted so far (each stream through an exit is one)."""
        return self._accepted.value

    def url(self, path: str = "/") -> str:
        return f"{self._scheme}://{self._url_host}:{self.port}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
