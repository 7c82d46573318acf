"""A real HTTP server on a loopback address, in a thread, for the client-side tests: it records
each request's method, path and Authorization header and answers with the test's function."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Served:
    url: str  # http://HOST:PORT
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Authorization


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    """Answer ``status`` with ``body`` (JSON) and ``headers`` (``Location=…``)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


@contextlib.contextmanager
def serving(host: str, answer: Answer) -> Iterator[Served]:
    """A server on ``host`` (any free port) answering every GET and POST with ``answer``."""
    served = Served("")

    class Handler(BaseHTTPRequestHandler):
        def _record_and_answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            served.seen.append((self.command, self.path, self.headers.get("Authorization")))
            answer(self)

        do_GET = do_POST = _record_and_answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    served.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
