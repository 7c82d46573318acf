"""``ipsx devchain``: a local Ethereum node for when anvil is not installed.

A JSON-RPC server on a loopback port in front of :class:`ipsx.devchain_node.DevChain`, serving
what the project's code asks of a node over HTTP (deployments, token and channel transactions,
calls, receipts, logs for the chain watcher).

With ``--state FILE`` the chain is read from ``FILE`` when it starts and written back when it
stops, so a second run has the contracts and channels of the first.

The HTTP shell around the chain is a ``ThreadingHTTPServer``. Mining is CPU-bound: the node runs
in its own process (``python -m ipsx.devchain``, as the demo starts it) or in a thread of a test.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, cast

from ipsx.devchain_node import DEFAULT_CHAIN_ID, SECONDS, DevChain, StateFileError
from ipsx.listen import listening, port_number

log = logging.getLogger("ipsx.devchain")

MAX_BODY: Final = 4 * 2**20  # bytes of one HTTP request
IDLE_TIMEOUT: Final = 120 * SECONDS  # a keep-alive connection's silence before it is closed


@dataclass(frozen=True, slots=True)
class DevchainSettings:
    host: str = "127.0.0.1"
    port: int = 8545  # 0: any free port
    chain_id: int = DEFAULT_CHAIN_ID
    state_file: Path | None = None  # read at start when it exists, written at stop


# ---- the HTTP shell -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], chain: DevChain) -> None:
        super().__init__(address, _Handler)
        self.chain = chain

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away: its business
            log.debug("connection from %s: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("connection from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # One segment per answer, sent at once: headers and body written apart meet the client's
    # delayed ACK, 40 ms a request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):
            self.close_connection = True
            self._answer(411, b'{"error":"Content-Length required"}')
            return
        if int(length) > MAX_BODY:
            self.close_connection = True
            self._answer(413, b'{"error":"request body too large"}')
            return
        reply = self.server.chain.handle(self.rfile.read(int(length)))
        self._answer(200, b"" if reply is None else reply)

    def do_GET(self) -> None:
        self._answer(405, b'{"error":"JSON-RPC over POST only"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def open_chain(settings: DevchainSettings) -> DevChain:
    """The chain of ``settings.state_file`` when it exists, else a new one."""
    path = settings.state_file
    state = path.read_bytes() if path is not None and path.exists() else None
    return DevChain(settings.chain_id, state)


def save_chain(chain: DevChain, path: Path) -> None:
    """Writes ``chain`` to ``path`` whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(chain.dump())
    partial.replace(path)


@contextlib.contextmanager
def running_devchain(settings: DevchainSettings) -> Iterator[str]:
    """The node in a thread of this process; yields its URL, then stops it and saves its state.
    Raises :class:`ipsx.listen.ListenError` (for ``--port``) when the port cannot be bound."""
    chain = open_chain(settings)
    with listening("--port", settings.host, settings.port):
        server = _Server((settings.host, settings.port), chain)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="devchain", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        if settings.state_file is not None:
            save_chain(chain, settings.state_file)


# ---- the command --------------------------------------------------------------------------------


def add_devchain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=port_number, default=8545, help="port; 0 for any free one (default: %(default)s)"
    )
    parser.add_argument("--chain-id", type=int, default=DEFAULT_CHAIN_ID, help="(default: %(default)s)")
    parser.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="load the chain from FILE if it exists, save it there on exit",
    )
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process exits")


def add_devchain_parser(sub: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """``ipsx devchain``: its subcommand parser, added to ``sub``."""
    parser = sub.add_parser(
        "devchain",
        help="run a local Ethereum node (eth-tester) for development, when anvil is not installed",
        description="An Ethereum JSON-RPC node on eth-tester's py-evm chain: chain id 31337, a block "
        "per transaction, anvil's ten development accounts funded and unlocked. Prints "
        "'Listening on HOST:PORT' once it serves.",
    )
    add_devchain_arguments(parser)
    return cast("argparse.ArgumentParser", parser)


def run(args: argparse.Namespace) -> None:
    """Serves until SIGINT/SIGTERM (or, with ``--exit-with-parent``, the parent's exit); then
    saves the state."""
    settings = DevchainSettings(host=args.host, port=args.port, chain_id=args.chain_id, state_file=args.state)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    with running_devchain(settings) as url:
        print(f"Listening on {url.removeprefix('http://')} (chain {settings.chain_id})", flush=True)
        while not stop.wait(1 * SECONDS):
            if args.exit_with_parent and os.getppid() != parent:
                break
    if settings.state_file is not None:
        print(f"state saved in {settings.state_file}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ipsx.devchain", description=__doc__.split("\n\n")[0])
    add_devchain_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        run(parser.parse_args(argv))
    except (OSError, StateFileError) as error:
        print(f"ipsx devchain: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
