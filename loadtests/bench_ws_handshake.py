"""WebSocket upgrade handshake benchmark: the tunnel's own handshake against the ``websockets`` library's.

An agent tunnelling over WebSocket upgrades every data connection, one per stream, so the
handshake is paid once per stream on both sides. This script runs both handshakes without I/O,
as each side's code sees them, interleaved in one process (run 1 does each line, then run 2...),
and prints the CPU time per handshake of each side and the ratios, medians over ``--runs``:

- ``library``: ``websockets``' sans-I/O ``ClientProtocol`` (``connect``, ``send_request``,
  ``data_to_send``, then ``receive_data`` of the answer and ``events_received``) and
  ``ServerProtocol`` (``receive_data`` of the request, ``accept``, ``send_response``,
  ``data_to_send``): the baseline, what the tunnel used before;
- ``ipsx``: ``gateway.ws_handshake``'s request, the gateway's HTTP/1.1 head reader with the
  handshake's limits, the upgrade checks and the 101 answer, and the agent's reading and
  checking of that answer. Both lines take their key from ``os.urandom`` here (the agent itself
  draws from a pooled random source, one ``getrandom`` per 256 keys).

    .venv/bin/python loadtests/bench_ws_handshake.py [--handshakes 5000] [--runs 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from websockets.client import ClientProtocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import ws_handshake
from gateway.http1 import HeadReader, RequestHead, ResponseHead, ResponseHeadReader

URL = "ws://127.0.0.1:18182/"
_QUIET = logging.getLogger("bench.ws")
_QUIET.setLevel(logging.WARNING)

Side = Callable[[], None]


def library_pair() -> tuple[Side, Side, Side]:
    """(client request, server answer, client reading the answer), each run once per handshake."""
    uri = parse_uri(URL)
    state: dict[str, object] = {}

    def client_request() -> None:
        client = ClientProtocol(uri, logger=_QUIET)
        client.send_request(client.connect())
        state["client"], state["request"] = client, b"".join(client.data_to_send())

    def server_answer() -> None:
        server = ServerProtocol(logger=_QUIET)
        server.receive_data(state["request"])  # type: ignore[arg-type]
        server.send_response(server.accept(server.events_received()[0]))  # type: ignore[arg-type]
        state["answer"] = b"".join(chunk for chunk in server.data_to_send() if chunk)

    def client_reads() -> None:
        client: ClientProtocol = state["client"]  # type: ignore[assignment]
        client.receive_data(state["answer"])  # type: ignore[arg-type]
        if not client.events_received() or client.handshake_exc is not None:
            raise RuntimeError("the library's handshake failed")

    return client_request, server_answer, client_reads


def ipsx_pair() -> tuple[Side, Side, Side]:
    state: dict[str, object] = {}

    def client_request() -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")  # the agent draws from a pooled source
        state["key"], state["request"] = key, ws_handshake.upgrade_request(URL, key, "ipsx-agent")

    def server_answer() -> None:
        head = HeadReader(ws_handshake.LIMITS).feed(state["request"])  # type: ignore[arg-type]
        checked = ws_handshake.check_upgrade(head) if isinstance(head, RequestHead) else None
        if not isinstance(checked, str):
            raise RuntimeError(f"refused: {checked}")
        state["answer"] = ws_handshake.switching(checked)

    def client_reads() -> None:
        head = ResponseHeadReader(ws_handshake.LIMITS).feed(state["answer"])  # type: ignore[arg-type]
        if not isinstance(head, ResponseHead):
            raise RuntimeError("no answer")
        problem = ws_handshake.check_answer(head, state["key"])  # type: ignore[arg-type]
        if problem is not None:
            raise RuntimeError(problem)

    return client_request, server_answer, client_reads


def measure(sides: tuple[Side, Side, Side], handshakes: int) -> tuple[float, float]:
    """CPU µs per handshake: (agent side, gateway side)."""
    client_request, server_answer, client_reads = sides
    client = server = 0.0
    for _ in range(handshakes):
        started = time.process_time()
        client_request()
        middle = time.process_time()
        server_answer()
        answered = time.process_time()
        client_reads()
        client += (middle - started) + (time.process_time() - answered)
        server += answered - middle
    return client / handshakes * 1e6, server / handshakes * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--handshakes", type=int, default=5000, help="handshakes per line and run (default: 5000)"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs, interleaved (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    lines = {"library": library_pair, "ipsx": ipsx_pair}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in lines}
    for make in lines.values():
        measure(make(), 200)  # warm-up
    for run in range(1, args.runs + 1):
        for name, make in lines.items():
            figures[name].append(measure(make(), args.handshakes))
        print(f"run {run}: " + ", ".join(
            f"{name} {figures[name][-1][0]:.1f} + {figures[name][-1][1]:.1f} µs" for name in lines
        ), file=sys.stderr)  # fmt: skip
    medians = {
        name: (statistics.median(c for c, _ in runs), statistics.median(s for _, s in runs))
        for name, runs in figures.items()
    }
    ratio = [
        statistics.median(
            sum(lib) / sum(own) for lib, own in zip(figures["library"], figures["ipsx"], strict=True)
        )
    ]
    print(f"\n{args.handshakes:,} handshakes per line, {args.runs} runs, medians of CPU µs per handshake\n")
    print("| | agent side | gateway side | both |")
    print("|---|---:|---:|---:|")
    for name, (client, server) in medians.items():
        print(f"| {name} | {client:.1f} | {server:.1f} | {client + server:.1f} |")
    print(f"\nlibrary ÷ ipsx, both sides (per run, then the median): {ratio[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"medians": medians, "runs": figures, "ratio": ratio[0]}, indent=2))


if __name__ == "__main__":
    main()
