"""``/web/live`` waits between its events even when ``--web-live-interval`` is tiny: the parser
refuses 0 and below, and the stream never pushes faster than ``MIN_INTERVAL``, as the reseller's
and the operator's streams clamp theirs. A second ``ipsx api`` node on the web tests' database."""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

from dashboard.web.live import MIN_INTERVAL
from tests.e2e.conftest import free_port
from tests.web.conftest import WebApi, _start

EVENTS = 4


def test_the_live_stream_waits_between_events_whatever_the_interval(web_api: WebApi, tmp_path: Path) -> None:
    port = free_port()
    fast = dataclasses.replace(web_api, url=f"http://127.0.0.1:{port}", port=port, log=tmp_path / "api.log")
    server = _start(fast, "--web-live-interval", "0.000001")
    try:
        with fast.signed_in("bob") as bob, bob.http.stream("GET", "/web/live") as stream:
            seen, started = 0, time.monotonic()
            for line in stream.iter_lines():
                if line.startswith("event: totals"):
                    seen += 1
                    if seen == EVENTS:
                        break
            took = time.monotonic() - started
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    assert seen == EVENTS
    assert took >= (EVENTS - 1) * MIN_INTERVAL * 0.9  # the first comes at once, then a pause each
