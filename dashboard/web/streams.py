"""Server-Sent Events for the provider's and the operator's pages, as ``/web/live`` does for the
requester's overview: one event every ``web_live_interval``, a stream lasting at most
``MAX_STREAM_SECONDS`` (the browser's EventSource reconnects, which checks the session again),
ended when the API stops.

``GET /web/provider/live`` sends ``provider`` events (the traffic the caller's exits served in the
last minute, today's totals and earnings); ``GET /web/operator/live`` sends ``network`` events
(bytes per minute over the last hour, live exits per country) to operator sessions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from billing import accounts
from dashboard.appkeys import PG, SETTINGS
from dashboard.web import operator_data, provider_data
from dashboard.web.guard import streaming
from dashboard.web.live import LIVE_STOP, MAX_STREAM_SECONDS, RETRY_MS
from dashboard.web.render import ipsx
from dashboard.web.requester import SERIES_SECONDS, series_json
from dashboard.web.session import WebSession

log = logging.getLogger("ipsx.web")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
OPERATOR_MIN_INTERVAL: Final = 2.0  # seconds: the network view reads every live exit

routes = web.RouteTableDef()


def _amount(value: int) -> dict[str, str]:
    return {"base_units": str(value), "ipsx": ipsx(value)}


async def _stream(
    request: web.Request, session: WebSession, event: str, snapshot: Snapshot, interval: float
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    stop = request.app[LIVE_STOP]
    ends = time.monotonic() + MAX_STREAM_SECONDS
    head = f"event: {event}\ndata: ".encode()
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while not stop.is_set() and time.monotonic() < ends:
            await response.write(head + orjson.dumps(await snapshot()) + b"\n\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    except ConnectionResetError:  # the browser went away
        return response
    except Exception:
        log.exception("the %s stream of %s failed", event, session.account.name)
        return response
    await response.write_eof()
    return response


async def provider_snapshot(request: web.Request, session: WebSession) -> dict[str, Any]:
    """What one ``provider`` event carries for the signed-in provider."""
    pool, name, address = request.app[PG], session.account.name, session.account.address
    now = int(time.time())
    served = await provider_data.traffic(pool, address)
    earned = await provider_data.earnings(pool, name)
    return {
        "at": now,
        "series": series_json(await provider_data.live_series(pool, address, SERIES_SECONDS), now),
        "today": {"streams": served.streams_today, "bytes": served.bytes_today},
        "month": {"streams": served.streams_month, "bytes": served.bytes_month},
        "earned": {
            "today": _amount(earned.today),
            "month": _amount(earned.month),
            "accruing": _amount(earned.accruing),
            "balance": _amount(earned.balance),
            "open_deals": earned.open_deals,
        },
    }


@routes.get("/web/provider/live", name="web-provider-live")
async def provider_live(request: web.Request) -> web.StreamResponse:
    session = await streaming(request)
    return await _stream(
        request,
        session,
        "provider",
        lambda: provider_snapshot(request, session),
        request.app[SETTINGS].web_live_interval,
    )


async def network_snapshot(request: web.Request) -> dict[str, Any]:
    """What one ``network`` event carries: throughput per minute and live exits per country."""
    return {
        "at": int(time.time()),
        "throughput": operator_data.minutes_json(await operator_data.throughput(request.app[PG])),
        "countries": await operator_data.exits_by_country(request),
    }


@routes.get("/web/operator/live", name="web-operator-live")
async def operator_live(request: web.Request) -> web.StreamResponse:
    session = await streaming(request)
    session.principal.require(accounts.OPERATOR)
    interval = max(request.app[SETTINGS].web_live_interval, OPERATOR_MIN_INTERVAL)
    return await _stream(request, session, "network", lambda: network_snapshot(request), interval)
