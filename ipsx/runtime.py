"""Process plumbing shared by the long-running commands: event loop, logging, signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
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
