"""``GET /web/live``: the signed-in account's usage and spend, pushed as Server-Sent Events.

Every ``web_live_interval`` (``MIN_INTERVAL`` at least) the stream sends one ``totals`` event: the
last minute of streams and bytes per second (by when each stream closed, so late-ingested streams
fill in their second), the day's totals, today's spend and the balances. A stream lasts at most
``MAX_STREAM_SECONDS``; the browser's EventSource then reconnects, which checks the session cookie
again (an expired or signed-out session gets 401 and the page stops updating). The streams end
when the API stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

import orjson
from aiohttp import web

from dashboard.appkeys import PG, SETTINGS
from dashboard.web import queries
from dashboard.web.guard import streaming
from dashboard.web.render import ipsx
from dashboard.web.requester import SERIES_SECONDS, series_json

log = logging.getLogger("ipsx.web")

LIVE_STOP: Final = web.AppKey("web_live_stop", asyncio.Event)  # set when the API shuts down
MAX_STREAM_SECONDS: Final = 300
RETRY_MS: Final = 2000  # how soon the browser reconnects
MIN_INTERVAL: Final = 0.1  # seconds: each event runs four queries; 0 would run them without a pause

routes = web.RouteTableDef()


def _amount(value: int) -> dict[str, str]:
    return {"base_units": str(value), "ipsx": ipsx(value)}


async def snapshot(request: web.Request, account: str) -> dict[str, Any]:
    """What one ``totals`` event carries for ``account``."""
    pool = request.app[PG]
    now = int(time.time())
    streams, carried = await queries.usage_today(pool, account)
    spend = await queries.spend(pool, account)
    balances = await queries.balances(pool, account)
    return {
        "at": now,
        "series": series_json(await queries.live_series(pool, account, SERIES_SECONDS), now),
        "today": {"requests": streams, "bytes": carried},
        "spend": {
            "settled_today": _amount(spend.settled_today),
            "accruing": _amount(spend.accruing),
            "total": _amount(spend.total),
            "open_deals": spend.open_deals,
        },
        "balance": {"available": _amount(balances.available), "reserved": _amount(balances.reserved)},
    }


@routes.get("/web/live", name="web-live")
async def live(request: web.Request) -> web.StreamResponse:
    session = await streaming(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a buffering reverse proxy would hold the events back
        }
    )
    await response.prepare(request)
    stop = request.app[LIVE_STOP]
    interval = max(request.app[SETTINGS].web_live_interval, MIN_INTERVAL)
    ends = time.monotonic() + MAX_STREAM_SECONDS
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while not stop.is_set() and time.monotonic() < ends:
            data = orjson.dumps(await snapshot(request, session.account.name))
            await response.write(b"event: totals\ndata: " + data + b"\n\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    except ConnectionResetError:  # the browser went away
        return response
    except Exception:
        log.exception("the live stream of %s failed", session.account.name)
        return response
    await response.write_eof()
    return response
