"""Process plumbing shared by the long-running commands: event loop, logging, signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from ipsx import logs

LOG_FORMAT_ENV = "IPSX_LOG_FORMAT"


def setup_logging(verbose: bool = False, log_format: str | None = None) -> None:
    """Log to stderr, secrets redacted, as text (for people) or JSON lines (for log pipelines).

    ``log_format`` is "text" or "json"; ``None`` reads ``IPSX_LOG_FORMAT`` (default text), which
    the gateway's worker processes inherit. An unknown format falls back to text, with a warning.
    Does nothing when the root logger already has handlers (``logging.basicConfig`` semantics).
    """
    chosen = log_format if log_format is not None else os.environ.get(LOG_FORMAT_ENV) or "text"
    unknown = chosen not in logs.FORMATS
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[logs.make_handler("text" if unknown else chosen)],
    )
    if unknown:
        logging.getLogger("ipsx").warning(
            "unknown log format %r (%s or %s); logging text", chosen[:20], *logs.FORMATS
        )


def run(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` on uvloop; SIGINT/SIGTERM set ``stop`` so it can shut down cleanly."""
    import uvloop

    async def wrapper() -> None:
        # Everything imported and built so far lives as long as the process: keep it out of the
        # collector's scans, and collect the young generation less often. Connection objects
        # are freed by reference counting; the cyclic collector's full passes were the tail
        # of the latency distribution under load.
        gc.freeze()
        gc.set_threshold(20_000, 20, 50)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(wrapper())
